"""The one description of a node type, and how users write one.

A :class:`NodeType` is a template for nodes: resources, labels, cost, boot latency,
count limits and, where known, its devices (the accelerator model with its speed
per task kind, the CPU model) and fault model (spot preemption, MTBF). The
simulator builds its nodes from it, the backends their virtual or real nodes, the
autoscalers reason about it. ``init(nodes=[...])`` takes NodeType objects or dicts
such as ``{"name": "a100", "resources": {"CPU": 8, "GPU": 4},
"accelerator_type": "A100", "count": 2}`` (:func:`parse_nodes`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.cluster.devices import DeviceType
from runtime.cluster.types import ACCELERATOR_LABEL
from runtime.resources import Resources

__all__ = ["NodeType", "parse_nodes", "node_types_by_name", "with_changes", "NODE_DICT_KEYS"]


def _number(where: str, name: str, v: object, *, strict: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 \
            or (strict and v == 0):
        raise ValueError(f"{where}: {name} must be a number {'>' if strict else '>='} 0, "
                         f"got {v!r}")


@dataclass(frozen=True, slots=True)
class NodeType:
    """A template for nodes: resources, labels, cost, boot latency, counts, devices, faults.

    ``count`` nodes exist at the start; an autoscaler keeps between ``min_count`` and
    ``max_count``. ``accelerator`` / ``cpu_device`` (optional) give the speed of each
    task kind on the node's devices; ``spot`` nodes are reclaimed after an exponential
    time of mean ``spot_mtbp`` seconds, ``spot_notice`` seconds after a notice; a node
    with an ``mtbf`` fails and comes back after ``repair_time`` (the simulator models
    these; real backends report what really happens).
    """

    name: str
    resources: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    cost_per_hour: float = 0.0
    boot_latency: float = 0.0
    min_count: int = 0
    max_count: int = 1_000_000
    spot: bool = False
    count: int = 1
    accelerator: DeviceType | None = None
    cpu_device: DeviceType | None = None
    spot_mtbp: float = 3600.0
    spot_notice: float = 30.0
    mtbf: float | None = None
    repair_time: float = 300.0

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"NodeType.name must be a non-empty string, got {self.name!r}")
        where = f"NodeType {self.name!r}"
        if not isinstance(self.resources, Resources):
            object.__setattr__(self, "resources",
                               Resources(self.resources, where=f"{where} resources"))
        if not isinstance(self.labels, Mapping):
            raise TypeError(f"{where}: labels must be a mapping, got {self.labels!r}")
        object.__setattr__(self, "labels", dict(self.labels))
        for fname in ("cost_per_hour", "boot_latency", "spot_notice", "repair_time"):
            _number(where, fname, getattr(self, fname))
        _number(where, "spot_mtbp", self.spot_mtbp, strict=True)
        if self.mtbf is not None:
            _number(where, "mtbf", self.mtbf, strict=True)
        for fname in ("min_count", "max_count", "count"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{where}: {fname} must be an int >= 0, got {v!r}")
        if self.min_count > self.max_count:
            raise ValueError(f"{where}: min_count {self.min_count} > max_count {self.max_count}")
        for fname in ("accelerator", "cpu_device"):
            v = getattr(self, fname)
            if v is not None and not isinstance(v, DeviceType):
                raise TypeError(f"{where}: {fname} must be a DeviceType or None, got {v!r}")

    @property
    def accelerator_type(self) -> str | None:
        """The accelerator model label of nodes of this type, if any."""
        return self.labels.get(ACCELERATOR_LABEL)

    @property
    def model(self) -> str:
        """The accelerator model, else the CPU model, else the node type's name."""
        if self.accelerator is not None:
            return self.accelerator.model
        return self.cpu_device.model if self.cpu_device is not None else self.name

    @property
    def hourly_cost(self) -> float:
        """Cost of one node per hour (the same as ``cost_per_hour``)."""
        return self.cost_per_hour

    @property
    def failure_mtbf(self) -> float | None:
        """The node's MTBF: ``mtbf`` or, from the devices' rates, 1 / sum of rates."""
        if self.mtbf is not None:
            return self.mtbf
        rate = 0.0
        acc = self.accelerator
        if acc is not None and acc.mtbf:
            rate += self.resources.get(acc.kind, 0.0) / acc.mtbf
        if self.cpu_device is not None and self.cpu_device.mtbf:
            rate += 1.0 / self.cpu_device.mtbf
        return 1.0 / rate if rate else None

    def speed_for(self, task_kind: str, request: Mapping[str, float]) -> float | None:
        """Speed of a task on this node type from its devices (the accelerator's when the
        request asks for its kind, else the CPU's), or None when no device says."""
        acc = self.accelerator
        if acc is not None and request.get(acc.kind, 0.0) > 0:
            return acc.speed_for(task_kind)
        if self.cpu_device is not None:
            return self.cpu_device.speed_for(task_kind)
        return None

    def shape(self) -> tuple[str, Resources, Mapping[str, str]]:
        """``(name, resources, labels)``, as feasibility checks take it."""
        return (self.name, self.resources, self.labels)


def with_changes(nt: NodeType, **changes: Any) -> NodeType:
    """A plain :class:`NodeType` like ``nt`` (which may be a subclass such as the
    simulator's ``NodeSpec``) with ``changes`` applied."""
    import dataclasses

    kw = {f.name: getattr(nt, f.name) for f in dataclasses.fields(NodeType)}
    kw.update(changes)
    return NodeType(**kw)


NODE_DICT_KEYS = ("name", "node_type", "resources", "labels", "accelerator_type", "count",
                  "cost_per_hour", "boot_latency", "min_count", "max_count", "spot",
                  "num_cpus", "num_gpus")


def _from_dict(i: int, d: Mapping[str, Any]) -> NodeType:
    unknown = sorted(set(d) - set(NODE_DICT_KEYS))
    if unknown:
        raise TypeError(f"nodes[{i}]: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"accepted: {', '.join(NODE_DICT_KEYS)}")
    name = d.get("name") or d.get("node_type") or f"node-type-{i}"
    res = dict(d.get("resources") or {})
    if d.get("num_cpus") is not None:
        res["CPU"] = d["num_cpus"]
    if d.get("num_gpus") is not None:
        res["GPU"] = d["num_gpus"]
    labels = dict(d.get("labels") or {})
    if d.get("accelerator_type"):
        labels[ACCELERATOR_LABEL] = d["accelerator_type"]
    count = d.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"nodes[{i}].count={count!r}: expected an int >= 0")
    max_count = d.get("max_count", max(count, 1_000_000 if "max_count" not in d else count))
    return NodeType(
        name=name, resources=res, labels=labels,  # type: ignore[arg-type]
        cost_per_hour=d.get("cost_per_hour", 0.0), boot_latency=d.get("boot_latency", 0.0),
        min_count=d.get("min_count", 0), max_count=max_count, spot=bool(d.get("spot", False)),
        count=count,
    )


def parse_nodes(
    nodes: Sequence[NodeType | Mapping[str, Any]] | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: Mapping[str, float] | None = None,
    default_cpus: float | None = None,
) -> list[NodeType]:
    """Normalise ``nodes=`` (or the single-node keywords) into node types with counts.

    A NodeType given as is starts ``max(count, min_count)`` nodes. ``default_cpus``
    (default: ``os.cpu_count()``) is used when nothing says how many CPUs the single
    node has.
    """
    if nodes is not None:
        if num_cpus is not None or num_gpus is not None or resources:
            raise TypeError("pass either nodes=[...] or num_cpus/num_gpus/resources, not both")
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
            raise TypeError(f"nodes={nodes!r}: expected a list of node types or dicts")
        out: list[NodeType] = []
        for i, item in enumerate(nodes):
            if isinstance(item, NodeType):
                n = max(item.count, item.min_count)
                out.append(item if n == item.count else with_changes(item, count=n))
            elif isinstance(item, Mapping):
                out.append(_from_dict(i, item))
            else:
                raise TypeError(f"nodes[{i}]={item!r}: expected a NodeType or a dict")
        names = [t.name for t in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"nodes: node type name(s) {', '.join(dup)} used twice")
        return out
    res = dict(resources or {})
    for key in ("CPU", "GPU"):
        if key in res:
            raise ValueError(f"resources={dict(resources or {})!r}: use num_cpus=/num_gpus= "
                             f"for {key!r}")
    cpus = num_cpus if num_cpus is not None else (default_cpus or os.cpu_count() or 1)
    res["CPU"] = cpus
    if num_gpus:
        res["GPU"] = num_gpus
    return [NodeType("local", res)]  # type: ignore[arg-type]


def node_types_by_name(types: Sequence[NodeType],
                       extra: Sequence[NodeType | Mapping[str, Any]] = ()) -> dict[str, NodeType]:
    """Node types by name: ``types`` plus ``extra`` (types only an autoscaler adds)."""
    out = {t.name: t for t in types}
    for t in parse_nodes(list(extra)) if extra else []:
        out[t.name] = t
    return out
