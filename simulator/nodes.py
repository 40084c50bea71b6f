"""Node types built from devices: :class:`NodeSpec`, the simulator's way to write a NodeType.

A ``NodeSpec`` *is* a :class:`runtime.cluster.NodeType` (the one description of a
node type every backend and the control plane use), written from its devices: its
resources are ``{"CPU": cpus, <accelerator kind>: accelerators, "memory": memory}``,
its label ``accelerator_type`` names the accelerator model and its ``cost_per_hour``
is the base cost plus the devices' costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.cluster import ACCELERATOR_LABEL, NodeType
from runtime.resources import Resources
from simulator.devices import DEVICES, DeviceType, check_number

__all__ = ["NodeSpec"]


@dataclass(frozen=True, slots=True, init=False)
class NodeSpec(NodeType):
    """A node type: ``accelerators`` devices of ``accelerator`` plus ``cpus`` CPU cores.

    ``count`` nodes exist at the start; an autoscaler may keep between ``min_count``
    and ``max_count`` (None: exactly ``count``). ``cost_per_hour`` given here is the
    node's base cost (the devices' costs are added: read ``cost_per_hour`` for the
    total and ``base_cost`` for what was given). ``spot`` nodes are preempted after
    an exponential time of mean ``spot_mtbp`` seconds, ``spot_notice`` seconds after
    a notice. ``mtbf`` (seconds) overrides the devices' failure rates; a failed node
    comes back after ``repair_time``.
    """

    accelerators: int
    cpus: float
    memory: float
    extra: Mapping[str, float]
    base_cost: float

    def __init__(self, name: str, accelerator: DeviceType | None = None, accelerators: int = 0,
                 cpus: float = 8.0, memory: float = 0.0, cpu_device: DeviceType = DEVICES["cpu"],
                 extra: Mapping[str, float] | None = None, cost_per_hour: float = 0.0,
                 boot_latency: float = 0.0, count: int = 1, min_count: int = 0,
                 max_count: int | None = None, spot: bool = False, spot_mtbp: float = 3600.0,
                 spot_notice: float = 30.0, mtbf: float | None = None,
                 repair_time: float = 300.0) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"NodeSpec: name must be a non-empty string without '/', "
                             f"got {name!r}")
        where = f"NodeSpec {name!r}"
        if accelerator is not None and not isinstance(accelerator, DeviceType):
            raise TypeError(f"{where}: accelerator must be a DeviceType, got {accelerator!r}")
        for fname, v in (("accelerators", accelerators), ("count", count),
                         ("min_count", min_count)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{where}: {fname} must be an int >= 0, got {v!r}")
        if accelerator is not None and accelerators == 0:
            raise ValueError(f"{where}: accelerators must be >= 1 when accelerator is set, got 0")
        check_number(where, "cpus", cpus)
        check_number(where, "memory", memory)
        check_number(where, "cost_per_hour", cost_per_hour)
        check_number(where, "boot_latency", boot_latency)
        check_number(where, "spot_mtbp", spot_mtbp, strict=True)
        check_number(where, "spot_notice", spot_notice)
        check_number(where, "repair_time", repair_time)
        if mtbf is not None:
            check_number(where, "mtbf", mtbf, strict=True)
        extra = dict(extra or {})
        Resources(extra, where=f"{where} extra")
        mx = max_count
        if mx is not None and (isinstance(mx, bool) or not isinstance(mx, int) or mx < 0):
            raise ValueError(f"{where}: max_count must be an int >= 0 or None, got {mx!r}")
        if mx is not None and not (min_count <= mx and count <= mx):
            raise ValueError(f"{where}: max_count={mx!r} is below min_count={min_count} "
                             f"or count={count}")
        res: dict[str, float] = {"CPU": cpus, **extra}
        if accelerator is not None:
            res[accelerator.kind] = res.get(accelerator.kind, 0.0) + accelerators
        if memory:
            res["memory"] = memory
        acc_cost = accelerator.cost_per_hour * accelerators if accelerator else 0.0
        fields: dict[str, Any] = dict(
            name=name, resources=Resources(res, where=f"{where} resources"),
            labels={ACCELERATOR_LABEL: accelerator.model} if accelerator else {},
            cost_per_hour=cost_per_hour + acc_cost, boot_latency=float(boot_latency),
            min_count=min_count, max_count=count if mx is None else mx, spot=bool(spot),
            count=count, accelerator=accelerator, cpu_device=cpu_device,
            spot_mtbp=float(spot_mtbp), spot_notice=float(spot_notice), mtbf=mtbf,
            repair_time=float(repair_time), accelerators=accelerators, cpus=float(cpus),
            memory=float(memory), extra=extra, base_cost=float(cost_per_hour))
        for k, v in fields.items():
            object.__setattr__(self, k, v)
        self._check()

    def node_type(self) -> NodeSpec:
        """The node type itself (a NodeSpec is a :class:`runtime.cluster.NodeType`)."""
        return self
