"""nbcluster's simulator: a reproducible discrete-event model of heterogeneous clusters.

Build a cluster from device and node types, pick a workload, a scheduling policy
and an autoscaler (the runtime's own objects), and run it in virtual time::

    from simulator import Simulation, demo_cluster, JobMix, Shape, Exp

    sim = Simulation(demo_cluster(), JobMix(2000, 1.0, [Shape({"CPU": 1, "GPU": 1}, "train",
                     Exp(60))]), policy="hetero", seed=1).run()
    print(sim.metrics()["jct_mean"], sim.digest())

Everything is plain data and seeded: one seed gives a byte-identical trace.
"""

from simulator.cluster import CLUSTERS, ClusterConfig, bench_cluster, demo_cluster
from simulator.devices import DEVICES, DeviceType, Window
from simulator.engine import Core, Simulation
from simulator.nodes import NodeSpec
from simulator.trace import Trace
from simulator.workloads import (
    WORKLOADS,
    Const,
    Dag,
    DagJobs,
    Exp,
    JobMix,
    LogNormal,
    Merged,
    QPUJobs,
    Services,
    Shape,
    SimTask,
    TraceFormat,
    TraceReplay,
    Uniform,
    Workload,
    get_workload,
)

__all__ = [
    "CLUSTERS", "ClusterConfig", "Const", "Core", "DEVICES", "Dag", "DagJobs", "DeviceType",
    "Exp", "JobMix", "LogNormal", "Merged", "NodeSpec", "QPUJobs", "Services", "Shape",
    "SimTask", "Simulation", "Trace", "TraceFormat", "TraceReplay",
    "Uniform", "WORKLOADS", "Window", "Workload", "bench_cluster", "demo_cluster",
    "get_workload", "simulate",
]


def simulate(cluster: ClusterConfig, workload: Workload, **options: object) -> Simulation:
    """Build a :class:`Simulation` with ``options`` (policy=, autoscaler=, seed=...) and run it."""
    until = options.pop("until", None)
    return Simulation(cluster, workload, **options).run(until)  # type: ignore[arg-type]
