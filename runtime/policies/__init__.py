"""Scheduling policies: one module per family; all follow :mod:`runtime.policies.base`.

``get_policy("fifo")`` builds a built-in by name; any object with a
``schedule(pending, cluster)`` method is a policy too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.policies.base import (
    ClusterState,
    Decision,
    NodeInfo,
    Place,
    Preempt,
    SchedulingPolicy,
    TaskInfo,
    check_placement,
)
from runtime.policies.fifo import FirstFit
from runtime.policies.state import NodeIndex

__all__ = [
    "ClusterState",
    "Decision",
    "FirstFit",
    "NodeIndex",
    "NodeInfo",
    "Place",
    "Preempt",
    "SchedulingPolicy",
    "TaskInfo",
    "check_placement",
    "get_policy",
    "POLICIES",
]

#: Built-in policies by name (modules register theirs here).
POLICIES: dict[str, Callable[..., Any]] = {"fifo": FirstFit, "first_fit": FirstFit}


def get_policy(spec: Any = None, **kwargs: Any) -> SchedulingPolicy:
    """A policy from a name (``"fifo"``, ``"best_fit"``, ...), an instance, or None (default)."""
    if spec is None:
        return FirstFit()
    if isinstance(spec, str):
        factory = POLICIES.get(spec)
        if factory is None:
            raise ValueError(
                f"policy: unknown policy name {spec!r}; choose one of {', '.join(sorted(POLICIES))} "
                f"or pass an object with a schedule(pending, cluster) method"
            )
        return factory(**kwargs)
    if not callable(getattr(spec, "schedule", None)):
        raise TypeError(
            f"policy: expected a policy name or an object with a schedule(pending, cluster) "
            f"method, got {spec!r} ({type(spec).__name__})"
        )
    return spec
