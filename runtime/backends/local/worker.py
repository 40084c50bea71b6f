"""The worker process: runs tasks (or one actor) sent by the local driver.

Started by the driver as ``python -c "...worker import main; main(fd)"`` with one
end of a socketpair. It imports only the runtime and cloudpickle, caches each
function after its first send, runs one task at a time, forwards ``print``
output tagged with the task id, and installs a :class:`~.client.ClientBackend`
so tasks can submit tasks, ``get`` and ``wait`` through the driver (nested
parallelism). It reports the object refs it creates and drops (batched with its
other messages: creations before them, drops after), so the driver frees
objects no process refers to any more. SIGINT interrupts the running task (that is how ``cancel`` works);
it is ignored between tasks. The process exits when the driver's end closes.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from runtime.backends.local import store
from runtime.backends.local.protocol import dumps, loads, task_error_record
from runtime.backends.local.store import deserialize, serialize
from runtime.errors import SerializationError
from runtime.refs import ObjectRef

__all__ = ["Channel", "main"]


class Channel:
    """The worker's end of the connection: batched sends, buffered receives, requests."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.outbox: list[Any] = []
        self.pending: collections.deque[Any] = collections.deque()
        self.send_lock = threading.Lock()
        self._queued = threading.Condition(self.send_lock)
        self.req_lock = threading.RLock()
        self._req_ids = iter(range(1, 1 << 62))
        self.state: Any = None
        #: runs a task the driver sends into a blocked request (set by ``main``)
        self.on_inline: Any = None
        #: +id / -id per ref created / dropped here (appended from ``__del__``: lock-free)
        self.ref_deltas: collections.deque[int] = collections.deque()
        self.ref_escaped: collections.deque[int] = collections.deque()
        self.counting = False  # refs were seen: poll for drops while idle

    def ref_changed(self) -> None:
        """Wake the flusher for a ref drop, without ever blocking (called from ``__del__``)."""
        if self.send_lock.acquire(blocking=False):
            try:
                self._queued.notify()
            finally:
                self.send_lock.release()

    def start_flusher(self, delay: float = 0.0005) -> None:
        """Send posted messages at most ``delay`` s late even while a long task runs
        (posted results ride in batches while calls keep arriving)."""
        def loop() -> None:
            while True:
                with self._queued:
                    while not self.outbox and not self.ref_deltas and not self.ref_escaped:
                        self._queued.wait(0.2 if self.counting else None)
                time.sleep(delay)
                try:
                    self.flush()
                except OSError:
                    return

        threading.Thread(target=loop, name="nbcluster-flusher", daemon=True).start()

    def post(self, msg: Any) -> None:
        """Queue a message; it goes out in a batch soon (see :meth:`start_flusher`)."""
        with self.send_lock:
            self.outbox.append(msg)
            if len(self.outbox) == 1:
                self._queued.notify()
            elif len(self.outbox) >= 64:
                self._flush_locked()

    def send(self, msg: Any) -> None:
        """Send at once (after anything queued)."""
        with self.send_lock:
            self.outbox.append(msg)
            self._flush_locked()

    def flush(self) -> None:
        """Send everything queued, as one batch."""
        with self.send_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        box = self.outbox
        deltas, esc = self.ref_deltas, self.ref_escaped
        if not box and not deltas and not esc:
            return
        self.outbox = []
        if deltas or esc:
            # refs created go before the messages, drops after: the driver's count is
            # never below the true one, so nothing a message carries is freed early
            made: dict[int, int] = {}
            dropped: dict[int, int] = {}
            while deltas:
                d = deltas.popleft()
                if d > 0:
                    made[d] = made.get(d, 0) + 1
                else:
                    dropped[-d] = dropped.get(-d, 0) - 1
            head: list[Any] = [("refs", list(made.items()))] if made else []
            if esc:
                ids = []
                while esc:
                    ids.append(esc.popleft())
                head.append(("esc", ids))
            box = head + box + ([("refs", list(dropped.items()))] if dropped else [])
        self.conn.send_bytes(dumps(box[0] if len(box) == 1 else ("batch", box)))

    def _recv_one(self) -> None:
        msg = loads(self.conn.recv_bytes())
        if msg[0] == "batch":
            self.pending.extend(msg[1])
        else:
            self.pending.append(msg)

    def next_message(self) -> Any:
        """The next message from the driver (flushing our outbox before blocking)."""
        if not self.pending:
            if (self.outbox or self.ref_deltas) and not self.conn.poll(0):
                self.flush()
            self._recv_one()
        return self.pending.popleft()

    def request(self, kind: str, payload: Any, timeout: float | None = None) -> Any:
        """Ask the driver and wait for its reply; other messages are kept for later.

        On timeout or interrupt the request is abandoned: the driver answers it at
        once (``("timeout",)``) and stops treating this task as blocked.
        """
        with self.req_lock:
            req_id = next(self._req_ids)
            self.send(("req", req_id, kind, payload))
            deadline = None if timeout is None else time.monotonic() + timeout
            abandoned = False
            try:
                while True:
                    inline = None
                    for i, msg in enumerate(self.pending):
                        if msg[0] == "reply" and msg[1] == req_id:
                            del self.pending[i]
                            return msg[2]
                        if msg[0] == "inline" and inline is None:
                            inline = i
                    if inline is not None and self.on_inline is not None:
                        self.on_inline(inline)  # a task to run inside this wait
                        continue
                    if deadline is not None and not abandoned:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self.conn.poll(left):
                            abandoned = True
                            self.send(("abandon", req_id))
                            continue
                    self._recv_one()
            except BaseException:
                if not abandoned:  # interrupted (cancel): withdraw, then re-raise
                    self.send(("abandon", req_id))
                    while not self._take_reply(req_id):
                        self._recv_one()
                raise

    def _take_reply(self, req_id: int) -> bool:
        """Drop the reply to ``req_id`` from the received messages, if it is there."""
        for i, msg in enumerate(self.pending):
            if msg[0] == "reply" and msg[1] == req_id:
                del self.pending[i]
                return True
        return False


class _Output:
    """A text stream that forwards whole lines to the driver, tagged with the task id."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, chan: Channel, name: str, state: _State) -> None:
        self._chan = chan
        self._name = name
        self._state = state
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buf += text
            if "\n" in self._buf:
                head, _, self._buf = self._buf.rpartition("\n")
                self._chan.send(("out", self._state.task_id, self._name, head + "\n"))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                text, self._buf = self._buf, ""
                self._chan.send(("out", self._state.task_id, self._name, text))

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("forwarded stream has no file descriptor")


class _State:
    __slots__ = ("task_id", "running", "node", "owner", "fns", "actor", "actor_id",
                 "cancel_fd", "cancel_ids")

    def __init__(self) -> None:
        self.cancel_fd = -1
        self.cancel_ids: set[int] = set()
        self.task_id: int | None = None
        self.running = False
        self.node = "?"
        self.owner = 0
        self.fns: dict[int, Any] = {}
        self.actor: Any = None
        self.actor_id: int | None = None


def _drain_cancels(state: _State) -> None:
    """Read the task ids the driver wrote to the cancel pipe (never blocks)."""
    if state.cancel_fd < 0:
        return
    while True:
        try:
            data = os.read(state.cancel_fd, 8 * 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            state.cancel_fd = -1
            return
        if not data:
            return
        for i in range(0, len(data) - 7, 8):
            state.cancel_ids.add(int.from_bytes(data[i:i + 8], "little"))


def _on_sigint(state: _State) -> Any:
    def handler(signum: int, frame: Any) -> None:
        # The driver names the task it cancels in the cancel pipe before signalling,
        # so a SIGINT meant for a task that just ended never hits the next one.
        _drain_cancels(state)
        if state.running and state.task_id in state.cancel_ids:
            raise KeyboardInterrupt("task cancelled")

    return handler


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(3)


def _resolve(args_blob: Any, deps: dict[int, Any]) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = deserialize(args_blob)
    args = list(args)
    if deps:
        values = {k: deserialize(b) for k, b in deps.items()}
        for i, a in enumerate(args):
            if isinstance(a, ObjectRef) and a.id in values:
                args[i] = values[a.id]
        for k, a in kwargs.items():
            if isinstance(a, ObjectRef) and a.id in values:
                kwargs[k] = values[a.id]
    return args, kwargs


def _run(chan: Channel, state: _State, tid: int, name: str, call: Any,
         sent_ahead: bool = True) -> None:
    """Run ``call()`` as task ``tid`` and post its result, error or cancellation
    (``sent_ahead=False``: it was not sent ahead, so no ``skip`` applies to it)."""
    state.task_id = tid
    try:
        state.running = True  # from here on a SIGINT interrupts this task
        try:
            _check_cancelled(chan, tid, sent_ahead)
            result = call()
        finally:
            state.running = False
    except _Skip:
        return
    except KeyboardInterrupt:
        _flush_streams()
        chan.post(("cancelled", tid))
        return
    except BaseException as exc:  # noqa: BLE001 - the task's own error, any kind
        _flush_streams()
        chan.post(("done", tid, False, task_error_record(exc, name, tid, state.node, state.owner,
                                                          skip_frames=2)))
        return
    finally:
        state.task_id = None
    _flush_streams()
    try:
        blob = serialize(result, state.owner)
    except Exception as exc:  # noqa: BLE001 - unpicklable return value: this task fails
        err = SerializationError(f"the return value of {name!r} ({type(result).__name__}) "
                                 f"cannot be pickled to send back: {exc}")
        chan.post(("done", tid, False, task_error_record(err, name, tid, state.node,
                                                          state.owner, skip_frames=0)))
        return
    chan.post(("done", tid, True, blob))


class _Skip(Exception):
    """The driver took back a task it had sent ahead (its predecessor blocked)."""


def chan_state(chan: Channel) -> _State:
    """The worker state attached to the channel."""
    return chan.state


def _check_cancelled(chan: Channel, tid: int, sent_ahead: bool = True) -> None:
    """Raise KeyboardInterrupt when a cancel for ``tid`` is already queued (``_Skip``
    when the driver took back the copy it had sent ahead)."""
    while chan.conn.poll(0):
        chan._recv_one()
    for msg in chan.pending:
        if msg[0] == "skip" and msg[1] == tid and sent_ahead:
            raise _Skip
        if msg[0] == "cancel" and msg[1] == tid:
            raise KeyboardInterrupt("task cancelled before it started")
    _drain_cancels(chan_state(chan))
    if tid in chan_state(chan).cancel_ids:
        raise KeyboardInterrupt("task cancelled before it started")


def _flush_streams() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001, S110
            pass


def _call(target: Any, args_blob: Any, deps: Any) -> Any:
    """Resolve a task's arguments (inside the task, so errors are the task's) and call it."""
    args, kwargs = _resolve(args_blob, deps)
    return target(*args, **kwargs)


def _handle(chan: Channel, state: _State, msg: Any) -> bool:
    kind = msg[0]
    if kind == "run" or kind == "inline":
        _, tid, fn_id, fn_bytes, args_blob, deps, name = msg
        fn = state.fns.get(fn_id)
        if fn is None:
            if fn_bytes is None:  # it came with a task sent ahead that waits behind us
                fn_bytes = next(m[3] for m in chan.pending
                                if m[0] in ("run", "inline") and m[2] == fn_id and m[3])
            fn = state.fns[fn_id] = cloudpickle.loads(fn_bytes)
        _run(chan, state, tid, name, functools.partial(_call, fn, args_blob, deps),
             sent_ahead=kind == "run")
    elif kind == "call":
        _, tid, method, args_blob, deps, name = msg
        if state.actor is None:
            chan.post(("done", tid, False, task_error_record(
                RuntimeError("actor has no instance"), name, tid, state.node, state.owner)))
            return True
        bound = getattr(state.actor, method)
        _run(chan, state, tid, name, functools.partial(_call, bound, args_blob, deps))
    elif kind == "actor":
        _, aid, cls_bytes, args_blob, deps, name = msg
        state.actor_id = aid
        try:
            cls = cloudpickle.loads(cls_bytes)
            args, kwargs = _resolve(args_blob, deps)
            state.task_id = None
            state.running = True
            try:
                state.actor = cls(*args, **kwargs)
            finally:
                state.running = False
        except BaseException as exc:  # noqa: BLE001
            _flush_streams()
            chan.send(("actor_ready", aid, False,
                       task_error_record(exc, name, aid, state.node, state.owner)))
            return True
        _flush_streams()
        chan.send(("actor_ready", aid, True, None))
    elif kind == "exit":
        return False
    return True


def _inline(chan: Channel, state: _State, index: int) -> None:
    """Run the task the driver sent into a blocked ``get``/``wait`` (at its worker cap;
    ``chan.pending[index]``), then go back to the task that waits; a cancel of that one,
    meanwhile, is raised once it waits again (never while the message is in hand)."""
    outer = state.task_id, state.running
    state.running = False  # from here a SIGINT is for the inner task only
    msg = chan.pending[index]
    del chan.pending[index]
    try:
        _handle(chan, state, msg)
    finally:
        state.task_id, state.running = outer
    _drain_cancels(state)
    if state.running and state.task_id in state.cancel_ids:
        raise KeyboardInterrupt("task cancelled")


def main(fd: int, cancel_fd: int = -1) -> None:
    """Worker entry point: serve the driver on connection ``fd`` until it closes;
    ``cancel_fd`` is the read end of the pipe naming tasks to interrupt."""
    conn = Connection(fd)
    chan = Channel(conn)
    state = _State()
    chan.state = state
    chan.on_inline = functools.partial(_inline, chan, state)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # tasks inside waits nest
    if cancel_fd >= 0:
        os.set_blocking(cancel_fd, False)
        state.cancel_fd = cancel_fd
    init = loads(conn.recv_bytes())
    _, state.owner, path, cwd, state.node, t0, ppid, settings = init
    store.use(settings)
    sys.path[:] = path
    try:
        os.chdir(cwd)
    except OSError:
        pass
    signal.signal(signal.SIGINT, _on_sigint(state))
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()
    from runtime import refs as _refs
    from runtime import session
    from runtime.backends.local.client import ClientBackend

    def on_ref_pickled(oid: int) -> None:  # inside a result/put/call: its blob says so
        if not store.ref_pickled(oid):
            chan.ref_escaped.append(oid)

    _refs._pickle_hook = on_ref_pickled
    session.set_backend(ClientBackend(chan, state, t0))
    sys.stdout = _Output(chan, "stdout", state)  # type: ignore[assignment]
    sys.stderr = _Output(chan, "stderr", state)  # type: ignore[assignment]
    chan.start_flusher()
    chan.send(("hello", os.getpid()))
    try:
        while True:
            try:
                msg = chan.next_message()
            except (EOFError, OSError):
                break
            except KeyboardInterrupt:
                continue
            try:
                if not _handle(chan, state, msg):
                    break
            except KeyboardInterrupt:  # a late cancel between tasks
                continue
        chan.flush()
    except (EOFError, OSError, BrokenPipeError):
        pass
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - started with -c, see backend.py
    main(int(sys.argv[1]), int(sys.argv[2]))
