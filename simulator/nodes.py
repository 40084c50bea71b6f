"""Node types built from devices: resources, labels, cost, boot latency, counts, spot.

A :class:`NodeSpec` is a template (plain frozen data). Its resources are
``{"CPU": cpus, <accelerator kind>: accelerators, "memory": memory}`` and its
label ``accelerator_type`` names the accelerator model, so the runtime's policies
and autoscalers see it exactly like a real node (:meth:`NodeSpec.node_type`
gives the runtime's :class:`~runtime.autoscaling.NodeType`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.autoscaling.base import NodeType
from runtime.policies.base import ACCELERATOR_LABEL
from runtime.resources import Resources
from simulator.devices import DEVICES, DeviceType, check_number

__all__ = ["NodeSpec"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node type: ``accelerators`` devices of ``accelerator`` plus ``cpus`` CPU cores.

    ``count`` nodes exist at the start; an autoscaler may keep between
    ``min_count`` and ``max_count`` (None: exactly ``count``). ``cost_per_hour`` is the node's base cost
    (the devices' costs are added). ``spot`` nodes are preempted after an
    exponential time of mean ``spot_mtbp`` seconds, ``spot_notice`` seconds after
    a notice. ``mtbf`` (seconds) overrides the devices' failure rates; a failed
    node comes back after ``repair_time``.
    """

    name: str
    accelerator: DeviceType | None = None
    accelerators: int = 0
    cpus: float = 8.0
    memory: float = 0.0
    cpu_device: DeviceType = DEVICES["cpu"]
    extra: Mapping[str, float] = field(default_factory=dict)
    cost_per_hour: float = 0.0
    boot_latency: float = 0.0
    count: int = 1
    min_count: int = 0
    max_count: int | None = None
    spot: bool = False
    spot_mtbp: float = 3600.0
    spot_notice: float = 30.0
    mtbf: float | None = None
    repair_time: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"NodeSpec: name must be a non-empty string without '/', "
                             f"got {self.name!r}")
        where = f"NodeSpec {self.name!r}"
        if self.accelerator is not None and not isinstance(self.accelerator, DeviceType):
            raise TypeError(f"{where}: accelerator must be a DeviceType, got {self.accelerator!r}")
        for fname in ("accelerators", "count", "min_count"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{where}: {fname} must be an int >= 0, got {v!r}")
        if self.accelerator is not None and self.accelerators == 0:
            raise ValueError(f"{where}: accelerators must be >= 1 when accelerator is set, got 0")
        check_number(where, "cpus", self.cpus)
        check_number(where, "memory", self.memory)
        check_number(where, "cost_per_hour", self.cost_per_hour)
        check_number(where, "boot_latency", self.boot_latency)
        check_number(where, "spot_mtbp", self.spot_mtbp, strict=True)
        check_number(where, "spot_notice", self.spot_notice)
        check_number(where, "repair_time", self.repair_time)
        if self.mtbf is not None:
            check_number(where, "mtbf", self.mtbf, strict=True)
        Resources(self.extra, where=f"{where} extra")
        mx = self.max_count
        if mx is not None and (isinstance(mx, bool) or not isinstance(mx, int) or mx < 0):
            raise ValueError(f"{where}: max_count must be an int >= 0 or None, got {mx!r}")
        if mx is not None and not (self.min_count <= mx and self.count <= mx):
            raise ValueError(f"{where}: max_count={mx!r} is below min_count={self.min_count} "
                             f"or count={self.count}")

    # Derived views ------------------------------------------------------------
    @property
    def resources(self) -> Resources:
        """Total resources of one node of this type."""
        res: dict[str, float] = {"CPU": self.cpus, **self.extra}
        if self.accelerator is not None:
            res[self.accelerator.kind] = res.get(self.accelerator.kind, 0.0) + self.accelerators
        if self.memory:
            res["memory"] = self.memory
        return Resources(res, where=f"NodeSpec {self.name!r} resources")

    @property
    def labels(self) -> dict[str, str]:
        """Node labels (``accelerator_type`` = the accelerator model)."""
        return {ACCELERATOR_LABEL: self.accelerator.model} if self.accelerator else {}

    @property
    def model(self) -> str:
        """The accelerator model, or the CPU model for CPU-only nodes."""
        return self.accelerator.model if self.accelerator else self.cpu_device.model

    @property
    def hourly_cost(self) -> float:
        """Base cost plus the devices' cost, per hour."""
        acc = self.accelerator.cost_per_hour * self.accelerators if self.accelerator else 0.0
        return self.cost_per_hour + acc

    @property
    def failure_mtbf(self) -> float | None:
        """The node's MTBF: ``mtbf`` or, from the devices' rates, 1 / sum of rates."""
        if self.mtbf is not None:
            return self.mtbf
        rate = 0.0
        if self.accelerator is not None and self.accelerator.mtbf:
            rate += self.accelerators / self.accelerator.mtbf
        if self.cpu_device.mtbf:
            rate += 1.0 / self.cpu_device.mtbf
        return 1.0 / rate if rate else None

    def speed_for(self, task_kind: str, request: Mapping[str, float]) -> float:
        """Speed of a task on this node: the accelerator's when it asks for one, else the CPU's."""
        acc = self.accelerator
        if acc is not None and request.get(acc.kind, 0.0) > 0:
            return acc.speed_for(task_kind)
        return self.cpu_device.speed_for(task_kind)

    def node_type(self) -> NodeType:
        """The runtime's :class:`NodeType` for autoscalers and feasibility checks."""
        return NodeType(
            name=self.name, resources=self.resources, labels=self.labels,
            cost_per_hour=self.hourly_cost, boot_latency=self.boot_latency,
            min_count=self.min_count,
            max_count=self.max_count if self.max_count is not None else self.count,
            spot=self.spot,
        )
