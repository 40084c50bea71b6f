"""The local backend's record of one task (or actor, or actor call) in the driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.cluster import TaskInfo
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.local.pool import WorkerProc

__all__ = ["_Task", "ON_WORKER", "OVER"]

#: States of a task a worker holds (a blocked one waits in ``get``/``wait`` inside it).
ON_WORKER = ("running", "blocked")
#: The states a task ends in.
OVER = frozenset({"finished", "failed", "cancelled"})


class _Task:
    """One task in the driver. ``state`` is one of ``runtime.events.TASK_STATES`` (the
    event stream's words); ``stage`` says more: a pending task is ``"inputs"`` (waiting
    for its arguments), ``"queued"`` (for a node), ``"ahead"`` (sent ahead to a busy
    worker) or ``"failing"`` (an input failed); a blocked one is ``"resuming"`` once its
    wait is over and it waits for its CPU back."""

    __slots__ = ("id", "name", "fn_id", "args", "deps", "missing", "info", "max_retries",
                 "retry_exceptions", "attempt", "state", "stage", "worker", "node", "cancelled", "lent",
                 "actor", "method", "shape")

    def __init__(self, tid: int, name: str, fn_id: int, args: Any, deps: list[int],
                 info: TaskInfo | None, max_retries: int, retry_exceptions: Any) -> None:
        self.id = tid
        self.name = name
        self.fn_id = fn_id
        self.args = args
        self.deps = deps
        self.missing = 0
        self.info = info
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions
        self.attempt = 0
        self.state = "pending"
        self.stage = "inputs"
        self.worker: WorkerProc | None = None
        self.node: str | None = None
        self.cancelled = False
        self.lent: Resources | None = None
        self.actor: Any = None
        self.method = ""
        self.shape: Any = None
