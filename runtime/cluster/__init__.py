"""The cluster vocabulary every layer speaks: tasks, nodes, node types, decisions, checks.

Policies and autoscalers (who *decide*), the control plane (the one place that asks
them and validates what they say), the backends and the simulator (who *do*) all
use these values and nothing else to talk about a cluster. This package imports
nothing of ours but :mod:`runtime.resources` and :mod:`runtime.errors`.
"""

from runtime.cluster.checks import (
    check_feasible,
    check_placement,
    free_score,
    infeasible_message,
    node_can_host,
    policy_name,
    score_of,
)
from runtime.cluster.devices import DeviceType, Window
from runtime.cluster.nodetypes import NodeType, node_types_by_name, parse_nodes
from runtime.cluster.state import AutoscalingPolicy, ClusterState, SchedulingPolicy
from runtime.cluster.types import (
    ACCELERATOR_LABEL,
    FIT_ORDERS,
    NODE_STATES,
    Decision,
    FitOrder,
    GroupInfo,
    NodeInfo,
    NodeState,
    Place,
    Preempt,
    ScaleDecision,
    TaskInfo,
)

__all__ = [
    "ACCELERATOR_LABEL",
    "AutoscalingPolicy",
    "ClusterState",
    "Decision",
    "DeviceType",
    "FIT_ORDERS",
    "FitOrder",
    "GroupInfo",
    "NODE_STATES",
    "NodeInfo",
    "NodeState",
    "NodeType",
    "Place",
    "Preempt",
    "ScaleDecision",
    "SchedulingPolicy",
    "TaskInfo",
    "Window",
    "check_feasible",
    "check_placement",
    "free_score",
    "infeasible_message",
    "node_can_host",
    "node_types_by_name",
    "parse_nodes",
    "policy_name",
    "score_of",
]
