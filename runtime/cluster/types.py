"""The values policies, autoscalers, backends and the simulator exchange.

Everything here is immutable: a policy sees :class:`TaskInfo` and
:class:`NodeInfo` values and returns :class:`Place` / :class:`Preempt`
decisions; an autoscaler returns a :class:`ScaleDecision`. Nothing here knows
who carries the decisions out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runtime.resources import Resources

__all__ = [
    "ACCELERATOR_LABEL",
    "NodeState",
    "NODE_STATES",
    "FitOrder",
    "FIT_ORDERS",
    "TaskInfo",
    "NodeInfo",
    "GroupInfo",
    "Place",
    "Preempt",
    "Decision",
    "ScaleDecision",
]

#: The node label that names its accelerator model (matched by ``accelerator_type``).
ACCELERATOR_LABEL = "accelerator_type"

NodeState = Literal["booting", "up", "draining", "down"]
#: Node states in the order of a node's life.
NODE_STATES: tuple[NodeState, ...] = ("booting", "up", "draining", "down")

FitOrder = Literal["id", "tightest", "loosest"]
#: The orders ``ClusterState.fitting`` knows.
FIT_ORDERS: tuple[FitOrder, ...] = ("id", "tightest", "loosest")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a policy may know about a pending task."""

    id: int
    name: str
    request: Resources
    kind: str = ""  # keys the throughput matrix; defaults to the name
    accelerator_type: str | None = None
    tenant: str = "default"
    priority: int = 0
    submitted_at: float = 0.0
    duration_hint: float | None = None  # expected run time, when known (backfill uses it)

    @property
    def task_kind(self) -> str:
        """The key into speed tables: ``kind`` or, when empty, ``name``."""
        return self.kind or self.name


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a policy may know about one node."""

    id: str
    node_type: str
    total: Resources
    free: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    state: NodeState = "up"
    cost_per_hour: float = 0.0

    @property
    def accelerator_type(self) -> str | None:
        """The node's accelerator model label, if any."""
        return self.labels.get(ACCELERATOR_LABEL)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """Nodes of one shape (node type, total resources, accelerator, cost), summed.

    ``key`` names the group in ``ClusterState.first_fitting(task, order, group=key)``;
    ``counts`` has the number of nodes per state, ``used`` what running tasks hold on
    its up nodes, ``sample`` the id of one of its nodes (all of them are alike).
    """

    key: int
    node_type: str
    total: Resources
    labels: Mapping[str, str]
    cost_per_hour: float
    counts: Mapping[str, int]
    used: Mapping[str, float]
    sample: str

    @property
    def accelerator_type(self) -> str | None:
        """The accelerator model label of the group's nodes, if any."""
        return self.labels.get(ACCELERATOR_LABEL)

    def count(self, *states: str) -> int:
        """Nodes of the group in ``states`` (all states when none is given)."""
        return sum(v for s, v in self.counts.items() if not states or s in states)


@dataclass(frozen=True, slots=True)
class Place:
    """Decision: start ``task`` on ``node``."""

    task: int
    node: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Decision: stop running ``task`` (it goes back to pending, or is retried)."""

    task: int
    reason: str = "preempted"


Decision = Place | Preempt


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """What to add (count per node type), what to remove (node ids), and what can never fit."""

    add: Mapping[str, int] = field(default_factory=dict)
    remove: Sequence[str] = ()
    infeasible: Sequence[int] = ()  # task ids no node type can host (reported, never launched)
    reason: str = ""

    @property
    def empty(self) -> bool:
        """True when the decision changes nothing."""
        return not self.add and not self.remove
