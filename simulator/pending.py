"""The engine's pending queues: groups of pending tasks kept in submission order.

A group holds pending tasks of one shape (request, accelerator type, kind), plus
tenant and priority unless the policy is greedy by shape (:func:`greedy_by_shape`).
Each queue is kept in ``(submitted_at, id)`` order, the order policies sort by, so
the first tasks of a group are the ones a FIFO-style policy would look at first
(a DAG task that becomes ready late still queues by its submission time).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from operator import attrgetter
from typing import Any

from runtime.policies.base import TaskInfo

__all__ = ["PendingGroup", "fifo_insert", "greedy_by_shape", "preempts"]

_fifo = attrgetter("submitted_at", "id")


def fifo_insert(q: deque[TaskInfo], info: TaskInfo) -> None:
    """Put ``info`` into ``q`` in ``(submitted_at, id)`` order (an append when it is last)."""
    if q:
        last = q[-1]
        if last.submitted_at > info.submitted_at or (
                last.submitted_at == info.submitted_at and last.id > info.id):
            q.insert(bisect_right(q, (info.submitted_at, info.id), key=_fifo), info)
            return
    q.append(info)


def preempts(policy: Any) -> bool:
    """Whether a policy may preempt (it then sees every pending task, every round)."""
    if getattr(policy, "preemptive", False) is True or getattr(policy, "preempt", False) is True:
        return True
    return "preempt" in type(policy).__name__.lower() or \
        "preempt" in str(getattr(policy, "name", "")).lower()


def greedy_by_shape(policy: Any) -> bool:
    """Whether ``policy`` declares ``greedy_by_shape = True``: it places the tasks it is
    given greedily in ``(submitted_at, id)`` order, where a task goes depends only on its
    request, accelerator type and kind and on the placements before it in the same call,
    and a task that fits nowhere changes nothing. Then pending tasks of one shape share
    one queue across tenants and priorities, and a round shows the policy only the first
    tasks of each shape that could fit (the decisions are the same as with every pending
    task shown, since the queue is in the policy's order)."""
    return getattr(policy, "greedy_by_shape", False) is True


class PendingGroup:
    """Pending tasks of one group in ``(submitted_at, id)`` order: same request, accelerator
    and kind (and tenant and priority, unless the policy is greedy by shape)."""

    __slots__ = ("key", "queue", "blocked", "elig", "shown")

    def __init__(self, key: tuple[Any, ...], elig: list[Any]) -> None:
        self.key = key
        self.queue: deque[TaskInfo] = deque()
        self.blocked = False
        self.elig = elig  # the state's eligible groups for this shape
        self.shown = 0  # tasks shown to the policy in this round and not yet placed
