"""Names shared by the dask backend's modules: keys, the resource convention, task records."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from runtime.cluster import ACCELERATOR_LABEL, TaskInfo
from runtime.resources import Resources

__all__ = ["ACCELERATOR_PREFIX", "ACCELERATOR_AMOUNT", "task_key", "worker_shape",
           "dask_resources"]

#: A worker resource ``accelerator_type:<model>`` labels the worker with that model.
ACCELERATOR_PREFIX = "accelerator_type:"
#: Amount of the accelerator resource a task with ``accelerator_type=`` asks dask for.
ACCELERATOR_AMOUNT = 0.001
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.<>]+")


def task_key(name: str, ref_id: int, session: str = "") -> str:
    """The dask key of a task or object: name, id and the driver session.

    The session (a random token per driver ``init``) keeps two sessions on one
    long-lived scheduler from sharing keys; any process can derive the key from a
    ref's name and id inside a task of that session.
    """
    return f"{_KEY_SAFE.sub('_', name) or 'obj'}-{ref_id}-{session}"


def worker_shape(info: Mapping[str, Any]) -> tuple[str, str, Resources, dict[str, str]]:
    """``(node id, node type, total resources, labels)`` of a worker from ``scheduler_info``."""
    name = info.get("name")
    node_id = str(name) if name is not None else str(info.get("id"))
    res: dict[str, float] = {}
    labels: dict[str, str] = {}
    for k, v in (info.get("resources") or {}).items():
        if k.startswith(ACCELERATOR_PREFIX):
            labels[ACCELERATOR_LABEL] = k[len(ACCELERATOR_PREFIX):]
        else:
            res[k] = float(v)
    res.setdefault("CPU", float(info.get("nthreads") or 1))
    node_type = re.sub(r"-\d+$", "", node_id) if name is not None else "worker"
    if node_type.isdigit() or "://" in node_type:
        node_type = "worker"
    return node_id, node_type, Resources(res, where=f"worker {node_id}"), labels


def dask_resources(request: Mapping[str, float], accelerator: str | None) -> dict[str, float]:
    """The dask ``resources=`` for a request: everything but CPU and memory, plus the label."""
    out = {k: v for k, v in request.items() if k not in ("CPU", "memory")}
    if accelerator:
        out[ACCELERATOR_PREFIX + accelerator] = ACCELERATOR_AMOUNT
    return out


#: ``_Task.value`` when the driver keeps no copy of the result.
NO_VALUE: Any = object()


class _Task:
    """What the driver keeps about one task (or actor call) it submitted."""

    __slots__ = ("id", "name", "fn", "args", "kwargs", "request", "res", "max_retries",
                 "retry", "info", "attempts", "node", "actor", "keep", "placed", "extra",
                 "deaths", "addr", "done_once", "value")

    def __init__(self, id: int, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], request: Resources, res: dict[str, float],
                 max_retries: int, retry: Any, info: TaskInfo) -> None:
        self.id = id
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.request = request
        self.res = res
        self.max_retries = max_retries
        self.retry = retry
        self.info = info
        self.attempts = 0  # starts seen
        self.node: str | None = None
        self.actor: Any = None  # (actor id, generation, seq, method) for actor calls
        self.keep: list[Any] = []  # futures of nested refs, kept alive while it runs
        self.placed = True
        self.extra = 0  # resubmissions after KilledWorker
        self.deaths = 0  # workers that died while running it
        self.addr: str | None = None  # the worker it is pinned to (a policy's, an actor's)
        self.done_once = False  # an actor call that finished (its result lives on addr)
        self.value: Any = NO_VALUE  # a small actor result, kept in the driver



class _Failed:
    """Stands in for an argument whose ref already failed (the task must not run)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

