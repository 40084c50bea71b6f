"""Small clusters and workloads shared by the simulator tests."""

from __future__ import annotations

import pytest

from runtime.resources import Resources
from simulator.cluster import ClusterConfig
from simulator.devices import DEVICES
from simulator.nodes import NodeSpec
from simulator.workloads.arrivals import JobMix
from simulator.workloads.base import Exp, Shape


def small_cluster(**overrides) -> ClusterConfig:
    """2 CPU nodes, 2 V100 nodes (2 GPUs), 1 A100 node (4 GPUs)."""
    cpu = {"cpus": 4, "count": 2, **overrides.get("cpu", {})}
    v100 = {"cpus": 4, "count": 2, **overrides.get("v100", {})}
    a100 = {"cpus": 8, "count": 1, **overrides.get("a100", {})}
    return ClusterConfig([
        NodeSpec("cpu", **cpu),
        NodeSpec("v100", DEVICES["V100"], 2, **v100),
        NodeSpec("a100", DEVICES["A100"], 4, **a100),
    ], name="small")


def mixed_jobs(n: int = 400, rate: float = 0.5, **kw) -> JobMix:
    """CPU and GPU jobs from two tenants."""
    return JobMix(n, rate, [Shape(Resources({"CPU": 1}), "prep", Exp(20.0)),
                            Shape(Resources({"CPU": 1, "GPU": 1}), "train", Exp(60.0)),
                            Shape(Resources({"CPU": 2, "GPU": 2}), "train", Exp(90.0),
                                  weight=0.3)],
                  tenants={"alice": 1.0, "bob": 1.0}, **kw)


@pytest.fixture
def cluster() -> ClusterConfig:
    """The small heterogeneous cluster."""
    return small_cluster()
