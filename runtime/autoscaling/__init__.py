"""Autoscaling policies: recommend node additions/removals; the control plane acts.

Like Dask's ``AdaptiveCore.recommendations``: a policy only *recommends* (a
:class:`~runtime.cluster.ScaleDecision`); the control plane's scale planner
validates and clamps it and a backend or the simulator carries it out. Policies
see immutable values, so they are tested without any cluster at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.autoscaling.demand import DemandAutoscaler
from runtime.autoscaling.none import NoAutoscaling
from runtime.autoscaling.target import TargetUtilization
from runtime.cluster import AutoscalingPolicy, NodeType, ScaleDecision

__all__ = ["AutoscalingPolicy", "DemandAutoscaler", "NoAutoscaling", "NodeType",
           "ScaleDecision", "TargetUtilization", "get_autoscaler", "AUTOSCALERS"]

#: Built-in autoscalers by name (modules register theirs here).
AUTOSCALERS: dict[str, Callable[..., Any]] = {
    "none": NoAutoscaling,
    "demand": DemandAutoscaler,
    "target": TargetUtilization,
}


def get_autoscaler(spec: Any = None, **kwargs: Any) -> AutoscalingPolicy:
    """An autoscaler from a name (``"none"``, ``"demand"``, ...), an instance, or None."""
    if spec is None:
        return NoAutoscaling()
    if isinstance(spec, str):
        factory = AUTOSCALERS.get(spec)
        if factory is None:
            raise ValueError(
                f"autoscaler: unknown autoscaler name {spec!r}; choose one of "
                f"{', '.join(sorted(AUTOSCALERS))} or pass an object with a decide() method"
            )
        return factory(**kwargs)
    if isinstance(spec, type) and callable(getattr(spec, "decide", None)):
        return spec(**kwargs)
    if not callable(getattr(spec, "decide", None)):
        raise TypeError(f"autoscaler: expected a name or an object with a "
                        f"decide(unmet, cluster, node_types) method, got {spec!r}")
    return spec
