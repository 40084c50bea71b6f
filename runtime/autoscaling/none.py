"""The autoscaler that never scales (the default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtime.cluster import ClusterState, NodeType, ScaleDecision, TaskInfo

__all__ = ["NoAutoscaling"]


class NoAutoscaling:
    """Never adds or removes nodes."""

    name = "none"

    def decide(self, unmet: Sequence[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, NodeType]) -> ScaleDecision:
        """Always the empty decision."""
        return ScaleDecision()
