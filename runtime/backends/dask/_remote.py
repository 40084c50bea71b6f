"""Code that runs inside dask worker processes: the task wrapper and the actor box.

Why a wrapper: dask's ``retries`` retries *any* exception, while the runtime
promises Ray's semantics (application errors are retried only when
``retry_exceptions`` says so; worker deaths up to ``max_retries``). The wrapper
retries application errors itself, turns them into :func:`make_task_error`
errors that keep the remote traceback, reports start and end on the
``nbcluster`` event topic (so the driver's event stream knows where and when a
task ran), forwards the task's ``print`` output on the same topic (``"out"``
events: the driver's ``on_output`` hook routes them, as on the local backend;
nested tasks carry their root task's id in a dask annotation), and installs a
worker-side backend so nested ``runtime.get`` / ``.remote()`` inside a task talk
to dask.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

from runtime.errors import ActorDiedError, SerializationError, TaskCancelledError, make_task_error

__all__ = ["TOPIC", "run_task", "create_actor", "call_actor", "drop_actor", "drop_actors",
           "skip_actor_call", "forward_output",
           "interrupt_task", "in_task_thread", "seceded", "worker_backend", "node_name"]

#: The dask event topic the wrapper reports on (``client.subscribe_topic``).
TOPIC = "nbcluster"

_lock = threading.Lock()
_current = threading.local()  # .task_id, .session: the task this thread runs, its driver
_running: dict[int, int] = {}  # task id -> ident of the thread running it
_SAFE_RESULTS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def node_name(worker: Any) -> str:
    """The node id of a dask worker: its name when it has one, else its address."""
    name = worker.name
    return str(name) if name is not None else str(worker.address)


def session() -> str:
    """The driver session of the task running in this thread ("" outside tasks)."""
    return getattr(_current, "session", None) or ""


#: The backend class a worker installs: ``DaskBackend``, registered by ``backend.py``
#: (the package imports it before this module runs any task; no import cycle).
BACKEND_CLASS: Any = None


def worker_backend() -> Any:
    """The backend ``runtime`` uses in this process, installing a dask one on first use.

    On first use it also makes ``time.sleep`` inside task threads cancellable.
    """
    from runtime import session

    DaskBackend = BACKEND_CLASS  # noqa: N806 - a class
    if DaskBackend is None:
        raise RuntimeError("runtime.backends.dask was not imported on this worker")
    b = session.backend_or_none()
    if isinstance(b, DaskBackend):
        return b
    with _lock:
        b = session.backend_or_none()
        if isinstance(b, DaskBackend):
            return b
        from distributed import get_client

        if time.sleep is not _cancellable_sleep:
            time.sleep = _cancellable_sleep
        nb = DaskBackend(get_client(), role="worker")
        if b is None:
            session.set_backend(nb)
        return nb


_real_sleep = time.sleep
_cancel_events: dict[int, threading.Event] = {}


def _cancellable_sleep(seconds: float) -> None:
    """``time.sleep`` that ``cancel`` can interrupt when called in a task thread."""
    tid = getattr(_current, "task_id", None)
    ev = _cancel_events.get(tid) if tid is not None else None
    if ev is None:
        _real_sleep(seconds)
        return
    if ev.wait(seconds):
        raise TaskCancelledError("?", tid)


def in_task_thread() -> bool:
    """True in a dask worker thread that runs a task and has not seceded."""
    from distributed.threadpoolexecutor import thread_state as pool_state
    from distributed.worker import thread_state

    return (getattr(thread_state, "key", None) is not None
            and getattr(pool_state, "proceed", False)
            and getattr(pool_state, "executor", None) is not None)


@contextmanager
def seceded() -> Iterator[None]:
    """Leave the worker's thread pool while blocking (lends the thread), then rejoin."""
    if not in_task_thread():
        yield
        return
    from distributed import get_worker, rejoin, secede

    tid = getattr(_current, "task_id", None)
    worker = get_worker()
    if tid is not None:
        _flush_start(worker, tid)
        _log(worker, {"e": "block", "t": tid, "w": node_name(worker)})
    secede()
    try:
        yield
    finally:
        rejoin()
        if tid is not None:
            _log(worker, {"e": "unblock", "t": tid, "w": node_name(worker)})


def _log(worker: Any, msg: dict[str, Any]) -> None:
    attempt = getattr(_current, "attempt", 0)
    if attempt and "x" not in msg and msg.get("t") == getattr(_current, "task_id", None):
        msg["x"] = attempt  # which attempt of the task this is (the driver drops stale ones)
    try:
        worker.log_event(TOPIC, msg)
    except Exception:  # noqa: BLE001 - events must never break a task
        pass


def _retryable(exc: BaseException, retry: Any) -> bool:
    if retry is True:
        return True
    if not retry:
        return False
    return isinstance(exc, tuple(retry))


def _check_result(result: Any, name: str) -> None:
    if isinstance(result, _SAFE_RESULTS) or type(result).__module__ == "numpy":
        return
    try:
        cloudpickle.dumps(result, protocol=5)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        raise SerializationError(
            f"the return value of {name}() of type {type(result).__name__} cannot be pickled "
            f"to send back: {exc}"
        ) from None


def _task_error(exc: BaseException, name: str, task_id: int, node: str) -> BaseException:
    if isinstance(exc, TaskCancelledError):
        return exc
    tb = traceback.format_exc()
    err = make_task_error(exc, tb, task_name=name, task_id=task_id, node=node)
    try:
        cloudpickle.dumps(err)
    except Exception:  # noqa: BLE001 - the cause cannot travel: keep its text
        err = make_task_error(None, tb, task_name=name, task_id=task_id, node=node,
                              cause_type=f"{type(exc).__name__}: {exc}")
    return err


def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
            task_id: int, name: str, node: str, worker: Any, retry: Any,
            max_retries: int) -> Any:
    tries = 0
    _running[task_id] = threading.get_ident()
    _cancel_events[task_id] = threading.Event()
    outer = getattr(_current, "task_id", None)
    _current.task_id = task_id
    try:
        while True:
            try:
                result = fn(*args, **kwargs)
                _check_result(result, name)
                return result
            except Exception as exc:  # noqa: BLE001 - user code
                if not isinstance(exc, TaskCancelledError) and _retryable(exc, retry) and (
                        max_retries < 0 or tries < max_retries):
                    tries += 1
                    _flush_start(worker, task_id)
                    _flush_output()
                    _log(worker, {"e": "retry", "t": task_id, "w": node, "n": tries,
                                  "why": type(exc).__name__})
                    continue
                _flush_start(worker, task_id)
                _flush_output()
                _log(worker, {"e": "fail", "t": task_id, "w": node,
                              "err": type(exc).__name__})
                raise _task_error(exc, name, task_id, node) from None
    finally:
        _running.pop(task_id, None)
        _cancel_events.pop(task_id, None)
        _current.task_id = outer


def run_task(fn: Callable[..., Any], meta: tuple[Any, ...], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """Run one task attempt on this worker (dask calls this; ``meta`` comes from the driver).

    ``meta`` is ``(task id, name, retry_exceptions, max_retries, request dict, session)``,
    optionally followed by the attempt number (a task moved or preempted by the driver runs
    again as a new attempt; events carry it as ``"x"`` so stale ones can be dropped).
    """
    from distributed import get_worker

    task_id, name, retry, max_retries, request, session, *rest = meta
    attempt = rest[0] if rest else 0
    worker = get_worker()
    node = node_name(worker)
    worker_backend()
    start = {"e": "start", "t": task_id, "n": name, "w": node, "r": request}
    if attempt:
        start["x"] = attempt
    _defer_start(worker, start)
    outer = getattr(_current, "session", None)
    outer_attempt = getattr(_current, "attempt", 0)
    _current.session = session
    _current.attempt = attempt
    try:
        with forward_output(worker, task_id, _root_task(worker, task_id)):
            result = _invoke(fn, args, kwargs, task_id=task_id, name=name, node=node,
                             worker=worker, retry=retry, max_retries=max_retries)
    except BaseException:
        _flush_start(worker, task_id)
        _began.pop(task_id, None)
        _current.attempt = outer_attempt
        raise
    finally:
        _current.session = outer
    _end(worker, task_id, node, attempt)
    _current.attempt = outer_attempt
    return result


#: Start events wait this long before they are sent: a task that ends sooner sends
#: one combined message ("done") instead of two, which halves the event traffic of
#: short tasks. The monitor shows such a task as running slightly late.
START_DELAY = 0.02
_starts: dict[int, dict[str, Any]] = {}
_began: dict[int, float] = {}  # task id -> when it started here


_flusher: list[Any] = []  # the worker's periodic callback that sends late starts


def _defer_start(worker: Any, msg: dict[str, Any]) -> None:
    msg["at"] = time.monotonic()
    with _lock:
        _starts[msg["t"]] = msg
        _began[msg["t"]] = msg["at"]
        if not _flusher:
            from tornado.ioloop import PeriodicCallback

            pc = PeriodicCallback(lambda: _flush_old(worker), START_DELAY * 1000)
            _flusher.append(pc)
            worker.loop.add_callback(pc.start)


def _flush_old(worker: Any) -> None:
    """Send the start events that waited ``START_DELAY`` (runs on the worker's loop)."""
    if not _starts:
        return
    limit = time.monotonic() - START_DELAY
    with _lock:
        old = [t for t, m in _starts.items() if m["at"] <= limit]
        msgs = [_starts.pop(t) for t in old]
    for m in msgs:
        _log(worker, m)


def _flush_start(worker: Any, task_id: int) -> None:
    with _lock:
        msg = _starts.pop(task_id, None)
    if msg is not None:
        _log(worker, msg)


def _end(worker: Any, task_id: int, node: str, attempt: int = 0) -> None:
    """Report the end and how long the task ran (``d``, seconds: sizes the driver's
    prefetch depth)."""
    now = time.monotonic()
    with _lock:
        start = _starts.pop(task_id, None)
        t0 = _began.pop(task_id, now)
    if start is None:
        msg = {"e": "end", "t": task_id, "w": node, "d": now - t0}
        if attempt:
            msg["x"] = attempt
        _log(worker, msg)
    else:
        _log(worker, {**start, "e": "done", "d": now - t0})


def interrupt_task(task_id: int) -> bool:
    """Raise ``TaskCancelledError`` in the thread running ``task_id`` here (if any)."""
    ident = _running.get(task_id)
    if ident is None:
        return False
    ev = _cancel_events.get(task_id)
    if ev is not None:
        ev.set()  # wakes a cancellable sleep at once
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(TaskCancelledError))
    return n == 1


def interrupt_tasks(task_ids: list[int]) -> int:
    """Interrupt each of ``task_ids`` running here; returns how many were."""
    return sum(interrupt_task(t) for t in task_ids)


# ---------------------------------------------------------------------------
# output: a task's prints travel to the driver as "out" events on TOPIC
# ---------------------------------------------------------------------------

#: Seconds a task's output gathers before it is sent (a flood becomes a few events;
#: a partial line, such as a ``\r`` progress bar, still arrives within this).
OUT_FLUSH_S = 0.05
#: Characters buffered per task before they are sent at once.
OUT_MAX_BUFFER = 64 * 1024
#: The dask annotation naming the root task of nested tasks (their output's cell).
ROOT_ANNOTATION = "nbcluster_root"
_outputs: set[_TaskOutput] = set()
_out_lock = threading.Lock()
_out_flusher: list[threading.Thread] = []


class _TaskOutput:
    """One running task's buffered output; sent as ``{"e": "out", ...}`` events."""

    def __init__(self, worker: Any, task_id: Any, root: Any) -> None:
        self.worker = worker
        self.task_id = task_id
        self.root = root
        self.chunks: list[tuple[str, str]] = []
        self.size = 0
        self.lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            if self.chunks and self.chunks[-1][0] == stream:
                self.chunks[-1] = (stream, self.chunks[-1][1] + text)
            else:
                self.chunks.append((stream, text))
            self.size += len(text)
            full = self.size >= OUT_MAX_BUFFER
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            chunks, self.chunks, self.size = self.chunks, [], 0
        for stream, text in chunks:
            msg = {"e": "out", "t": self.task_id, "s": stream, "x": text}
            if self.root is not None and self.root != self.task_id:
                msg["r"] = self.root
            _log(self.worker, msg)


class _ThreadStream:
    """``sys.stdout``/``sys.stderr`` of a worker process: text written by a task thread
    goes to that task's :class:`_TaskOutput`, anything else to the original stream."""

    def __init__(self, original: Any, name: str) -> None:
        self._original = original
        self._name = name

    def write(self, text: str) -> int:
        out = getattr(_current, "out", None)
        if out is None:
            return self._original.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        out.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        out = getattr(_current, "out", None)
        if out is not None:
            out.flush()
        else:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _flush_outputs_loop() -> None:
    tick = threading.Event()
    while True:
        tick.wait(OUT_FLUSH_S)
        with _out_lock:
            outs = list(_outputs)
        for out in outs:
            if out.chunks:
                out.flush()


def _install_streams() -> None:
    with _out_lock:
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _ThreadStream):
                setattr(sys, name, _ThreadStream(getattr(sys, name), name))
        if not _out_flusher:
            t = threading.Thread(target=_flush_outputs_loop, name="nbcluster-output",
                                 daemon=True)
            _out_flusher.append(t)
            t.start()


def _root_task(worker: Any, task_id: Any) -> Any:
    """The root task of the running one: its annotation (nested tasks), else itself."""
    try:
        from distributed.worker import thread_state

        ts = worker.state.tasks.get(getattr(thread_state, "key", None))
        ann = (ts.annotations or {}) if ts is not None else {}
        return ann.get(ROOT_ANNOTATION, task_id)
    except Exception:  # noqa: BLE001 - no annotation: the task is its own root
        return task_id


@contextmanager
def forward_output(worker: Any, task_id: Any, root: Any = None) -> Iterator[None]:
    """Send what this thread prints to the driver as ``task_id``'s output (``root``: the
    task whose cell shows it); tasks submitted meanwhile inherit ``root``."""
    import dask

    _install_streams()
    prev = getattr(_current, "out", None)
    out = _TaskOutput(worker, task_id, root)
    _current.out = out
    with _out_lock:
        _outputs.add(out)
    try:
        with dask.annotate(**{ROOT_ANNOTATION: root if root is not None else task_id}):
            yield
    finally:
        _current.out = prev
        with _out_lock:
            _outputs.discard(out)
        out.flush()


def _flush_output() -> None:
    out = getattr(_current, "out", None)
    if out is not None:
        out.flush()


# ---------------------------------------------------------------------------
# actors: one instance per (actor id, generation) in this worker process
# ---------------------------------------------------------------------------


ACTOR_META = "nbcluster-actor"  # scheduler metadata key prefix: [addr, generation, name]


class _ActorBox:
    """An actor instance and the turnstile that runs its calls one at a time.

    Calls from one caller (the driver, or one worker process) run in that
    caller's submission order (Ray's guarantee); calls from different callers
    interleave in arrival order.
    """

    def __init__(self, instance: Any, generation: int, name: str) -> None:
        self.instance = instance
        self.generation = generation
        self.name = name
        self.next_seq: dict[str, int] = {}
        self.skipped: dict[str, set[int]] = {}
        self.busy = False
        self.running: tuple[str, int] | None = None
        self.dead = False
        self.cond = threading.Condition()

    def _turn(self, caller: str, seq: int) -> bool:
        return not self.busy and self.next_seq.get(caller, 0) == seq

    def _advance(self, caller: str) -> None:
        n = self.next_seq.get(caller, 0) + 1
        skipped = self.skipped.get(caller, set())
        while n in skipped:
            skipped.discard(n)
            n += 1
        self.next_seq[caller] = n
        self.cond.notify_all()


_actors: dict[tuple[str, int], _ActorBox] = {}


def create_actor(session: str, actor_id: int, generation: int, name: str, cls: type,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Construct the actor here; returns this worker's address (calls are pinned to it)."""
    from distributed import get_worker

    worker = get_worker()
    node = node_name(worker)
    backend = worker_backend()
    outer = getattr(_current, "session", None)
    _current.session = session
    try:
        instance = cls(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise _task_error(exc, f"{name}.__init__", actor_id, node) from None
    finally:
        _current.session = outer
    _actors[(session, actor_id)] = _ActorBox(instance, generation, name)
    try:
        backend.client.set_metadata([ACTOR_META, session, str(actor_id)],
                                    [str(worker.address), generation, name, None])
    except Exception:  # noqa: BLE001 - callers in other tasks then wait for the driver
        pass
    return str(worker.address)


def _claim(box: _ActorBox, caller: str, seq: int) -> bool:
    """Take the turn if it is ours (call with ``box.cond`` held)."""
    if box.dead or not box._turn(caller, seq):
        return False
    box.busy = True
    box.running = (caller, seq)
    return True


def _take_turn(box: _ActorBox, caller: str, seq: int) -> None:
    """Block until call ``seq`` of ``caller`` may run (or the actor is dropped).

    On return ``box.running == (caller, seq)`` unless the actor was dropped.
    Waiting happens outside the worker's thread pool (secede), and the turn is
    claimed *before* rejoining, with ``box.cond`` released: ``rejoin()`` blocks
    until some pool thread finishes its task, and pool threads that run later
    calls of this actor need ``box.cond`` for a moment to see that it is not
    their turn. Rejoining with the lock held deadlocked the worker whenever every
    pool thread had picked up such a call (seen under load, when calls arrive out
    of order).
    """
    with box.cond:
        if _claim(box, caller, seq) or box.dead:
            return
    with seceded():
        with box.cond:
            while not _claim(box, caller, seq) and not box.dead:
                box.cond.wait(0.5)
        # leaving the block rejoins the pool, with the lock released


def _end_turn(box: _ActorBox, caller: str) -> None:
    """Release the actor after a call of ``caller`` and let the next one run."""
    with box.cond:
        box.busy = False
        box.running = None
        box._advance(caller)


def call_actor(session: str, actor_id: int, generation: int, caller: str, seq: int,
               call_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run call ``seq`` of ``caller`` on an actor after that caller's earlier calls."""
    from distributed import get_worker

    worker = get_worker()
    node = node_name(worker)
    box = _actors.get((session, actor_id))
    if box is None or box.generation != generation or box.dead:
        raise ActorDiedError(f"{actor_id}", "its instance is gone from this worker")
    name = f"{box.name}.{method}"
    try:
        _take_turn(box, caller, seq)
    except BaseException:
        if box.running == (caller, seq):  # claimed, then interrupted while rejoining
            _end_turn(box, caller)
        raise
    if box.running != (caller, seq):
        raise ActorDiedError(f"{box.name} (id {actor_id})", "it was killed")
    _log(worker, {"e": "start", "t": call_id, "n": name, "w": node, "r": {}})
    outer = getattr(_current, "session", None)
    _current.session = session
    try:
        with forward_output(worker, call_id, _root_task(worker, call_id)):
            result = _invoke(getattr(box.instance, method), args, kwargs, task_id=call_id,
                             name=name, node=node, worker=worker, retry=False, max_retries=0)
    finally:
        _current.session = outer
        _end_turn(box, caller)
    _log(worker, {"e": "end", "t": call_id, "w": node})
    return result


def skip_actor_call(session: str, actor_id: int, generation: int, caller: str,
                    seq: int) -> None:
    """Let later calls pass a call that was cancelled before it ran."""
    box = _actors.get((session, actor_id))
    if box is None or box.generation != generation:
        return
    with box.cond:
        if box.running == (caller, seq):
            return
        nxt = box.next_seq.get(caller, 0)
        if seq == nxt:
            box._advance(caller)
        elif seq > nxt:
            box.skipped.setdefault(caller, set()).add(seq)


def drop_actor(session: str, actor_id: int) -> bool:
    """Forget the actor's instance here (``kill``); waiting calls raise ``ActorDiedError``."""
    box = _actors.pop((session, actor_id), None)
    if box is None:
        return False
    box.dead = True  # waiters poll it; runs on the worker's event loop: never block it
    if box.cond.acquire(timeout=0.5):
        try:
            box.cond.notify_all()
        finally:
            box.cond.release()
    return True


def drop_actors(session: str, actor_ids: list[int]) -> int:
    """Drop several actors' instances here (shutdown); returns how many were found."""
    return sum(drop_actor(session, a) for a in actor_ids)
