"""Code that runs inside dask worker processes: the task wrapper and the actor box.

Why a wrapper: dask's ``retries`` retries *any* exception, while the runtime
promises Ray's semantics (application errors are retried only when
``retry_exceptions`` says so; worker deaths up to ``max_retries``). The wrapper
retries application errors itself, turns them into :func:`make_task_error`
errors that keep the remote traceback, reports start and end on the
``nbcluster`` event topic (so the driver's event stream knows where and when a
task ran), and installs a worker-side backend so nested ``runtime.get`` /
``.remote()`` inside a task talk to dask.
"""

from __future__ import annotations

import ctypes
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

from runtime.errors import ActorDiedError, SerializationError, TaskCancelledError, make_task_error

__all__ = ["TOPIC", "run_task", "create_actor", "call_actor", "drop_actor", "skip_actor_call",
           "interrupt_task", "in_task_thread", "seceded", "worker_backend", "node_name"]

#: The dask event topic the wrapper reports on (``client.subscribe_topic``).
TOPIC = "nbcluster"

_lock = threading.Lock()
_running: dict[int, int] = {}  # task id -> ident of the thread running it
_SAFE_RESULTS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def node_name(worker: Any) -> str:
    """The node id of a dask worker: its name when it has one, else its address."""
    name = worker.name
    return str(name) if name is not None else str(worker.address)


def worker_backend() -> Any:
    """The backend ``runtime`` uses in this process, installing a dask one on first use."""
    from runtime import api
    from runtime.backends.dask.backend import DaskBackend

    b = api._backend_or_none()
    if isinstance(b, DaskBackend):
        return b
    with _lock:
        b = api._backend_or_none()
        if isinstance(b, DaskBackend):
            return b
        from distributed import get_client

        nb = DaskBackend(get_client(), role="worker")
        if b is None:
            api._set_backend(nb)
        return nb


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
    from distributed import rejoin, secede

    secede()
    try:
        yield
    finally:
        rejoin()


def _log(worker: Any, msg: dict[str, Any]) -> None:
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
                    _log(worker, {"e": "retry", "t": task_id, "w": node, "n": tries,
                                  "why": type(exc).__name__})
                    continue
                _log(worker, {"e": "fail", "t": task_id, "w": node,
                              "err": type(exc).__name__})
                raise _task_error(exc, name, task_id, node) from None
    finally:
        _running.pop(task_id, None)


def run_task(fn: Callable[..., Any], meta: tuple[Any, ...], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """Run one task attempt on this worker (dask calls this; ``meta`` comes from the driver).

    ``meta`` is ``(task id, name, retry_exceptions, max_retries, request dict)``.
    """
    from distributed import get_worker

    task_id, name, retry, max_retries, request = meta
    worker = get_worker()
    node = node_name(worker)
    worker_backend()
    _log(worker, {"e": "start", "t": task_id, "n": name, "w": node, "r": request})
    result = _invoke(fn, args, kwargs, task_id=task_id, name=name, node=node, worker=worker,
                     retry=retry, max_retries=max_retries)
    _log(worker, {"e": "end", "t": task_id, "w": node})
    return result


def interrupt_task(task_id: int) -> bool:
    """Raise ``TaskCancelledError`` in the thread running ``task_id`` here (if any)."""
    ident = _running.get(task_id)
    if ident is None:
        return False
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(TaskCancelledError))
    return n == 1


# ---------------------------------------------------------------------------
# actors: one instance per (actor id, generation) in this worker process
# ---------------------------------------------------------------------------


class _ActorBox:
    """An actor instance and the turnstile that runs its calls one at a time, in order."""

    def __init__(self, instance: Any, generation: int, name: str) -> None:
        self.instance = instance
        self.generation = generation
        self.name = name
        self.next_seq = 0
        self.skipped: set[int] = set()
        self.current: int | None = None
        self.dead = False
        self.cond = threading.Condition()

    def _advance(self) -> None:
        self.next_seq += 1
        while self.next_seq in self.skipped:
            self.skipped.discard(self.next_seq)
            self.next_seq += 1
        self.cond.notify_all()


_actors: dict[int, _ActorBox] = {}


def create_actor(actor_id: int, generation: int, name: str, cls: type, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> str:
    """Construct the actor here; returns this worker's address (calls are pinned to it)."""
    from distributed import get_worker

    worker = get_worker()
    node = node_name(worker)
    worker_backend()
    try:
        instance = cls(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise _task_error(exc, f"{name}.__init__", actor_id, node) from None
    _actors[actor_id] = _ActorBox(instance, generation, name)
    return str(worker.address)


def call_actor(actor_id: int, generation: int, seq: int, call_id: int, method: str,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run call number ``seq`` of an actor after every earlier call (in submission order)."""
    from distributed import get_worker

    worker = get_worker()
    node = node_name(worker)
    box = _actors.get(actor_id)
    if box is None or box.generation != generation or box.dead:
        raise ActorDiedError(f"{actor_id}", "its instance is gone from this worker")
    name = f"{box.name}.{method}"
    with box.cond:
        if box.next_seq != seq:
            with seceded():
                while box.next_seq != seq and not box.dead:
                    box.cond.wait(0.5)
        if box.dead:
            raise ActorDiedError(f"{box.name} (id {actor_id})", "it was killed")
        box.current = seq
    _log(worker, {"e": "start", "t": call_id, "n": name, "w": node, "r": {}})
    try:
        result = _invoke(getattr(box.instance, method), args, kwargs, task_id=call_id, name=name,
                         node=node, worker=worker, retry=False, max_retries=0)
    finally:
        with box.cond:
            box.current = None
            box._advance()
    _log(worker, {"e": "end", "t": call_id, "w": node})
    return result


def skip_actor_call(actor_id: int, generation: int, seq: int) -> None:
    """Let later calls pass a call that was cancelled before it ran."""
    box = _actors.get(actor_id)
    if box is None or box.generation != generation:
        return
    with box.cond:
        if seq == box.current:
            return
        if seq == box.next_seq:
            box._advance()
        elif seq > box.next_seq:
            box.skipped.add(seq)


def drop_actor(actor_id: int) -> bool:
    """Forget the actor's instance here (``kill``); waiting calls raise ``ActorDiedError``."""
    box = _actors.pop(actor_id, None)
    if box is None:
        return False
    with box.cond:
        box.dead = True
        box.cond.notify_all()
    return True


def wall_time() -> float:
    """This worker's wall clock (for tests of clock skew)."""
    return time.time()
