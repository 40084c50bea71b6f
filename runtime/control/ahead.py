"""Send-ahead: queue a task behind a running one, so it starts the moment the slot frees
(no round trip to the driver).

Two ways to choose what goes behind a running task, each gated by one declaration
of the policy:

- ``greedy_by_shape`` (fifo, best_fit, spread): a task that found no room anywhere
  would be placed, when a slot of its shape frees, exactly in that slot. Tasks go
  ahead in ``(submitted_at, id)`` order and the first one that finds no running task
  of its shape with room behind it stops the pass, so no task overtakes an older one.
- ``lookahead_safe`` (drf: ``schedule`` has no side effects): the policy itself is
  asked, on a copy of the index in which the running tasks with room behind them
  have ended, which waiting task it would start in each such slot.

When the running task ends, the first task behind it takes its resources at once
(the rest now queue behind that one). The depth (how many behind one running task)
is the backend's: 1 on the local backend (a worker's pipe), adaptive on dask.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.cluster.types import Place
from runtime.control.index import IndexNode, _fits
from runtime.events import EventKind as K

if TYPE_CHECKING:
    from runtime.control.plane import ControlPlane

__all__ = ["SendAhead"]


def _slot(info: Any) -> tuple[Any, Any]:
    """What makes two tasks interchangeable for a slot: request and accelerator type."""
    return (info.request, info.accelerator_type)


class SendAhead:
    """Tasks queued behind running tasks (see the module docstring)."""

    def __init__(self, plane: ControlPlane, depth: Callable[[Any], int],
                 lookahead: bool = False) -> None:
        self.plane = plane
        self.depth = depth
        self.lookahead = lookahead
        self.announce = False
        self.behind: dict[int, deque[int]] = {}  # running task -> tasks queued behind it
        self.behind_of: dict[int, int] = {}  # task queued -> the running task it waits on
        self.info: dict[int, Any] = {}  # task queued -> its TaskInfo

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.behind_of

    def fill(self, announce: bool = False) -> None:
        """Send waiting tasks ahead (by shape, or as the policy would choose). With
        ``announce`` (a pass outside a decision round) a ``decision_round`` event of
        ``what="ahead"`` precedes what it sends, so a replay runs the same pass."""
        self.announce = announce
        if self.lookahead:
            self._fill_lookahead()
        else:
            self._fill_by_shape()

    def _announce(self) -> None:
        if self.announce:
            self.announce = False
            self.plane.emit(K.DECISION_ROUND, what="ahead")

    def _fill_by_shape(self) -> None:
        """Send waiting tasks ahead, oldest first, while running tasks of their shape have
        room behind them."""
        plane = self.plane
        idx = plane.index
        queue = plane.queue
        slots: dict[Any, list[list[Any]]] = {}
        lent, fixed = plane._lent, plane._fixed
        waiting_shapes = {_slot(g.sample) for g in queue.groups.values() if g.queue}
        for tid, (info, n, _, _) in idx._running.items():
            if tid in lent or tid in fixed or n.state != "up" or tid in plane._preempting:
                continue
            key = _slot(info)
            if key not in waiting_shapes:
                continue
            depth = self.depth(key)
            have = len(self.behind.get(tid, ()))
            if have < depth:
                slots.setdefault(key, []).append([have, n.id, tid, depth])
        if not slots:
            return
        for v in slots.values():
            heapq.heapify(v)
        waiting = heapq.merge(*(iter(g.queue) for g in queue.groups.values() if g.queue),
                              key=lambda t: (t.submitted_at, t.id))
        sent: list[tuple[int, str, int]] = []
        for info in waiting:
            heap = slots.get(_slot(info))
            if not heap:
                break
            have, nid, run, depth = heap[0]
            sent.append((info.id, nid, run))
            if have + 1 >= depth:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, [have + 1, nid, run, depth])
        if sent:
            self._announce()
        for tid, nid, run in sent:
            self._queue_behind(tid, nid, run)

    def _queue_behind(self, tid: int, nid: str, run: int) -> None:
        plane = self.plane
        info = plane.queue.remove(tid)
        plane._ready_at.pop(tid, None)
        self.behind.setdefault(run, deque()).append(tid)
        self.behind_of[tid] = run
        self.info[tid] = info
        plane.emit(K.TASK_PLACED, tid, nid, behind=run, decided=True)
        plane.actuator.send_ahead(tid, nid, run)

    def _fill_lookahead(self) -> None:
        """Ask the (side-effect free) policy which waiting task it would start where a
        running task with room behind it ends, and queue that task behind it there (one
        new task behind each running task per round; one of the same shape, with the
        shortest queue, first)."""
        from runtime.control.index import ClusterIndex

        plane = self.plane
        idx = plane.index
        queue = plane.queue
        lent, fixed = plane._lent, plane._fixed
        ends = [tid for tid, run in idx._running.items()
                if tid not in lent and tid not in fixed and tid not in plane._preempting
                and len(self.behind.get(tid, ())) < self.depth(_slot(run[0]))]
        if not ends:
            return
        ending = set(ends)
        virt = ClusterIndex(idx.speeds)
        virt.now = idx.now
        for nid, n in sorted(idx.records().items()):
            virt.add_node(nid, n.group.spec, state=n.state)
        for tid, (info, n, _, _) in idx._running.items():
            if tid not in ending:
                virt.allocate(info, n.id, idx.held(tid))
        waiting = sorted(queue.pending(), key=lambda t: (t.submitted_at, t.id))
        if not waiting:
            return
        by_id = {t.id: t for t in waiting}
        taken: set[int] = set()
        try:
            decisions = list(plane.policy.schedule(waiting, virt) or ())  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the real round reports a broken policy
            return
        for d in decisions:
            task = by_id.pop(d.task, None) if type(d) is Place else None
            if task is None:
                continue
            on_node = [r for r in ends if r not in taken and idx._running[r][1].id == d.node]
            if not on_node:
                continue
            self._announce()
            key = _slot(task)
            run = min(on_node, key=lambda r: (_slot(idx._running[r][0]) != key,
                                              len(self.behind.get(r, ())), r))
            taken.add(run)
            self._queue_behind(task.id, d.node, run)

    def ended(self, run: int, n: IndexNode | None) -> int | None:
        """``run`` gave its resources back on ``n``: the first task behind it takes them.
        Returns that task's id (the caller publishes its start)."""
        q = self.behind.pop(run, None)
        if not q:
            return None
        nxt = q.popleft()
        del self.behind_of[nxt]
        info = self.info.pop(nxt)
        if q:
            self.behind[nxt] = q
            for t in q:
                self.behind_of[t] = nxt
        if n is None or n.id not in self.plane.index:
            return None
        vec = n.group.reqvec(info.request)
        if vec is None or not _fits(n.free, vec):
            return None
        self.plane.index.allocate_vec(info, n, vec)
        return nxt

    def forget(self, task_id: int) -> bool:
        """A task queued ahead ended or is recalled: drop it (True when it was queued)."""
        run = self.behind_of.pop(task_id, None)
        if run is None:
            return False
        self.info.pop(task_id, None)
        q = self.behind.get(run)
        if q is not None:
            try:
                q.remove(task_id)
            except ValueError:
                pass
            if not q:
                del self.behind[run]
        return True

    def node_gone(self, lost: list[int]) -> list[int]:
        """Tasks that were running on a node that left: what queued behind them goes back
        to the queue (returned, in order)."""
        back: list[int] = []
        for run in lost:
            q = self.behind.pop(run, None)
            while q:
                tid = q.popleft()
                self.behind_of.pop(tid, None)
                self.info.pop(tid, None)
                back.append(tid)
        return back
