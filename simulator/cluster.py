"""A cluster: node types (built from devices) with initial, min and max counts.

:class:`ClusterConfig` is plain data; the engine builds its nodes from it. The
``demo_cluster`` preset is the heterogeneous GPU/TPU/QPU cluster used by
``python -m simulator demo`` and the notebook.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from runtime.cluster import NodeType
from simulator.devices import DEVICES
from simulator.nodes import NodeSpec

__all__ = ["ClusterConfig", "demo_cluster", "bench_cluster", "CLUSTERS"]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Node types by name; nodes are named ``<type>-<index>`` (zero-padded, so ids sort)."""

    node_specs: tuple[NodeSpec, ...]
    name: str = "cluster"

    def __init__(self, node_specs: Sequence[NodeSpec], name: str = "cluster") -> None:
        specs = tuple(node_specs)
        if not specs:
            raise ValueError("ClusterConfig: node_specs must hold at least one NodeSpec, got []")
        for i, s in enumerate(specs):
            if not isinstance(s, NodeSpec):
                raise TypeError(f"ClusterConfig: node_specs[{i}] must be a NodeSpec, got {s!r}")
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"ClusterConfig: node type name(s) {', '.join(dup)} used twice")
        object.__setattr__(self, "node_specs", specs)
        object.__setattr__(self, "name", name)

    def spec(self, name: str) -> NodeSpec:
        """The node type called ``name`` (``KeyError`` naming the known ones)."""
        for s in self.node_specs:
            if s.name == name:
                return s
        raise KeyError(f"unknown node type {name!r}; known: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Node type names in declaration order."""
        return [s.name for s in self.node_specs]

    def node_types(self) -> dict[str, NodeType]:
        """The runtime's node types (what an autoscaler sees)."""
        return {s.name: s for s in self.node_specs}

    def initial_nodes(self) -> Iterator[NodeSpec]:
        """One spec per node present at time 0 (``count`` of each type)."""
        for s in self.node_specs:
            for _ in range(s.count):
                yield s

    def total_nodes(self) -> int:
        """Number of nodes at time 0."""
        return sum(s.count for s in self.node_specs)


def demo_cluster(scale: int = 1, *, autoscale: bool = False) -> ClusterConfig:
    """A small heterogeneous cluster: CPU, V100, A100, H100, TPUv4 nodes and one QPU.

    ``scale`` multiplies the node counts; ``autoscale`` lets GPU types grow to 4x.
    """
    def mx(n: int) -> int | None:
        return 4 * n if autoscale else None

    return ClusterConfig([
        NodeSpec("cpu", cpus=32, count=4 * scale, max_count=mx(4 * scale), cost_per_hour=1.2,
                 boot_latency=60.0),
        NodeSpec("v100", DEVICES["V100"], 4, cpus=16, count=2 * scale, max_count=mx(2 * scale),
                 boot_latency=120.0),
        NodeSpec("a100", DEVICES["A100"], 8, cpus=32, count=1 * scale, max_count=mx(scale),
                 boot_latency=120.0),
        NodeSpec("h100", DEVICES["H100"], 8, cpus=32, count=1 * scale, max_count=mx(scale),
                 boot_latency=180.0),
        NodeSpec("tpu", DEVICES["TPUv4"], 4, cpus=16, count=1 * scale, max_count=mx(scale),
                 boot_latency=240.0),
        NodeSpec("qpu", DEVICES["QPU27"], 1, cpus=2, count=1),
    ], name=f"demo-x{scale}")


def bench_cluster(nodes: int = 10_000) -> ClusterConfig:
    """``nodes`` heterogeneous nodes of 4 device kinds (CPU, V100/A100 GPUs, TPU), for speed runs."""
    q = max(nodes // 5, 1)
    return ClusterConfig([
        NodeSpec("cpu", cpus=32, count=nodes - 4 * q),
        NodeSpec("v100", DEVICES["V100"], 4, cpus=16, count=q),
        NodeSpec("a100", DEVICES["A100"], 8, cpus=32, count=q),
        NodeSpec("h100", DEVICES["H100"], 8, cpus=32, count=q),
        NodeSpec("tpu", DEVICES["TPUv4"], 4, cpus=16, count=q),
    ], name=f"bench-{nodes}")


#: Named cluster presets for the CLI and experiments.
CLUSTERS = {"demo": demo_cluster, "demo-autoscale": lambda: demo_cluster(autoscale=True),
            "bench": bench_cluster}
