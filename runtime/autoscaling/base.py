"""The autoscaling contract: given unmet demand and node types, recommend adds/removes.

Like Dask's ``AdaptiveCore.recommendations``: the policy only *recommends*; the
simulator, the local backend or a dask cluster manager *acts*. Policies see
immutable values, so they are tested without any cluster at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.policies.base import ACCELERATOR_LABEL, ClusterState, TaskInfo
from runtime.resources import Resources

__all__ = ["NodeType", "ScaleDecision", "AutoscalingPolicy", "NoAutoscaling"]


@dataclass(frozen=True, slots=True)
class NodeType:
    """A template for nodes: resources, labels, cost, boot latency and count limits."""

    name: str
    resources: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    cost_per_hour: float = 0.0
    boot_latency: float = 0.0
    min_count: int = 0
    max_count: int = 1_000_000
    spot: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"NodeType.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.resources, Resources):
            object.__setattr__(self, "resources",
                               Resources(self.resources, where=f"NodeType {self.name!r} resources"))
        for fname in ("cost_per_hour", "boot_latency"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise ValueError(f"NodeType {self.name!r}: {fname} must be a number >= 0, got {v!r}")
        for fname in ("min_count", "max_count"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"NodeType {self.name!r}: {fname} must be an int >= 0, got {v!r}")
        if self.min_count > self.max_count:
            raise ValueError(f"NodeType {self.name!r}: min_count {self.min_count} > "
                             f"max_count {self.max_count}")

    @property
    def accelerator_type(self) -> str | None:
        """The accelerator model label of nodes of this type, if any."""
        return self.labels.get(ACCELERATOR_LABEL)

    def shape(self) -> tuple[str, Resources, Mapping[str, str]]:
        """``(name, resources, labels)``, as feasibility checks take it."""
        return (self.name, self.resources, self.labels)


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


class AutoscalingPolicy(Protocol):
    """Recommends node additions and removals; deterministic given its inputs."""

    name: str

    def decide(self, unmet: Sequence[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, NodeType]) -> ScaleDecision:
        """Return the scale decision for this moment."""
        ...


class NoAutoscaling:
    """Never adds or removes nodes."""

    name = "none"

    def decide(self, unmet: Sequence[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, NodeType]) -> ScaleDecision:
        """Always the empty decision."""
        return ScaleDecision()
