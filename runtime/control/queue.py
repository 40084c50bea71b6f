"""The pending queue: ready tasks in groups of one shape, each in submission order.

A group holds pending tasks of one shape (request, accelerator type, kind), plus
tenant and priority unless the policy is greedy by shape. Each group is kept in
``(submitted_at, id)`` order, the order policies sort by. The one "how many of this
shape fit" computation is :meth:`ClusterIndex.room_in`; a group that found no room
is *blocked* until a node of a type it could use comes up or frees room it fits in,
so a long queue costs nothing per round while the cluster is full.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter
from typing import Any

from runtime.cluster.types import TaskInfo
from runtime.control.index import ClusterIndex, IndexNode, _fits

__all__ = ["PendingGroup", "PendingQueue", "fifo_insert"]

_fifo = attrgetter("submitted_at", "id")
_by_id = attrgetter("id")


def fifo_insert(q: deque[TaskInfo], info: TaskInfo) -> None:
    """Put ``info`` into ``q`` in ``(submitted_at, id)`` order (an append when it is last)."""
    if q:
        last = q[-1]
        if last.submitted_at > info.submitted_at or (
                last.submitted_at == info.submitted_at and last.id > info.id):
            q.insert(bisect_right(q, (info.submitted_at, info.id), key=_fifo), info)
            return
    q.append(info)


class PendingGroup:
    """Pending tasks of one group in ``(submitted_at, id)`` order."""

    __slots__ = ("key", "queue", "blocked", "elig", "shown", "sample")

    def __init__(self, key: tuple[Any, ...], elig: list[Any], sample: TaskInfo) -> None:
        self.key = key
        self.sample = sample  # a task of the group's shape
        self.queue: deque[TaskInfo] = deque()
        self.blocked = False
        self.elig = elig  # the index's eligible groups for this shape
        self.shown = 0  # tasks shown to the policy in this round and not yet placed


class PendingQueue:
    """Every pending task of the control plane, grouped by shape (see the module docstring)."""

    def __init__(self, index: ClusterIndex, *, by_shape: bool) -> None:
        self.index = index
        self.by_shape = by_shape
        self.groups: dict[tuple[Any, ...], PendingGroup] = {}
        self.group_of: dict[int, PendingGroup] = {}
        self.ready: dict[PendingGroup, PendingGroup] = {}  # keyed by the group (fast hash)
        # index group -> pending groups blocked until it frees room (with their vector)
        self.blocked_by_type: dict[Any, dict[PendingGroup, tuple[PendingGroup, Any]]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.group_of

    def key(self, info: TaskInfo) -> tuple[Any, ...]:
        """The group of a task: its shape (plus tenant and priority unless by shape)."""
        key = (info.request, info.accelerator_type, info.task_kind)
        return key if self.by_shape else key + (info.tenant, info.priority)

    def add(self, info: TaskInfo) -> bool:
        """Queue a task; True when its group may run now (not blocked)."""
        key = (info.request, info.accelerator_type, info.kind or info.name)
        if not self.by_shape:
            key += (info.tenant, info.priority)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = PendingGroup(key, self.index.eligible(info), info)
        self.group_of[info.id] = g
        fifo_insert(g.queue, info)
        self.count += 1
        if g.blocked:
            return False
        self.ready[g] = g
        return True

    def remove(self, task_id: int) -> TaskInfo | None:
        """Take a task out of the queue (placed, cancelled, failed); None if not queued."""
        g = self.group_of.pop(task_id, None)
        if g is None:
            return None
        q = g.queue
        info = q[0] if q and q[0].id == task_id else next(t for t in q if t.id == task_id)
        if q[0] is info:
            q.popleft()
        else:
            q.remove(info)
        self.count -= 1
        return info

    def pending(self, limit: int | None = None) -> list[TaskInfo]:
        """Queued tasks in id order (at most ``limit`` from each group)."""
        out: list[TaskInfo] = []
        for g in self.groups.values():
            out.extend(g.queue if limit is None else islice(g.queue, limit))
        out.sort(key=_by_id)
        return out if limit is None else out[:limit]

    def __iter__(self) -> Iterator[TaskInfo]:
        return iter(self.pending())

    # rounds ----------------------------------------------------------------------
    def window(self, mode: str, cap: int | None) -> tuple[list[TaskInfo], list[PendingGroup]]:
        """The tasks one round shows the policy, in id order, and their groups.

        ``mode``: ``"room"`` (greedy policies: per group as many as could start now; a
        group with no room is blocked), ``"head"`` (as many as could start, but at least
        the group's head, so a policy can reserve for it) or ``"all"`` (every task, for
        preemptive policies); ``cap`` bounds each group (None: no bound)."""
        room = self.index.room_in
        window: list[TaskInfo] = []
        groups: list[PendingGroup] = []
        big = cap if cap is not None else 1 << 30
        for g in list(self.ready):
            q = g.queue
            if not q:
                del self.ready[g]
                continue
            if mode == "all":
                k = len(q) if cap is None else min(cap, len(q))
            else:
                k = room(g.elig, big)
                if k <= 0:
                    if mode == "room":
                        self.block(g)
                        continue
                    k = 1
            if k < len(q):
                window.extend(islice(q, k))
            else:
                k = len(q)
                window.extend(q)
            g.shown = k
            groups.append(g)
        if len(groups) > 1:
            window.sort(key=_by_id)
        return window, groups

    def settle(self, groups: list[PendingGroup], mode: str) -> bool:
        """After a round: in room mode, park the groups whose shown tasks stayed pending or
        that have no room left; True when another round could place more (a group had
        everything it showed placed, still waits, and has room)."""
        if mode == "all":
            return False
        again = False
        room = self.index.room_in
        for g in groups:
            if g.queue:
                if g.shown <= 0 and room(g.elig, 1) > 0:
                    again = True
                elif mode == "room":
                    self.block(g)
        return again

    def block(self, g: PendingGroup) -> None:
        """Park a group until a node of a type it can use comes up or frees room."""
        if g.blocked:
            return
        g.blocked = True
        self.ready.pop(g, None)
        bbt = self.blocked_by_type
        for grp, vec, _ in g.elig:
            row = bbt.get(grp)
            if row is None:
                row = bbt[grp] = {}
            row[g] = (g, vec)

    def unblock(self, g: PendingGroup) -> bool:
        """Make a group ready again; True when it has tasks."""
        if not g.blocked:
            return False
        g.blocked = False
        for d in self.blocked_by_type.values():
            d.pop(g, None)
        if g.queue:
            self.ready[g] = g
            return True
        return False

    def unblock_all(self) -> bool:
        """Make every group ready (the cluster changed in a way the types do not tell)."""
        woke = False
        for g in list(self.groups.values()):
            woke |= self.unblock(g)
        return woke

    def node_up(self, n: IndexNode) -> bool:
        """Node ``n`` came up: wake the groups blocked on its group."""
        row = self.blocked_by_type.get(n.group)
        woke = False
        if row:
            for g, _ in list(row.values()):
                woke |= self.unblock(g)
        return woke

    def released(self, n: IndexNode) -> bool:
        """Room was freed on ``n``: wake the blocked groups that now fit there."""
        row = self.blocked_by_type.get(n.group)
        woke = False
        if row:
            free = n.free
            for g, vec in list(row.values()):
                if _fits(free, vec):
                    woke |= self.unblock(g)
        return woke

    def reset_eligibility(self) -> None:
        """The index gained a node group: recompute each group's eligible node groups."""
        idx = self.index
        for g in self.groups.values():
            g.elig = idx.eligible(g.sample)
        self.blocked_by_type.clear()
        for g in self.groups.values():
            g.blocked = False
            if g.queue:
                self.ready[g] = g
