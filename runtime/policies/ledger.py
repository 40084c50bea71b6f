"""What one ``schedule`` call has handed out so far, so no slot is given twice.

Every built-in policy places tasks through a :class:`Ledger`; user policies may
too. The ledger takes tentative holds on the cluster itself
(``ClusterState.hold``), so ``fitting`` and ``first_fitting`` stay exact (and
O(log n)) within the call, and rolls them back, bit for bit, when the call ends
(``ClusterState.rollback``). A ledger opened inside another one's call shares its
holds and leaves the rollback to the outer one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType

from runtime.cluster.state import ClusterState
from runtime.cluster.types import FitOrder, NodeInfo, Place, TaskInfo
from runtime.resources import Resources

__all__ = ["Ledger", "fifo_key", "priority_key", "tasks_by_node"]


class Ledger:
    """Tentative placements within one ``schedule`` call; use as a context manager.

    ``pick(task, order)`` gives the first node where the task fits given what was
    already placed in this call; ``place(task, order)`` also records it and returns
    a :class:`Place` (or None). Shapes that found no node are remembered in
    ``blocked``, so a long queue of equal tasks costs O(1) each once the cluster is full.
    """

    def __init__(self, cluster: ClusterState) -> None:
        self.cluster = cluster
        self.owner = not cluster.holding
        if self.owner:
            cluster.open_holds()  # the cluster refuses changes until the call ends
        self.blocked: set[tuple[Resources, str | None]] = set()
        self.placed: list[Place] = []
        self._deferred: list[tuple[str, Mapping[str, float]]] = []

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def sync(self) -> None:
        """Apply deferred holds, so the cluster shows this call's placements."""
        deferred, self._deferred = self._deferred, []
        hold = self.cluster.hold
        for node_id, amount in deferred:
            hold(node_id, amount)

    def close(self) -> None:
        """Undo the tentative holds (idempotent; a nested ledger leaves them to its owner)."""
        self._deferred = []
        if self.owner:
            self.owner = False
            self.cluster.rollback()

    # queries ---------------------------------------------------------------------
    def free(self, node: NodeInfo) -> Mapping[str, float]:
        """The node's free resources less what this call already placed there."""
        if self._deferred:
            self.sync()
        return self.cluster.node(node.id).free

    def fits(self, task: TaskInfo, node: NodeInfo) -> bool:
        """True when ``task`` still fits on ``node`` in this call."""
        return task.request.fits(self.free(node))

    def candidates(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Nodes where ``task`` fits given this call's placements, in ``order``."""
        if self._deferred:
            self.sync()
        yield from self.cluster.fitting(task, order)

    def pick(self, task: TaskInfo, order: FitOrder = "id") -> NodeInfo | None:
        """The first node where ``task`` fits now (in ``order``), or None."""
        blocked = self.blocked
        shape = (task.request, task.accelerator_type)
        if blocked and shape in blocked:
            return None
        if self._deferred:
            self.sync()
        node = self.cluster.first_fitting(task, order)
        if node is None:
            blocked.add(shape)
        return node

    # recording -----------------------------------------------------------------
    def take(self, task: TaskInfo, node_id: str) -> Place:
        """Record ``task`` as placed on ``node_id`` and return the decision."""
        self._deferred.append((node_id, task.request))
        p = Place(task.id, node_id)
        self.placed.append(p)
        return p

    def hold(self, node_id: str, amount: Mapping[str, float]) -> None:
        """Keep ``amount`` on ``node_id`` out of reach for the rest of this call."""
        self._deferred.append((node_id, amount))

    def place(self, task: TaskInfo, order: FitOrder = "id") -> Place | None:
        """``pick`` then ``take``: place ``task`` on its first fitting node, or None."""
        node = self.pick(task, order)
        return None if node is None else self.take(task, node.id)


def fifo_key(task: TaskInfo) -> tuple[float, int]:
    """Submission order: ``(submitted_at, id)``."""
    return (task.submitted_at, task.id)


def priority_key(task: TaskInfo) -> tuple[int, float, int]:
    """Higher priority first, then submission order."""
    return (-task.priority, task.submitted_at, task.id)


def tasks_by_node(cluster: ClusterState) -> dict[str, list[TaskInfo]]:
    """Running tasks per node id (from ``running()`` and ``placement_of``)."""
    out: dict[str, list[TaskInfo]] = {}
    for t in cluster.running():
        nid = cluster.placement_of(t.id)
        if nid is not None:
            out.setdefault(nid, []).append(t)
    return out
