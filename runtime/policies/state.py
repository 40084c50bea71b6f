"""A mutable, indexed implementation of :class:`ClusterState` that backends share.

Backends own one ``NodeIndex``: they add and remove nodes, ``allocate`` and
``release`` resources as tasks start and end; policies only read it. Nodes are
grouped by *shape* (total resources + accelerator label), so ``fitting`` skips
whole groups that could never host a request, and by free capacity within a
group. Capacity never goes negative: ``allocate`` asserts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from runtime.policies.base import (
    ACCELERATOR_LABEL,
    FitOrder,
    NodeInfo,
    NodeState,
    TaskInfo,
    free_score,
)
from runtime.resources import EPSILON, Resources

__all__ = ["NodeIndex", "SpeedTable"]

SpeedTable = Mapping[str, Mapping[str, float]]
"""``{task kind: {device model: relative speed}}``; missing entries mean 1.0."""


class _Group:
    """Nodes of one shape (same total resources and accelerator)."""

    __slots__ = ("total", "accel", "ids")

    def __init__(self, total: Resources, accel: str | None) -> None:
        self.total = total
        self.accel = accel
        self.ids: dict[str, None] = {}  # insertion-ordered set


class NodeIndex:
    """The cluster's nodes and running tasks, with index-backed queries for policies."""

    def __init__(self, speeds: SpeedTable | None = None, clock: Any = None) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._groups: dict[tuple[Resources, str | None], _Group] = {}
        self._running: dict[int, tuple[TaskInfo, str]] = {}
        self.speeds: dict[str, dict[str, float]] = {k: dict(v) for k, v in (speeds or {}).items()}
        self._clock = clock
        self._now = 0.0
        self.version = 0  # bumped on every change; lets callers cache

    # ClusterState -----------------------------------------------------------
    @property
    def now(self) -> float:
        """Current time (from the clock callable when given)."""
        return self._clock() if self._clock is not None else self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value

    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        return self._nodes[node_id]

    def nodes(self) -> list[NodeInfo]:
        """Every node, in id order."""
        return [self._nodes[k] for k in sorted(self._nodes)]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Up nodes where ``task`` fits now, in ``order`` (see ``ClusterState.fitting``)."""
        if order == "id":
            yield from sorted(self._fitting(task), key=lambda n: n.id)
        elif order == "tightest":
            yield from sorted(self._fitting(task), key=lambda n: (free_score(n), n.id))
        elif order == "loosest":
            yield from sorted(self._fitting(task), key=lambda n: (-free_score(n), n.id))
        else:
            raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")

    def _fitting(self, task: TaskInfo) -> Iterator[NodeInfo]:
        req = task.request
        for (total, accel), group in self._groups.items():
            if task.accelerator_type is not None and accel != task.accelerator_type:
                continue
            if not req.fits(total):
                continue
            for nid in group.ids:
                node = self._nodes[nid]
                if node.state == "up" and req.fits(node.free):
                    yield node

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of the task's kind on the node's accelerator model (1.0 default)."""
        row = self.speeds.get(task.task_kind)
        if not row:
            return 1.0
        model = node.labels.get(ACCELERATOR_LABEL) or node.node_type
        return row.get(model, row.get(node.node_type, 1.0))

    def running(self) -> list[TaskInfo]:
        """Tasks holding resources, in id order."""
        return [self._running[k][0] for k in sorted(self._running)]

    def placement_of(self, task_id: int) -> str | None:
        """Node of a running task, or None."""
        entry = self._running.get(task_id)
        return entry[1] if entry else None

    # Mutation (backends only) -------------------------------------------------
    def add_node(self, node_id: str, node_type: str, total: Mapping[str, float],
                 labels: Mapping[str, str] | None = None, state: NodeState = "up",
                 cost_per_hour: float = 0.0) -> NodeInfo:
        """Register a node (all resources free)."""
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} already exists")
        tot = total if isinstance(total, Resources) else Resources(total, where="node total")
        labels = dict(labels or {})
        info = NodeInfo(node_id, node_type, tot, tot, labels, state, cost_per_hour)
        self._nodes[node_id] = info
        key = (tot, labels.get(ACCELERATOR_LABEL))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(tot, key[1])
        group.ids[node_id] = None
        self.version += 1
        return info

    def remove_node(self, node_id: str) -> list[int]:
        """Forget a node; returns the ids of tasks that were running on it (now released)."""
        info = self._nodes.pop(node_id)
        key = (info.total, info.labels.get(ACCELERATOR_LABEL))
        group = self._groups[key]
        group.ids.pop(node_id, None)
        if not group.ids:
            del self._groups[key]
        lost = sorted(t for t, (_, n) in self._running.items() if n == node_id)
        for t in lost:
            del self._running[t]
        self.version += 1
        return lost

    def set_state(self, node_id: str, state: NodeState) -> None:
        """Change a node's state (booting -> up -> draining -> down)."""
        info = self._nodes[node_id]
        self._nodes[node_id] = NodeInfo(info.id, info.node_type, info.total, info.free,
                                        info.labels, state, info.cost_per_hour)
        self.version += 1

    def allocate(self, task: TaskInfo, node_id: str, amount: Mapping[str, float] | None = None) -> None:
        """Take ``amount`` (default: the task's request) on ``node_id`` for ``task``."""
        info = self._nodes[node_id]
        amount = task.request if amount is None else amount
        free = info.free - amount  # raises on negative capacity
        assert all(v >= -EPSILON for v in free.values())
        self._nodes[node_id] = NodeInfo(info.id, info.node_type, info.total, free,
                                        info.labels, info.state, info.cost_per_hour)
        if task.id not in self._running:
            self._running[task.id] = (task, node_id)
        self.version += 1

    def release(self, task_id: int, amount: Mapping[str, float] | None = None, *,
                keep_running: bool = False) -> str | None:
        """Give back a task's resources (or ``amount`` of them); returns its node."""
        entry = self._running.get(task_id)
        if entry is None:
            return None
        task, node_id = entry
        if not keep_running:
            del self._running[task_id]
        info = self._nodes.get(node_id)
        if info is None:
            return node_id
        amount = task.request if amount is None else amount
        free = info.free + amount
        if not free.fits(info.total) or any(free.get(k) > info.total.get(k) + EPSILON for k in free):
            raise AssertionError(f"node {node_id} free {free} exceeds total {info.total}")
        self._nodes[node_id] = NodeInfo(info.id, info.node_type, info.total, free,
                                        info.labels, info.state, info.cost_per_hour)
        self.version += 1
        return node_id

    def reacquire(self, task_id: int, amount: Mapping[str, float]) -> None:
        """Take back resources a blocked task lent (``amount``) on its own node."""
        task, node_id = self._running[task_id]
        info = self._nodes[node_id]
        free = info.free - amount
        self._nodes[node_id] = NodeInfo(info.id, info.node_type, info.total, free,
                                        info.labels, info.state, info.cost_per_hour)
        self.version += 1

    def shapes(self) -> Iterable[tuple[str, Resources, Mapping[str, str]]]:
        """``(node id, total, labels)`` of every node (for feasibility checks)."""
        return [(n.id, n.total, n.labels) for n in self.nodes()]

    def totals(self) -> dict[str, float]:
        """Sum of total resources over up nodes."""
        out: dict[str, float] = {}
        for n in self._nodes.values():
            if n.state in ("up", "draining"):
                for k, v in n.total.items():
                    out[k] = out.get(k, 0.0) + v
        return dict(sorted(out.items()))

    def available(self) -> dict[str, float]:
        """Sum of free resources over up nodes."""
        out: dict[str, float] = {}
        for n in self._nodes.values():
            if n.state == "up":
                for k, v in n.free.items():
                    out[k] = out.get(k, 0.0) + v
        return dict(sorted(out.items()))
