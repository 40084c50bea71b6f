"""Metric values on hand-computable runs, run invariants (Little's law) across many runs,
and long-lived services."""

from __future__ import annotations

import pytest

from runtime.resources import Resources
from simulator.cluster import ClusterConfig, demo_cluster
from simulator.devices import DEVICES
from simulator.engine import Simulation
from simulator.metrics import InvariantError, check_invariants, jain
from simulator.nodes import NodeSpec
from simulator.trace import K
from simulator.workloads import (
    WORKLOADS,
    DagJobs,
    JobMix,
    Merged,
    Services,
    Shape,
    SimTask,
    get_workload,
    map_reduce,
)
from simulator.workloads.base import Exp

from .conftest import mixed_jobs, small_cluster

pytestmark = pytest.mark.timeout(60)


def one_cpu(cpus: int = 1) -> ClusterConfig:
    """One CPU node with ``cpus`` cores, no failures configured."""
    return ClusterConfig([NodeSpec("n", cpus=cpus, count=1)], name="one")


# -- metric values -------------------------------------------------------------------
def test_jain_index_of_known_values():
    """Jain's index: 1 for equal values, 1/n when one of n gets everything, 0.9 for (1, 2)."""
    assert jain([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain([1.0, 2.0]) == pytest.approx(0.9)


def test_fairness_of_two_tenants_with_known_slowdowns():
    """One CPU, two 10 s tasks at t=0 from tenants a and b (FIFO): a's slowdown is 1,
    b waits 10 s so its slowdown is 2; Jain's index = (1+2)^2 / (2 (1+4)) = 0.9."""
    tasks = [SimTask(0, 0.0, 10.0, {"CPU": 1}, tenant="a"),
             SimTask(1, 0.0, 10.0, {"CPU": 1}, tenant="b")]
    sim = Simulation(one_cpu(), tasks, policy="fifo", failures=False).run()
    m = sim.metrics()
    assert m["tenants"] == 2
    assert m["fairness"] == pytest.approx(0.9)
    # with a second core both run at once: everyone's slowdown is 1, perfectly fair
    both = Simulation(one_cpu(2), tasks, policy="fifo", failures=False).run()
    assert both.metrics()["fairness"] == pytest.approx(1.0)


def test_slo_misses_count_late_and_failed_tasks_with_deadlines():
    """Four 10 s tasks in a row on one CPU end at 10, 20, 30, 40: deadlines 10 (met,
    exactly), 15 (missed), 100 (met), 35 (missed); an infeasible task with a deadline
    fails and counts as a miss; one without a deadline does not."""
    tasks = [SimTask(0, 0.0, 10.0, {"CPU": 1}, deadline=10.0),
             SimTask(1, 0.0, 10.0, {"CPU": 1}, deadline=15.0),
             SimTask(2, 0.0, 10.0, {"CPU": 1}, deadline=100.0),
             SimTask(3, 0.0, 10.0, {"CPU": 1}, deadline=35.0),
             SimTask(4, 0.0, 10.0, {"CPU": 1, "GPU": 1}, deadline=50.0),
             SimTask(5, 0.0, 10.0, {"CPU": 1, "GPU": 1})]
    sim = Simulation(one_cpu(), tasks, policy="fifo", failures=False).run()
    m = sim.metrics()
    assert (m["finished"], m["failed"]) == (4, 2)
    assert m["slo_tasks"] == 5
    assert m["slo_misses"] == 3


def test_jct_percentiles_of_known_jobs():
    """Jobs of 1..5 s alone plus a two-task job (0-2 s and 1-7 s) on 8 cores: JCTs are
    1, 2, 3, 4, 5, 7; mean 22/6, p50 3.5, p95 6.5, p99 6.9 (linear interpolation)."""
    tasks = [SimTask(i, 0.0, float(i + 1), {"CPU": 1}) for i in range(5)]
    tasks += [SimTask(5, 0.0, 2.0, {"CPU": 1}, job=5), SimTask(6, 1.0, 6.0, {"CPU": 1}, job=5)]
    sim = Simulation(one_cpu(8), tasks, policy="fifo", failures=False).run()
    m = sim.metrics()
    assert m["jobs"] == 6
    assert m["jct_mean"] == pytest.approx(22 / 6)
    assert m["jct_p50"] == pytest.approx(3.5)
    assert m["jct_p95"] == pytest.approx(6.5)
    assert m["jct_p99"] == pytest.approx(6.9)
    assert m["makespan"] == pytest.approx(7.0)


def test_utilization_of_one_a100_with_known_busy_fraction():
    """One A100 (speed 2.2 for 'train'): 22 s tasks run 10 s each, at t=0 and t=30; the run
    ends at 40, so the A100 is busy half the time; the node's one core is busy too."""
    cluster = ClusterConfig([NodeSpec("g", DEVICES["A100"], 1, cpus=1, count=1)], name="a100")
    tasks = [SimTask(0, 0.0, 22.0, {"CPU": 1, "GPU": 1}, name="train"),
             SimTask(1, 30.0, 22.0, {"CPU": 1, "GPU": 1}, name="train")]
    sim = Simulation(cluster, tasks, failures=False).run()
    m = sim.metrics(check=True)
    assert m["makespan"] == pytest.approx(40.0)
    assert m["util[A100]"] == pytest.approx(0.5)
    assert m["util_GPU"] == pytest.approx(0.5)
    assert m["util_CPU"] == pytest.approx(0.5)
    # a CPU-only task on the same node keeps the core busy but not the A100
    more = [*tasks, SimTask(2, 40.0, 40.0, {"CPU": 1}, name="prep")]
    m2 = Simulation(cluster, more, failures=False).run().metrics()
    assert m2["makespan"] == pytest.approx(80.0)
    assert m2["util[A100]"] == pytest.approx(20.0 / 80.0)
    assert m2["util_CPU"] == pytest.approx(60.0 / 80.0)


# -- invariants on many runs ---------------------------------------------------------
def _mixed(policy: str, seed: int, **kw) -> Simulation:
    return Simulation(small_cluster(), mixed_jobs(300, 0.3), policy=policy, seed=seed, **kw)


def _flaky(policy: str, seed: int) -> Simulation:
    cluster = small_cluster(cpu={"mtbf": 400.0, "repair_time": 50.0},
                            v100={"mtbf": 300.0, "repair_time": 50.0})
    return Simulation(cluster, mixed_jobs(200, 0.2, max_retries=1), policy=policy, seed=seed)


def _spot(policy: str, seed: int) -> Simulation:
    cluster = small_cluster(v100={"spot": True, "spot_mtbp": 200.0, "spot_notice": 10.0,
                                  "count": 2})
    return Simulation(cluster, mixed_jobs(200, 0.2), policy=policy, seed=seed,
                      autoscaler="demand")


def _dags(policy: str, seed: int) -> Simulation:
    wl = Merged([DagJobs(8, 0.02, map_reduce(6, 2), tenants=["x", "y"]), mixed_jobs(100, 0.2)])
    return Simulation(small_cluster(), wl, policy=policy, seed=seed)


def _preset(name: str, autoscaler: str = "none"):
    def make(policy: str, seed: int) -> Simulation:
        return Simulation(demo_cluster(autoscale=autoscaler != "none"), get_workload(name),
                          policy=policy, autoscaler=autoscaler, seed=seed)
    return make


RUNS = [("mixed", _mixed, "fifo", 1), ("mixed", _mixed, "best_fit", 2),
        ("mixed", _mixed, "spread", 3), ("mixed-exact", lambda p, s: _mixed(p, s, window=None),
                                         "drf", 4),
        ("flaky", _flaky, "best_fit", 5), ("flaky", _flaky, "priority", 6),
        ("spot", _spot, "fifo", 9),
        ("dags", _dags, "hetero", 7), ("dags", _dags, "backfill", 8),
        ("qpu", _preset("qpu"), "fair_share", 0), ("bursty", _preset("bursty"), "fifo", 1),
        ("services", _preset("services"), "best_fit", 2),
        ("ml_mix+demand", _preset("ml_mix", "demand"), "hetero_cost", 3),
        ("bursty+target", _preset("bursty", "target"), "spread", 4)]


@pytest.mark.parametrize("label,make,policy,seed", RUNS, ids=[f"{r[0]}-{r[2]}-{r[3]}" for r in RUNS])
def test_invariants_and_littles_law_hold_on_every_run(label, make, policy, seed):
    """Every run's books balance and L = lambda W (check_invariants via metrics(check=True))."""
    sim = make(policy, seed).run()
    m = sim.metrics(check=True)
    fig = check_invariants(sim)
    assert fig["L"] == pytest.approx(fig["lambda"] * fig["W"], rel=1e-9)
    assert fig["L"] > 0 and m["unfinished"] == 0
    assert m["finished"] + m["failed"] == m["tasks"] > 0


def test_invariants_catch_broken_books():
    """A corrupted record (a task ending before it started) or a lost task is reported."""
    sim = _mixed("fifo", 1).run()
    check_invariants(sim)
    sim.rec_end[5] = sim.rec_start[5] - 1.0
    with pytest.raises(InvariantError, match="after end"):
        sim.metrics(check=True)
    sim2 = _mixed("fifo", 1).run()
    sim2._seen += 1
    with pytest.raises(InvariantError, match="submitted"):
        check_invariants(sim2)


def test_invariants_on_a_run_cut_short():
    """A run stopped with ``until`` has no Little's-law figure but its books still check."""
    sim = _mixed("best_fit", 2).run(until=200.0)
    assert not sim.done and sim.in_system > 0
    fig = check_invariants(sim)
    assert fig["T"] == pytest.approx(200.0)


# -- long-lived services ---------------------------------------------------------------
def test_services_hold_resources_for_their_lifetime_while_jobs_run_around_them():
    """Two GPU services on a 3-GPU node run 0..1000 without interruption; GPU jobs share
    the one GPU left (never more than one at a time while the services live), and use all
    three once the services are gone."""
    cluster = ClusterConfig([NodeSpec("g", DEVICES["V100"], 3, cpus=8, count=1)], name="g3")
    wl = Merged([Services(2, {"CPU": 1, "GPU": 1}, lifetime=1000.0, kind="serve"),
                 JobMix(150, 0.2, [Shape(Resources({"CPU": 1, "GPU": 1}), "train", Exp(8.0))],
                        name="jobs")])
    sim = Simulation(cluster, wl, policy="fifo", seed=2, failures=False).run()
    m = sim.metrics(check=True)
    assert m["finished"] == m["tasks"] == 152
    services = {t.id for t in wl.tasks(2) if t.kind == "serve"}
    assert len(services) == 2
    attempts = sim.trace.attempts()
    for tid in services:
        mine = [a for a in attempts if a[0] == tid]
        assert len(mine) == 1
        _, _, start, end, outcome = mine[0]
        assert (start, end, outcome) == (0.0, 1000.0, "finished")
    jobs = [a for a in attempts if a[0] not in services]
    during = [a for a in jobs if a[2] < 1000.0]
    after = [a for a in jobs if a[2] >= 1000.0]
    assert len(during) > 50 and after  # jobs ran beside the services and after them
    # concurrency of jobs over time: at most 1 while the services live, up to 3 after
    edges = sorted([(s, 1) for _, _, s, _, _ in jobs] + [(e, -1) for _, _, _, e, _ in jobs],
                   key=lambda x: (x[0], x[1]))
    live, peak_during, peak_after = 0, 0, 0
    for t, d in edges:
        live += d
        if t < 1000.0:
            peak_during = max(peak_during, live)
        else:
            peak_after = max(peak_after, live)
    assert peak_during == 1
    assert peak_after >= 2
    assert not any(sim.trace.kind[i] == K.PREEMPTED for i in range(len(sim.trace)))


def test_services_preset_is_listed_and_keeps_its_gpus():
    """The `services` preset runs to completion; its model servers hold a GPU for the
    whole six hours, so GPU utilization stays above their share."""
    assert "services" in WORKLOADS
    wl = get_workload("services")
    tasks = list(wl.tasks(0))
    servers = [t for t in tasks if t.kind == "serve"]
    assert len(servers) == 4 and all(t.duration == 6 * 3600.0 for t in servers)
    sim = Simulation(demo_cluster(), wl, policy="best_fit", seed=0, failures=False).run()
    m = sim.metrics(check=True)
    assert m["finished"] == m["tasks"] == len(tasks)
    assert m["makespan"] == pytest.approx(6 * 3600.0)
    gpus = sum(s.resources.get("GPU", 0) * s.count for s in demo_cluster().node_specs)
    assert m["util_GPU"] >= 4 / gpus
    with pytest.raises(ValueError, match="lifetime"):
        Services(1, {"CPU": 1}, lifetime=0)
    with pytest.raises(ValueError, match="start"):
        Services(1, {"CPU": 1}, lifetime=10.0, start=-1.0)
