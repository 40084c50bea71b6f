"""What one ``schedule`` call has handed out so far, so no slot is given twice.

Every built-in policy places tasks through a :class:`Ledger`; user policies may
too. On a :class:`~runtime.policies.state.NodeIndex` the ledger takes tentative
holds on the index itself, so ``fitting`` stays exact (and O(log n)) within the
call, and rolls them back, bit for bit, when the call ends. On any other
``ClusterState`` it keeps its own tally and filters ``fitting``'s output (exact
placement and order, at O(nodes used so far) per pick).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from types import TracebackType

from runtime.policies.base import ClusterState, FitOrder, NodeInfo, Place, TaskInfo, node_can_host
from runtime.policies.state import NodeIndex, score_of
from runtime.resources import Resources

__all__ = ["Ledger", "fifo_key", "priority_key", "hosts_for", "tasks_by_node"]


class Ledger:
    """Tentative placements within one ``schedule`` call; use as a context manager.

    ``pick(task, order)`` gives the first node where the task fits given what was
    already placed in this call; ``place(task, order)`` also records it and returns
    a :class:`Place` (or None). Shapes that found no node are remembered, so a
    long queue of equal tasks costs O(1) each once the cluster is full.
    """

    def __init__(self, cluster: ClusterState) -> None:
        self.cluster = cluster
        self.native = isinstance(cluster, NodeIndex) and cluster._undo is None
        self.taken: dict[str, dict[str, float]] = {}
        self.blocked: set[tuple[Resources, str | None]] = set()
        self.placed: list[Place] = []
        self._deferred: list[tuple[str, Mapping[str, float]]] = []
        if self.native:
            cluster._undo = []  # type: ignore[union-attr]

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def sync(self) -> None:
        """Apply deferred holds (a placement costs index work only if another pick follows)."""
        deferred, self._deferred = self._deferred, []
        for node_id, amount in deferred:
            self.cluster._hold(node_id, amount)  # type: ignore[union-attr]

    def close(self) -> None:
        """Undo the tentative holds (idempotent)."""
        self._deferred = []
        if self.native:
            self.cluster._rollback()  # type: ignore[union-attr]
            self.native = False

    # queries ---------------------------------------------------------------------
    def free(self, node: NodeInfo) -> Mapping[str, float]:
        """The node's free resources less what this call already placed there."""
        if self.native:
            if self._deferred:
                self.sync()
            return self.cluster.node(node.id).free
        used = self.taken.get(node.id)
        if not used:
            return node.free
        return {k: node.free.get(k, 0.0) - used.get(k, 0.0) for k in set(node.free) | set(used)}

    def fits(self, task: TaskInfo, node: NodeInfo) -> bool:
        """True when ``task`` still fits on ``node`` in this call."""
        return task.request.fits(self.free(node))

    def candidates(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Nodes where ``task`` fits given this call's placements, in ``order``."""
        if self.native:
            if self._deferred:
                self.sync()
            yield from self.cluster.fitting(task, order)
            return
        if order == "id" or not self.taken:
            for node in self.cluster.fitting(task, order):
                if node.id not in self.taken or self.fits(task, node):
                    yield node
            return
        # nodes used in this call moved in the order: merge them back at their new place
        sign = -1.0 if order == "loosest" else 1.0
        taken = self.taken
        touched = []
        for nid in taken:
            node = self.cluster.node(nid)
            if node.state == "up" and node_can_host(task, node, free=False) and self.fits(task, node):
                touched.append((sign * score_of(self.free(node), node.total), nid, node))
        touched.sort(key=lambda e: e[:2])
        rest = ((sign * score_of(n.free, n.total), n.id, n)
                for n in self.cluster.fitting(task, order) if n.id not in taken)
        for _, _, node in heapq.merge(rest, touched, key=lambda e: e[:2]):
            yield node

    def pick(self, task: TaskInfo, order: FitOrder = "id") -> NodeInfo | None:
        """The first node where ``task`` fits now (in ``order``), or None."""
        shape = (task.request, task.accelerator_type)
        if shape in self.blocked:
            return None
        node = next(self.candidates(task, order), None)
        if node is None:
            self.blocked.add(shape)
        return node

    # recording -----------------------------------------------------------------
    def take(self, task: TaskInfo, node_id: str) -> Place:
        """Record ``task`` as placed on ``node_id`` and return the decision."""
        if self.native:
            self._deferred.append((node_id, task.request))
        else:
            slot = self.taken.setdefault(node_id, {})
            for k, v in task.request.items():
                slot[k] = slot.get(k, 0.0) + v
        p = Place(task.id, node_id)
        self.placed.append(p)
        return p

    def hold(self, node_id: str, amount: Mapping[str, float]) -> None:
        """Keep ``amount`` on ``node_id`` out of reach for the rest of this call."""
        if self.native:
            self._deferred.append((node_id, amount))
        else:
            slot = self.taken.setdefault(node_id, {})
            for k, v in amount.items():
                slot[k] = slot.get(k, 0.0) + v

    def place(self, task: TaskInfo, order: FitOrder = "id") -> Place | None:
        """``pick`` then ``take``: place ``task`` on its first fitting node, or None."""
        node = self.pick(task, order)
        return None if node is None else self.take(task, node.id)

    def unblock(self) -> None:
        """Forget which shapes found no node (after capacity grew, e.g. preemption)."""
        self.blocked.clear()


def fifo_key(task: TaskInfo) -> tuple[float, int]:
    """Submission order: ``(submitted_at, id)``."""
    return (task.submitted_at, task.id)


def priority_key(task: TaskInfo) -> tuple[int, float, int]:
    """Higher priority first, then submission order."""
    return (-task.priority, task.submitted_at, task.id)


def hosts_for(task: TaskInfo, cluster: ClusterState) -> list[NodeInfo]:
    """Up nodes whose total could host ``task`` (an index walk on a NodeIndex)."""
    if isinstance(cluster, NodeIndex):
        out = []
        for g in cluster.candidate_groups(task.request, task.accelerator_type):
            for nid in g.ids:
                n = cluster.node(nid)
                if n.state == "up":
                    out.append(n)
        return sorted(out, key=lambda n: n.id)
    return [n for n in cluster.nodes() if node_can_host(task, n, free=False)]


def tasks_by_node(cluster: ClusterState) -> dict[str, list[TaskInfo]]:
    """Running tasks per node id (from ``running()`` and ``placement_of``)."""
    out: dict[str, list[TaskInfo]] = {}
    for t in cluster.running():
        nid = cluster.placement_of(t.id)
        if nid is not None:
            out.setdefault(nid, []).append(t)
    return out
