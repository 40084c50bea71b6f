"""What one ``schedule`` call has handed out so far, so no slot is given twice.

Every built-in policy places tasks through a :class:`Ledger`; user policies may
too. On a :class:`~runtime.policies.state.NodeIndex` the ledger takes tentative
holds on the index itself, so ``fitting`` stays exact (and O(log n)) within the
call, and rolls them back, bit for bit, when the call ends. On any other
``ClusterState`` it keeps its own tally and filters ``fitting``'s output (exact
placement and order, at O(nodes used so far) per pick).

**Fast-path hooks** (optional; a ClusterState may implement them, as NodeIndex and
the simulator's ``SimClusterState`` do): ``_undo`` (None outside a ``schedule``
call), ``_hold(node_id, amount)`` (take ``amount`` tentatively, so ``fitting``
reflects it) and ``_rollback()`` (restore every hold, set ``_undo`` back to None).
With them the ledger holds on the state itself instead of keeping an overlay.
``first_fitting(task, order) -> NodeInfo | None`` (the first node ``fitting``
would yield, without building a generator) is used by ``pick`` when present.
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

    On a cluster that is not a NodeIndex, nodes used in this call move to a small
    private NodeIndex (the *overlay*, with their reduced free room), and ``pick``
    keeps one cursor per (request, order) over ``cluster.fitting`` that skips
    them: each pick costs O(log) amortised, and the order stays exact.
    """

    def __init__(self, cluster: ClusterState) -> None:
        self.cluster = cluster
        self.native = isinstance(cluster, NodeIndex) and cluster._undo is None
        #: holds go on the cluster itself (NodeIndex, or any state with the hooks)
        self.holds = self.native or _has_hooks(cluster)
        self._first = getattr(cluster, "first_fitting", None) if self.holds else None
        self.blocked: set[tuple[Resources, str | None]] = set()
        self.placed: list[Place] = []
        self._deferred: list[tuple[str, Mapping[str, float]]] = []
        self._overlay: NodeIndex | None = None  # generic path: nodes used in this call
        self._cursors: dict[tuple[Resources, str | None, str], _Cursor] = {}
        if self.holds:
            cluster._undo = []  # type: ignore[union-attr]

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def overlay(self) -> NodeIndex:
        """Nodes used in this call, with their reduced free room (generic path only)."""
        if self._overlay is None:
            self._overlay = NodeIndex()
        return self._overlay

    def sync(self) -> None:
        """Apply deferred holds, so the view (cluster or overlay) shows this call's placements."""
        deferred, self._deferred = self._deferred, []
        if self.holds:
            for node_id, amount in deferred:
                self.cluster._hold(node_id, amount)  # type: ignore[union-attr]
            return
        ov = self.overlay
        for node_id, amount in deferred:
            if node_id not in ov:
                base = self.cluster.node(node_id)
                ov.add_node(node_id, base.node_type, base.total, base.labels, "up",
                            base.cost_per_hour)
                ov._set_free(ov.node(node_id), base.free if isinstance(base.free, Resources)
                             else Resources(base.free))
            info = ov.node(node_id)
            ov._set_free(info, info.free - amount)

    def close(self) -> None:
        """Undo the tentative holds (idempotent)."""
        self._deferred = []
        if self.holds:
            self.cluster._rollback()  # type: ignore[union-attr]
            self.native = self.holds = False

    # queries ---------------------------------------------------------------------
    def free(self, node: NodeInfo) -> Mapping[str, float]:
        """The node's free resources less what this call already placed there."""
        if self.holds:
            if self._deferred:
                self.sync()
            return self.cluster.node(node.id).free
        if self._deferred:
            self.sync()
        ov = self._overlay
        if ov is not None and node.id in ov:
            return ov.node(node.id).free
        return node.free

    def fits(self, task: TaskInfo, node: NodeInfo) -> bool:
        """True when ``task`` still fits on ``node`` in this call."""
        return task.request.fits(self.free(node))

    def candidates(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Nodes where ``task`` fits given this call's placements, in ``order``."""
        if self.holds:
            if self._deferred:
                self.sync()
            yield from self.cluster.fitting(task, order)
            return
        if self._deferred:
            self.sync()
        overlay = self._overlay
        if overlay is None or not len(overlay):
            yield from self.cluster.fitting(task, order)
            return
        key = _KEYS[order]
        rest = ((key(n), n) for n in self.cluster.fitting(task, order) if n.id not in overlay)
        used = ((key(n), n) for n in overlay.fitting(task, order))
        for _, node in heapq.merge(rest, used, key=_first):
            yield node

    def pick(self, task: TaskInfo, order: FitOrder = "id") -> NodeInfo | None:
        """The first node where ``task`` fits now (in ``order``), or None."""
        blocked = self.blocked
        if blocked and (task.request, task.accelerator_type) in blocked:
            return None
        if self._first is not None:
            if self._deferred:
                self.sync()
            node = self._first(task, order)
        elif self.holds:
            node = next(self.candidates(task, order), None)
        else:
            node = self._pick_generic(task, order)
        if node is None:
            blocked.add((task.request, task.accelerator_type))
        return node

    def _pick_generic(self, task: TaskInfo, order: str) -> NodeInfo | None:
        if self._deferred:
            self.sync()
        ck = (task.request, task.accelerator_type, order)
        cur = self._cursors.get(ck)
        if cur is None:
            if order not in _KEYS:
                raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
            cur = self._cursors[ck] = _Cursor(self.cluster.fitting(task, order))  # type: ignore[arg-type]
        ov = self._overlay
        if ov is None:
            return cur.head(None)
        head = cur.head(ov)
        used = next(ov.fitting(task, order), None)  # type: ignore[arg-type]
        if head is None or used is None:
            return used if head is None else head
        key = _KEYS[order]
        return used if key(used) < key(head) else head

    # recording -----------------------------------------------------------------
    def take(self, task: TaskInfo, node_id: str) -> Place:
        """Record ``task`` as placed on ``node_id`` and return the decision."""
        self.hold(node_id, task.request)
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


_HOOKS: dict[type, bool] = {}  # per ClusterState class: does it implement the hold hooks?


def _has_hooks(cluster: object) -> bool:
    """Whether ``cluster`` implements the ledger's hold hooks and holds nothing now."""
    if getattr(cluster, "_undo", 0) is not None:
        return False
    cls = type(cluster)
    has = _HOOKS.get(cls)
    if has is None:
        has = _HOOKS[cls] = callable(getattr(cluster, "_hold", None)) and \
            callable(getattr(cluster, "_rollback", None))
    return has


class _Cursor:
    """A lookahead over one ``cluster.fitting`` stream, skipping nodes used in this call."""

    __slots__ = ("it", "node")

    def __init__(self, it: Iterator[NodeInfo]) -> None:
        self.it = it
        self.node: NodeInfo | None = None

    def head(self, used: NodeIndex | None) -> NodeInfo | None:
        """The first node of the stream not in ``used`` (None when exhausted)."""
        node = self.node
        while node is None or (used is not None and node.id in used):
            node = next(self.it, None)
            if node is None:
                break
        self.node = node
        return node


def _first(e: tuple) -> object:  # noqa: ANN401
    return e[0]


_KEYS = {
    "id": lambda n: n.id,
    "tightest": lambda n: (score_of(n.free, n.total), n.id),
    "loosest": lambda n: (-score_of(n.free, n.total), n.id),
}


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
