"""The error hierarchy shared by every backend and the simulator.

System failures (a worker died, the runtime shut down, a policy misbehaved) are
kept apart from application failures: a task that raised ``ValueError`` surfaces
from ``get`` as an error that *is* a ``ValueError`` and also a :class:`TaskError`,
carrying the remote traceback (Ray's ``RayTaskError.as_instanceof_cause``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NBClusterError",
    "TaskError",
    "GetTimeoutError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "ActorDiedError",
    "ObjectLostError",
    "RuntimeShutdownError",
    "InfeasibleRequestError",
    "PolicyError",
    "SerializationError",
    "SimDeadlock",
    "ObjectSpilledWarning",
    "SecurityWarning",
    "make_task_error",
    "portable_exception",
]


class NBClusterError(Exception):
    """Base class of every error the runtime raises on its own account."""


class TaskError(NBClusterError):
    """A task's own code raised; ``cause`` is the original exception.

    Errors returned by ``get`` are built with :func:`make_task_error`, so they
    are instances of both ``TaskError`` and the cause's type.
    """

    def __init__(
        self,
        cause: BaseException | None = None,
        remote_traceback: str = "",
        *,
        task_name: str = "?",
        task_id: Any = None,
        node: str | None = None,
        cause_type: str | None = None,
    ) -> None:
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.task_name = task_name
        self.task_id = task_id
        self.node = node
        self.cause_type = cause_type or (type(cause).__name__ if cause is not None else "Exception")
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        where = f" on node {self.node}" if self.node else ""
        head = f"task {self.task_name!r} (id {self.task_id}){where} raised {self.cause_type}"
        if self.cause is not None:
            head += f": {self.cause}"
        if self.remote_traceback:
            head += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return head

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_task_error,
            (portable_exception(self.cause), self.remote_traceback, self.task_name,
             self.task_id, self.node, self.cause_type),
        )


def _rebuild_task_error(cause, tb, name, task_id, node, cause_type):  # noqa: ANN001, ANN202
    return make_task_error(cause, tb, task_name=name, task_id=task_id, node=node,
                           cause_type=cause_type)


_DERIVED: dict[type, type] = {}


def make_task_error(
    cause: BaseException | None,
    remote_traceback: str = "",
    *,
    task_name: str = "?",
    task_id: Any = None,
    node: str | None = None,
    cause_type: str | None = None,
) -> TaskError:
    """Build the error ``get`` raises: an instance of ``TaskError`` *and* of ``type(cause)``.

    When the cause's class cannot be subclassed (or the cause could not be
    unpickled), a plain :class:`TaskError` is returned with the traceback text.
    """
    kwargs = dict(task_name=task_name, task_id=task_id, node=node, cause_type=cause_type)
    if cause is None or isinstance(cause, TaskError):
        if isinstance(cause, TaskError):
            return cause
        return TaskError(None, remote_traceback, **kwargs)
    cls = type(cause)
    derived = _DERIVED.get(cls)
    if derived is None:
        try:
            derived = type(
                f"TaskError({cls.__name__})",
                (TaskError, cls),
                {
                    "__init__": TaskError.__init__,
                    "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__,
                    "__module__": __name__,
                },
            )
        except TypeError:  # final classes, layout conflicts
            derived = TaskError
        _DERIVED[cls] = derived
    try:
        err = derived.__new__(derived)
        TaskError.__init__(err, cause, remote_traceback, **kwargs)
        err.args = getattr(cause, "args", ())
    except Exception:  # noqa: BLE001 - exotic exception types
        err = TaskError(cause, remote_traceback, **kwargs)
    err.__cause__ = cause
    return err


class GetTimeoutError(NBClusterError, TimeoutError):
    """``get``/``wait``/``result`` ran out of time; the task keeps running."""


class TaskCancelledError(NBClusterError):
    """The task was cancelled with ``cancel(ref)`` before it produced a value."""

    def __init__(self, task_name: str = "?", task_id: Any = None) -> None:
        self.task_name = task_name
        self.task_id = task_id
        super().__init__(f"task {task_name!r} (id {task_id}) was cancelled")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.task_id))


class WorkerCrashedError(NBClusterError):
    """The worker (or node) running a task died, and retries were used up.

    Like Dask's ``KilledWorker``: carries the task, the attempt count and the last
    worker, and says what to do next.
    """

    def __init__(self, task_name: str = "?", task_id: Any = None, attempts: int = 1,
                 last_worker: str | None = None, reason: str = "") -> None:
        self.task_name = task_name
        self.task_id = task_id
        self.attempts = attempts
        self.last_worker = last_worker
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"task {task_name!r} (id {task_id}) lost its worker {last_worker} on each of "
            f"{attempts} attempt(s){why}. It may crash its process (os._exit, segfault, "
            f"out of memory); raise max_retries to try more often."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.task_id, self.attempts, self.last_worker,
                             self.reason))


class ActorDiedError(NBClusterError):
    """The actor's process died and may not be restarted (or it was killed).

    With ``restarting=True`` the actor lives on (it is being restarted): only the
    call that was running when its process died failed, and the message says so.
    """

    def __init__(self, actor: str = "?", reason: str = "", *, restarting: bool = False) -> None:
        self.actor = actor
        self.reason = reason
        self.restarting = restarting
        if restarting:
            msg = (f"actor {actor} lost its process while running this call and is being "
                   f"restarted; this call did not complete (raise max_task_retries to re-run "
                   f"it); later calls run on the new instance")
            msg += f" ({reason})" if reason else ""
        else:
            msg = f"actor {actor} is dead" + (f": {reason}" if reason else "")
        super().__init__(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_actor_died, (type(self), self.actor, self.reason, self.restarting))


def _rebuild_actor_died(cls, actor, reason, restarting):  # noqa: ANN001, ANN202
    return cls(actor, reason, restarting=restarting)


class ObjectLostError(NBClusterError):
    """An object's value is gone (its holder died) and cannot be rebuilt."""


class RuntimeShutdownError(NBClusterError):
    """The runtime was shut down while the object was pending, or before the call."""


class InfeasibleRequestError(NBClusterError, ValueError):
    """No node (nor any node type an autoscaler could add) can ever satisfy a request."""


class PolicyError(NBClusterError):
    """A scheduling or autoscaling policy returned an invalid decision."""


class SerializationError(NBClusterError, TypeError):
    """A value could not be pickled to travel to (or back from) a worker."""


class SimDeadlock(NBClusterError):
    """The simulation has no events left while the driver still waits."""


class ObjectSpilledWarning(RuntimeWarning):
    """Shared memory was too small for an object: it was written to disk instead."""


class SecurityWarning(UserWarning):
    """A connection that lets others run code on the cluster (plain TCP off this host)."""


def _pickles(value: Any) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - any pickling failure
        return False
    return True


def _round_trips(exc: BaseException) -> bool:
    import pickle

    import cloudpickle

    try:
        back = pickle.loads(cloudpickle.dumps(exc, protocol=5))
    except Exception:  # noqa: BLE001 - any failure either way
        return False
    return type(back) is type(exc)


class _Rebuilt:
    """Pickles as "make an instance of this exception class without calling __init__"."""

    __slots__ = ("cls", "args", "state")

    def __init__(self, cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> None:
        self.cls = cls
        self.args = args
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exception, (self.cls, self.args, self.state))


def _rebuild_exception(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    try:
        exc = cls.__new__(cls, *args)
    except Exception:  # noqa: BLE001 - a __new__ that wants other arguments
        exc = cls.__new__(cls)
    exc.args = args
    for k, v in state.items():
        try:
            setattr(exc, k, v)
        except Exception:  # noqa: BLE001 - read-only attributes
            pass
    return exc


def portable_exception(exc: BaseException | None) -> Any:
    """``exc`` itself when it survives a pickle round trip, else a stand-in that unpickles
    as an instance of the same class with the same ``args`` and attributes.

    Exceptions whose constructor needs other arguments than ``args`` (``def
    __init__(self, a, b)``) cannot be unpickled the default way; this keeps their
    type and message across processes instead of losing them."""
    if exc is None or _round_trips(exc):
        return exc
    args = tuple(a for a in getattr(exc, "args", ()) if _pickles(a))
    state = {k: v for k, v in getattr(exc, "__dict__", {}).items() if _pickles(v)}
    stand_in = _Rebuilt(type(exc), args, state)
    if _pickles(stand_in):
        return stand_in
    return _Rebuilt(type(exc), tuple(str(a) for a in getattr(exc, "args", ())), {})
