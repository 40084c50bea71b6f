"""The sim backend's inner pieces: records, the task greenlet, and the ``time.sleep`` patch.

Every task body (and actor method call) runs in its own :class:`TaskGreenlet` on the
thread that owns the engine. A body gives control back only through a few
"simcalls" (``get``, ``wait``, ``sleep``); the driver steps the simpy loop while
it waits, so virtual time moves only then. Nothing here imports the API layer.
"""

from __future__ import annotations

import contextvars
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit, getcurrent, greenlet

from runtime.cluster import TaskInfo

if TYPE_CHECKING:
    from runtime.backends.sim.backend import SimBackend

__all__ = ["TaskGreenlet", "Obj", "Task", "OVER", "Actor", "Waiter", "install_sleep", "uninstall_sleep",
           "real_sleep", "current_task", "kill_greenlet", "Watchdog", "WatchdogAlarm"]

#: The real ``time.sleep``, captured at import (before any patching).
real_sleep = time.sleep

_active: SimBackend | None = None
_patch_lock = threading.Lock()


class TaskGreenlet(greenlet):
    """The greenlet that runs one task body; ``task`` and ``backend`` say whose it is."""

    task: Task
    backend: SimBackend


def current_task() -> Task | None:
    """The sim task whose body is running now on this thread, or None."""
    g = getcurrent()
    if isinstance(g, TaskGreenlet):
        return g.task
    return None


def kill_greenlet(g: greenlet | None) -> None:
    """Unwind a suspended body so its ``finally`` blocks run (no-op when it cannot)."""
    if g is None or g.dead or g is getcurrent():
        return
    try:
        g.throw(GreenletExit)
    except GreenletExit:
        pass
    except greenlet.error:  # another thread's greenlet: it is dropped instead
        pass
    except Exception:  # noqa: BLE001 - a finally block that raised while unwinding
        pass


def _sleep(seconds: float) -> None:
    """``time.sleep`` while a sim is active: virtual in task bodies and in the driver."""
    b = _active
    if b is None or threading.get_ident() != b._thread_id:
        return real_sleep(seconds)
    g = getcurrent()
    if isinstance(g, TaskGreenlet):
        if g.backend is b:
            return b.sleep(seconds)
        return real_sleep(seconds)
    if b._stepping or b._closed or b._broken is not None:
        return real_sleep(seconds)  # inside an engine callback: never re-enter the engine
    return b.sleep(seconds)


_sleep.__doc__ = time.sleep.__doc__ or _sleep.__doc__
_sleep.__wrapped__ = real_sleep  # type: ignore[attr-defined]


def install_sleep(backend: SimBackend) -> None:
    """Make ``time.sleep`` virtual for ``backend``'s tasks and driver (module attribute)."""
    global _active
    with _patch_lock:
        _active = backend
        if time.sleep is not _sleep:
            time.sleep = _sleep


def uninstall_sleep(backend: SimBackend) -> None:
    """Restore the real ``time.sleep`` if ``backend`` is the one that patched it."""
    global _active
    with _patch_lock:
        if _active is not backend:
            return
        _active = None
        if time.sleep is _sleep:
            time.sleep = real_sleep


class Waiter:
    """Counts completions until ``remaining`` reaches 0; ``fired`` makes it one-shot."""

    __slots__ = ("remaining", "fired", "on_ready")

    def __init__(self, remaining: int, on_ready: Callable[[bool], None] | None = None) -> None:
        self.remaining = remaining
        self.fired = False
        self.on_ready = on_ready

    def __call__(self, _obj: Obj) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.fired and self.on_ready is not None:
            self.fired = True
            self.on_ready(True)


class Obj:
    """An object: a task's result or a ``put`` value (``error`` set when it failed)."""

    __slots__ = ("id", "done", "value", "error", "callbacks", "refs", "task")

    def __init__(self, id: int, task: Task | None = None) -> None:
        self.id = id
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.callbacks: list[Callable[[Obj], None]] = []
        self.refs = 0
        self.task = task


#: The states a task ends in (the event stream's words, ``runtime.events.TASK_STATES``).
OVER = frozenset({"finished", "failed", "cancelled"})


class Task:
    """One task or actor call: its spec, state, placement and greenlet.

    ``state`` is one of ``runtime.events.TASK_STATES`` (the event stream's words:
    pending, running, blocked, finished, failed, cancelled); ``stage`` says more
    where it matters: a pending task is ``"inputs"`` (waiting for its arguments) or
    ``"queued"`` (for a node, or its actor's turn), a blocked one ``"resuming"`` once
    its wait is over and it waits for its CPU back.
    """

    __slots__ = ("id", "name", "fn", "args", "kwargs", "options", "info", "obj", "state",
                 "stage", "node", "attempt", "glet", "token", "lent", "deps_left", "children",
                 "actor", "method", "max_retries", "retry_exceptions", "duration", "init_of",
                 "holds", "wake", "ctx")

    def __init__(self, id: int, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], options: Any, info: TaskInfo, obj: Obj) -> None:
        self.id = id
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.info = info
        self.obj = obj
        self.state = "pending"
        self.stage = "inputs"
        self.node: str | None = None
        self.attempt = 0
        self.glet: TaskGreenlet | None = None
        self.token = 0  # bumped whenever pending wake-ups must be ignored
        self.lent: dict[str, float] | None = None
        self.deps_left = 0
        self.children: list[Task] = []
        self.actor: Actor | None = None  # set for method calls
        self.method = ""
        self.max_retries = 0
        self.retry_exceptions: Any = False
        self.duration: Any = None  # sim_duration: None, a number or a callable
        self.init_of: Actor | None = None  # set for an actor's constructor task
        self.holds = True  # whether it holds node resources while running
        self.wake: Any = None  # the value a blocked task is resumed with
        self.ctx = contextvars.copy_context()  # the submitter's context vars, as in asyncio


class Actor:
    """An actor: its class, instance, node, queue of calls and restart budget."""

    __slots__ = ("id", "spec", "name", "state", "instance", "node", "queue", "busy",
                 "restarts_left", "task_retries_left", "current", "init_task", "alloc_id",
                 "reason", "info")

    def __init__(self, id: int, spec: Any, info: TaskInfo) -> None:
        self.id = id
        self.spec = spec
        self.name = spec.name
        self.info = info
        self.state = "pending"  # pending -> alive -> (restarting -> alive)* -> dead
        self.instance: Any = None
        self.node: str | None = None
        self.queue: deque[Task] = deque()
        self.busy = False
        self.restarts_left: int = spec.max_restarts
        self.task_retries_left: int = spec.max_task_retries
        self.current: Task | None = None
        self.init_task: Task | None = None
        self.alloc_id: int | None = None  # the task id its resources are held under
        self.reason = ""


class WatchdogAlarm(BaseException):
    """Raised in the engine thread when one engine step ran too long in real time."""

    def __init__(self, task: Task | None, stack: str) -> None:
        super().__init__("watchdog")
        self.task = task
        self.stack = stack


class Watchdog:
    """Turns a hang of the engine thread (an OS lock held across ``get``, a ``while True``
    body) into an error: a helper thread signals the engine thread (SIGUSR1) when one
    engine step has run for more than ``seconds`` of real time.

    Needs ``init()`` on the main thread (only it runs Python signal handlers).
    """

    def __init__(self, seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ValueError(f"watchdog={seconds!r}: needs runtime.init() on the main thread "
                             f"(it interrupts the engine with a signal)")
        self.seconds = seconds
        self.step_started: float | None = None  # monotonic time the current step began
        self.in_step = False
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._old = signal.signal(signal.SIGUSR1, self._handler)
        self._fired = False
        self._thread = threading.Thread(target=self._run, name="nbcluster-sim-watchdog",
                                        daemon=True)
        self._thread.start()

    def _handler(self, signum: int, frame: Any) -> None:
        if not self._fired:
            return
        self._fired = False
        if not self.in_step:  # the step ended meanwhile: nothing hangs
            return
        stack = "".join(traceback.format_stack(frame))
        raise WatchdogAlarm(current_task(), stack)

    def _run(self) -> None:
        poll = max(self.seconds / 4, 0.01)
        while not self._stop.wait(poll):
            began = self.step_started
            if began is not None and time.monotonic() - began > self.seconds:
                self.step_started = None
                self._fired = True
                assert self._main is not None
                signal.pthread_kill(self._main, signal.SIGUSR1)

    def close(self) -> None:
        """Stop the helper thread and restore the previous SIGUSR1 handler."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._old)
