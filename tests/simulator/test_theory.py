"""The simulator against closed forms: Erlang C, Little's law, utilization, a hand-made DAG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.resources import Resources
from simulator.cluster import ClusterConfig
from simulator.devices import DEVICES
from simulator.engine import Simulation
from simulator.metrics import in_system_series
from simulator.nodes import NodeSpec
from simulator.workloads.arrivals import JobMix
from simulator.workloads.base import Exp, Shape, SimTask
from simulator.workloads.dags import Dag

from .conftest import mixed_jobs, small_cluster

pytestmark = pytest.mark.timeout(60)


def erlang_c_wait(c: int, lam: float, mu: float) -> float:
    """Mean waiting time in an M/M/c FIFO queue (Erlang C)."""
    a = lam / mu
    rho = a / c
    s = sum(a ** k / math.factorial(k) for k in range(c))
    top = a ** c / math.factorial(c) / (1 - rho)
    p_wait = top / (s + top)
    return p_wait / (c * mu - lam)


def mmc(c: int, lam: float, mu: float, n: int, seed: int) -> Simulation:
    cluster = ClusterConfig([NodeSpec("srv", cpus=c, count=1)], name="mmc")
    wl = JobMix(n, lam, [Shape(Resources({"CPU": 1}), "job", Exp(1.0 / mu))])
    return Simulation(cluster, wl, policy="fifo", seed=seed).run()


@pytest.mark.slow
def test_mmc_mean_wait_matches_erlang_c():
    """M/M/4 at rho=0.75: mean queueing delay within 12% of Erlang C (averaged over 3 seeds)."""
    c, lam, mu = 4, 3.0, 1.0
    want = erlang_c_wait(c, lam, mu)
    waits = [mmc(c, lam, mu, 20_000, seed).metrics()["wait_mean"] for seed in (1, 2, 3)]
    got = float(np.mean(waits))
    assert got == pytest.approx(want, rel=0.12), (got, want, waits)


def test_utilization_equals_offered_load_below_capacity():
    """Below capacity, CPU utilization = lambda / (c mu) within 3%."""
    c, lam, mu = 4, 2.0, 1.0
    m = mmc(c, lam, mu, 20_000, 5).metrics()
    assert m["util_CPU"] == pytest.approx(lam / (c * mu), rel=0.03)
    assert m["finished"] == 20_000


@pytest.mark.parametrize("policy", ["fifo", "best_fit"])
def test_littles_law_on_a_run(policy):
    """L (time-average tasks in system) = lambda x W on a heterogeneous run."""
    sim = Simulation(small_cluster(), mixed_jobs(600, 0.1), policy=policy, seed=3).run()
    t, count = in_system_series(sim)
    assert count[-1] == 0 and count.min() >= 0
    T = sim.end_time
    area = float(np.sum(count[:-1] * np.diff(t)))
    L = area / T
    m = sim.metrics()
    lam = m["tasks"] / T
    W = m["task_time_mean"]
    assert L == pytest.approx(lam * W, rel=1e-9)
    assert W > 0


def test_hand_computed_dag_makespan():
    """a(3) || b(2); c(4) after a; d(1) after b and c, on 2 CPUs: makespan 8."""
    dag = Dag("hand").add("a", 3).add("b", 2).add("c", 4, deps=["a"]).add("d", 1, deps=["b", "c"])
    cluster = ClusterConfig([NodeSpec("n", cpus=2, count=1)])
    sim = Simulation(cluster, dag, seed=0).run()
    m = sim.metrics()
    assert m["makespan"] == pytest.approx(8.0)
    assert m["jobs"] == 1 and m["jct_mean"] == pytest.approx(8.0)
    # on one CPU everything serialises: 3 + 2 + 4 + 1
    one = Simulation(ClusterConfig([NodeSpec("n", cpus=1, count=1)]), dag).run()
    assert one.metrics()["makespan"] == pytest.approx(10.0)


def test_device_speed_scales_run_time():
    """A 'train' task of 22 s (reference) takes 10 s on an A100 (speed 2.2) and 22 s on a V100."""
    for model, want in (("A100", 10.0), ("V100", 22.0)):
        cluster = ClusterConfig([NodeSpec("g", DEVICES[model], 1, cpus=1, count=1)])
        sim = Simulation(cluster, [SimTask(0, 0.0, 22.0, {"CPU": 1, "GPU": 1}, name="train")]).run()
        assert sim.metrics()["makespan"] == pytest.approx(want)


def test_qpu_job_time_follows_shots():
    """A QPU job runs overhead + shots x shot_time, one at a time on the device."""
    dev = DEVICES["QPU27"]
    cluster = ClusterConfig([NodeSpec("q", dev, 1, cpus=4, count=1)])
    tasks = [SimTask(i, 0.0, 2.0, {"CPU": 1, "QPU": 1}, name="circuit", shots=1000)
             for i in range(3)]
    sim = Simulation(cluster, tasks, failures=False).run()
    assert sim.metrics()["makespan"] == pytest.approx(3 * (2.0 + 1000 * dev.shot_time))
