"""Scheduling policies: one module per family; all speak :mod:`runtime.cluster`.

``get_policy("fifo")`` builds a built-in by name; any object with a
``schedule(pending, cluster)`` method is a policy too. The vocabulary they use
(``TaskInfo``, ``Place``, ``ClusterState``...) is re-exported here for convenience.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.cluster import (
    ClusterState,
    Decision,
    NodeInfo,
    Place,
    Preempt,
    SchedulingPolicy,
    TaskInfo,
    check_placement,
)
from runtime.policies.backfill import EasyBackfill
from runtime.policies.binpack import BestFit, Spread
from runtime.policies.custom import FunctionPolicy, from_function
from runtime.policies.fairness import DRF, FairShare
from runtime.policies.fifo import FirstFit
from runtime.policies.hetero import Hetero
from runtime.policies.ledger import Ledger
from runtime.policies.priority import PriorityPreempt

__all__ = [
    "BestFit",
    "ClusterState",
    "DRF",
    "Decision",
    "EasyBackfill",
    "FairShare",
    "FirstFit",
    "FunctionPolicy",
    "Hetero",
    "Ledger",
    "PriorityPreempt",
    "Spread",
    "from_function",
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
POLICIES: dict[str, Callable[..., Any]] = {
    "fifo": FirstFit,
    "first_fit": FirstFit,
    "best_fit": BestFit,
    "spread": Spread,
    "hetero": Hetero,
    "hetero_cost": lambda **kw: Hetero(per_cost=True, **kw),
    "drf": DRF,
    "fair_share": FairShare,
    "backfill": EasyBackfill,
    "priority": PriorityPreempt,
}


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
    if isinstance(spec, type) and callable(getattr(spec, "schedule", None)):
        return spec(**kwargs)
    if kwargs:
        raise TypeError(f"policy: options {sorted(kwargs)} apply only to a policy name, "
                        f"not to the object {spec!r}")
    if not callable(getattr(spec, "schedule", None)):
        if callable(spec):
            return from_function(spec)
        raise TypeError(
            f"policy: expected a policy name or an object with a schedule(pending, cluster) "
            f"method, got {spec!r} ({type(spec).__name__})"
        )
    return spec
