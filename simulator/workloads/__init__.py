"""Workloads: arrival processes, DAGs (incl. the seed's patterns), services, QPU jobs, traces.

``get_workload(name, scale, seed)`` builds the named presets used by the CLI and
experiments (:data:`WORKLOADS`). Published traces as downloaded: :class:`PhillyTrace`
(Microsoft Philly) and :class:`AlibabaPAI` (Alibaba PAI, with its machine table
as a cluster: :func:`machine_spec_cluster`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.resources import Resources
from simulator.workloads.alibaba import AlibabaPAI, machine_spec_cluster
from simulator.workloads.arrivals import JobMix, QPUJobs, Services
from simulator.workloads.base import (
    Const,
    Dist,
    Exp,
    LogNormal,
    Merged,
    Shape,
    SimTask,
    Uniform,
    Workload,
    rng_for,
)
from simulator.workloads.dags import (
    Dag,
    DagJobs,
    different_functions,
    many_models,
    map_reduce,
    nested_tree,
)
from simulator.workloads.philly import PhillyTrace
from simulator.workloads.tracefile import CleaningStats, TraceFileError
from simulator.workloads.traces import (
    ALIBABA_PAI,
    NATIVE,
    PHILLY,
    TraceFormat,
    TraceReplay,
    write_synthetic_trace,
)

__all__ = [
    "AlibabaPAI", "CleaningStats", "PhillyTrace", "TraceFileError", "machine_spec_cluster",
    "ALIBABA_PAI", "Const", "Dag", "DagJobs", "Dist", "Exp", "JobMix", "LogNormal", "Merged",
    "NATIVE", "PHILLY", "QPUJobs", "Services", "Shape", "SimTask", "TraceFormat", "TraceReplay",
    "Uniform", "WORKLOADS", "Workload", "different_functions", "get_workload", "many_models",
    "map_reduce", "nested_tree", "rng_for", "write_synthetic_trace",
]

_CPU = Resources({"CPU": 1})
_GPU = Resources({"CPU": 1, "GPU": 1})
_GPU4 = Resources({"CPU": 4, "GPU": 4})
_TPU = Resources({"CPU": 1, "TPU": 1})


def _ml_mix(scale: int) -> Workload:
    """Training/inference/prep jobs on GPUs, TPUs and CPUs from three tenants, with SLOs."""
    shapes = [Shape(_CPU, "prep", LogNormal(30.0, 0.8), weight=3.0),
              Shape(_GPU, "train", LogNormal(300.0, 1.0), weight=2.0),
              Shape(_GPU4, "train", LogNormal(600.0, 0.8), weight=0.4),
              Shape(_GPU, "infer", LogNormal(40.0, 0.5), weight=2.0),
              Shape(_TPU, "train", LogNormal(300.0, 1.0), weight=0.8)]
    return JobMix(1000 * scale, 0.16 * scale, shapes,
                  tenants={"vision": 2.0, "nlp": 1.0, "ads": 1.0}, slo=4.0, name="ml_mix")


def _hetero_demo(scale: int) -> Workload:
    """The demo mix: ML jobs + many-models DAGs + QPU circuits (the main-job comparison)."""
    return Merged([_ml_mix(scale),
                   DagJobs(20 * scale, 0.003 * scale, many_models(4), tenants=["vision", "nlp"],
                           name="many_models_jobs"),
                   QPUJobs(60 * scale, 0.008 * scale, shots=Exp(3000.0),
                           tenants=["qlab", "chem"])], name="hetero_demo")


def _bursty(scale: int) -> Workload:
    """GPU jobs arriving in bursts of 20."""
    return JobMix(800 * scale, 0.1 * scale, [Shape(_GPU, "train", Exp(200.0)),
                                             Shape(_CPU, "prep", Exp(30.0))],
                  burst_size=20, tenants={"a": 1.0, "b": 1.0}, name="bursty")


def _dags(scale: int) -> Workload:
    """The seed's patterns as jobs: map-reduce, many models, different functions, nested."""
    return Merged([DagJobs(10 * scale, 0.01 * scale, map_reduce(16, 2), name="mapreduce"),
                   DagJobs(10 * scale, 0.01 * scale, many_models(6), name="many_models"),
                   DagJobs(10 * scale, 0.01 * scale, different_functions(4), name="difffn"),
                   DagJobs(10 * scale, 0.01 * scale, nested_tree(3, 3), name="nested")],
                  name="dags")


def _services(scale: int) -> Workload:
    """Long-lived services (model servers holding a GPU each for the whole run, and CPU
    front-ends) with batch jobs arriving around them on what is left."""
    return Merged([Services(4 * scale, {"CPU": 2, "GPU": 1}, lifetime=6 * 3600.0,
                            kind="serve", tenant="serving", name="model_servers"),
                   Services(2 * scale, {"CPU": 4}, lifetime=6 * 3600.0, kind="frontend",
                            tenant="serving", name="frontends"),
                   JobMix(600 * scale, 0.05 * scale,
                          [Shape(_GPU, "train", LogNormal(300.0, 0.8), weight=2.0),
                           Shape(_CPU, "prep", LogNormal(30.0, 0.8), weight=2.0),
                           Shape(_GPU, "infer", LogNormal(40.0, 0.5))],
                          tenants={"vision": 1.0, "nlp": 1.0}, name="batch")],
                  name="services")


#: Named workload presets: ``name -> factory(scale)``.
WORKLOADS: dict[str, Callable[[int], Workload]] = {
    "hetero_demo": _hetero_demo, "ml_mix": _ml_mix, "bursty": _bursty, "dags": _dags,
    "services": _services,
    "qpu": lambda scale: QPUJobs(200 * scale, 0.02 * scale, shots=Exp(3000.0),
                                 tenants=["qlab", "chem", "fin"]),
}


def get_workload(name: str, scale: int = 1, **kwargs: Any) -> Workload:
    """The preset ``name`` at ``scale`` (``ValueError`` listing the presets when unknown)."""
    factory = WORKLOADS.get(name)
    if factory is None:
        raise ValueError(f"workload: unknown workload {name!r}; choose one of "
                         f"{', '.join(sorted(WORKLOADS))}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"workload: scale must be an int >= 1, got {scale!r}")
    return factory(scale, **kwargs)
