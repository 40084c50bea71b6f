"""How users describe a cluster's nodes, the same way for every backend.

``init(nodes=[...])`` takes a list whose items are :class:`NodeType` objects or
dicts such as ``{"name": "a100", "resources": {"CPU": 8, "GPU": 4},
"accelerator_type": "A100", "count": 2}``. With no ``nodes``, one node is made
from ``num_cpus`` / ``num_gpus`` / ``resources`` (Ray's single-node ``init``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.autoscaling.base import NodeType
from runtime.policies.base import ACCELERATOR_LABEL

__all__ = ["NodeGroup", "parse_nodes", "node_types_by_name"]

_DICT_KEYS = ("name", "node_type", "resources", "labels", "accelerator_type", "count",
              "cost_per_hour", "boot_latency", "min_count", "max_count", "spot",
              "num_cpus", "num_gpus")


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """``count`` nodes made from ``node_type``."""

    node_type: NodeType
    count: int


def _from_dict(i: int, d: Mapping[str, Any]) -> NodeGroup:
    unknown = sorted(set(d) - set(_DICT_KEYS))
    if unknown:
        raise TypeError(f"nodes[{i}]: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"accepted: {', '.join(_DICT_KEYS)}")
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
    nt = NodeType(
        name=name, resources=res, labels=labels,  # type: ignore[arg-type]
        cost_per_hour=d.get("cost_per_hour", 0.0), boot_latency=d.get("boot_latency", 0.0),
        min_count=d.get("min_count", 0), max_count=max_count, spot=bool(d.get("spot", False)),
    )
    return NodeGroup(nt, count)


def parse_nodes(
    nodes: Sequence[NodeType | Mapping[str, Any] | NodeGroup] | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: Mapping[str, float] | None = None,
    default_cpus: float | None = None,
) -> list[NodeGroup]:
    """Normalise ``nodes=`` (or the single-node keywords) into node groups.

    ``default_cpus`` (default: ``os.cpu_count()``) is used when nothing says how
    many CPUs the single node has.
    """
    if nodes is not None:
        if num_cpus is not None or num_gpus is not None or resources:
            raise TypeError("pass either nodes=[...] or num_cpus/num_gpus/resources, not both")
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
            raise TypeError(f"nodes={nodes!r}: expected a list of node types or dicts")
        groups: list[NodeGroup] = []
        for i, item in enumerate(nodes):
            if isinstance(item, NodeGroup):
                groups.append(item)
            elif isinstance(item, NodeType):
                groups.append(NodeGroup(item, max(item.min_count, 1)))
            elif isinstance(item, Mapping):
                groups.append(_from_dict(i, item))
            else:
                raise TypeError(f"nodes[{i}]={item!r}: expected a NodeType or a dict")
        names = [g.node_type.name for g in groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"nodes: node type name(s) {', '.join(dup)} used twice")
        return groups
    res = dict(resources or {})
    for key in ("CPU", "GPU"):
        if key in res:
            raise ValueError(f"resources={dict(resources or {})!r}: use num_cpus=/num_gpus= "
                             f"for {key!r}")
    cpus = num_cpus if num_cpus is not None else (default_cpus or os.cpu_count() or 1)
    res["CPU"] = cpus
    if num_gpus:
        res["GPU"] = num_gpus
    return [NodeGroup(NodeType("local", res), 1)]  # type: ignore[arg-type]


def node_types_by_name(groups: Sequence[NodeGroup],
                       extra: Sequence[NodeType | Mapping[str, Any]] = ()) -> dict[str, NodeType]:
    """Node types by name: those of ``groups`` plus ``extra`` (autoscaler-only types)."""
    out = {g.node_type.name: g.node_type for g in groups}
    for g in parse_nodes(list(extra)) if extra else []:
        out[g.node_type.name] = g.node_type
    return out
