"""The read-only view of a cluster that policies and autoscalers get: :class:`ClusterState`.

Everything a policy or an autoscaler may use is declared here and documented;
nothing else is probed. The control plane's index
(:class:`runtime.control.ClusterIndex`) implements it for every backend and for
the simulator, so a policy decides the same way everywhere. Queries are
index-backed: taking the first fitting node costs about O(log n), not a scan.

The two members under "tentative holds" are for :class:`runtime.policies.Ledger`
(what one ``schedule`` call has handed out so far); a policy normally uses the
Ledger rather than calling them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from runtime.cluster.types import FitOrder, GroupInfo, NodeInfo, TaskInfo

__all__ = ["ClusterState", "SchedulingPolicy", "AutoscalingPolicy"]


@runtime_checkable
class ClusterState(Protocol):
    """A read-only view of the cluster at one moment (``now``)."""

    @property
    def now(self) -> float:
        """Current time: virtual in the simulator, seconds since ``init`` elsewhere."""
        ...

    # nodes ----------------------------------------------------------------------
    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        ...

    def nodes(self) -> Iterable[NodeInfo]:
        """Every node (any state), in id order."""
        ...

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Only the up nodes where ``task`` fits now (resources, accelerator, speed > 0),
        lazily, in ``order``: ``"id"``, ``"tightest"`` (least free first: best fit) or
        ``"loosest"`` (most free first: spread). A node's free *score* is the sum over its
        resources of free/total (rounded to 9 digits); ties go to the smaller id."""
        ...

    def first_fitting(self, task: TaskInfo, order: FitOrder = "id",
                      group: int | None = None) -> NodeInfo | None:
        """The first node ``fitting(task, order)`` would give (within the group with key
        ``group`` when given), or None; cheaper than building the iterator."""
        ...

    def hosts(self, task: TaskInfo) -> list[NodeInfo]:
        """Up nodes that could ever host ``task`` (their *total* fits it, the accelerator
        matches, speed > 0), in id order."""
        ...

    def groups(self, task: TaskInfo | None = None) -> list[GroupInfo]:
        """Node groups (one per node type and shape) with their counts by state and what
        is used on their up nodes; with ``task``, only groups that could ever host it."""
        ...

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of ``task``'s kind on ``node``'s devices (1.0 when unknown)."""
        ...

    # tasks holding resources ------------------------------------------------------
    def running(self) -> list[TaskInfo]:
        """Tasks holding resources now (placed and not ended), in id order."""
        ...

    def placement_of(self, task_id: int) -> str | None:
        """The node a running task holds resources on (None when not running)."""
        ...

    def started_at(self, task_id: int) -> float | None:
        """When a running task was placed (``now`` then), or None."""
        ...

    def tasks_on(self, node_id: str) -> list[TaskInfo]:
        """Running tasks on a node, in id order."""
        ...

    def tenant_usage(self) -> dict[str, dict[str, float]]:
        """Resources held by running tasks, per tenant (sorted by tenant)."""
        ...

    # sums ---------------------------------------------------------------------------
    def totals(self) -> dict[str, float]:
        """Total resources of the up and draining nodes."""
        ...

    def available(self) -> dict[str, float]:
        """Free resources of the up nodes."""
        ...

    def idle_nodes(self) -> list[tuple[str, float]]:
        """``(node id, idle since)`` of up nodes that run nothing, longest idle first."""
        ...

    # tentative holds (the Ledger's) ------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Whether holds of the current ``schedule`` call are in place."""
        ...

    def open_holds(self) -> None:
        """Start one ``schedule`` call's tentative holds: until :meth:`rollback` the
        cluster refuses changes (the backend must not act in the middle of a call)."""
        ...

    def hold(self, node_id: str, amount: Mapping[str, float]) -> NodeInfo:
        """Take ``amount`` on a node for the rest of one ``schedule`` call, so ``fitting``
        and ``node`` show it (clamped at 0); returns the node as it is now."""
        ...

    def rollback(self) -> None:
        """Undo every hold of this call, restoring the exact previous free amounts."""
        ...


class SchedulingPolicy(Protocol):
    """Decides placements; deterministic for a given input, ties broken by ids.

    Optional declarations the control plane reads: ``greedy_by_shape`` (placement
    depends only on a task's shape and its order: tasks may queue by shape and be sent
    ahead to a busy node), ``lookahead_safe`` (``schedule`` has no side effects, so it
    may be asked about a hypothetical state) and ``preemptive`` (it may return
    ``Preempt``: it is shown every pending task, every round).
    """

    name: str

    def schedule(self, pending: list[TaskInfo], cluster: ClusterState) -> Iterable[object]:
        """Return ``Place`` / ``Preempt`` decisions for some of ``pending``."""
        ...


class AutoscalingPolicy(Protocol):
    """Recommends node additions and removals; deterministic given its inputs."""

    name: str

    def decide(self, unmet: list[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, object]) -> object:
        """Return the ``ScaleDecision`` for this moment."""
        ...
