"""Node failures, spot preemption and availability windows (RELIABILITY 20)."""

from __future__ import annotations

import pytest

from runtime.errors import WorkerCrashedError
from runtime.events import ClusterLog, EventBus, EventKind
from simulator.cluster import ClusterConfig
from simulator.devices import DeviceType, Window
from simulator.engine import Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.base import SimTask

from .conftest import mixed_jobs, small_cluster

pytestmark = pytest.mark.timeout(60)


def assert_capacity_restored(sim: Simulation) -> None:
    """Every node's free resources equal its total (exactly) once the run is over."""
    for n in sim.state.records().values():
        assert n.free == n.group.total, (n.id, n.free, n.group.total)
        assert not n.tasks
    assert not sim.state._running


def test_task_longer_than_mtbf_fails_with_worker_crashed():
    """A task that always outlives its node is retried max_retries times, then WorkerCrashedError."""
    cluster = ClusterConfig([NodeSpec("flaky", cpus=1, count=1, mtbf=10.0, repair_time=5.0)])
    tasks = [SimTask(0, 0.0, 1e5, {"CPU": 1}, name="forever", max_retries=2)]
    sim = Simulation(cluster, tasks, seed=1).run()
    err = sim.errors[0]
    assert isinstance(err, WorkerCrashedError)
    assert err.attempts == 3 and err.task_name == "forever"
    assert err.last_worker == "flaky-000000"
    kinds = [e.kind for e in sim.trace.events() if e.task == 0]
    assert kinds.count(EventKind.TASK_STARTED) == 3
    assert kinds.count(EventKind.TASK_RETRIED) == 2
    assert kinds[-1] == EventKind.TASK_FAILED
    assert sim.retries == 2
    assert_capacity_restored(sim)


def test_failures_with_retries_finish_and_restore_capacity():
    """With frequent failures, tasks are retried and still finish; accounting is exact."""
    cluster = small_cluster(cpu={"mtbf": 400.0, "repair_time": 50.0},
                            v100={"mtbf": 300.0, "repair_time": 50.0})
    sim = Simulation(cluster, mixed_jobs(300, 0.2, max_retries=10), policy="best_fit",
                     seed=4).run()
    m = sim.metrics()
    assert m["retries"] > 0
    assert m["finished"] + m["failed"] == m["tasks"] == 300
    assert m["finished"] >= 290
    for tid, e in sim.errors.items():
        assert isinstance(e, WorkerCrashedError), (tid, e)
    assert_capacity_restored(sim)


def test_dependants_of_a_failed_task_fail_without_running():
    """When a DAG step fails for good, its dependants fail with the same error type, unrun."""
    cluster = ClusterConfig([NodeSpec("flaky", cpus=2, count=1, mtbf=5.0, repair_time=1.0)])
    tasks = [SimTask(0, 0.0, 1e4, {"CPU": 1}, name="up", max_retries=0),
             SimTask(1, 0.0, 1.0, {"CPU": 1}, name="down", deps=[0])]
    sim = Simulation(cluster, tasks, seed=2).run()
    assert isinstance(sim.errors[1], WorkerCrashedError)
    assert not any(e.kind == EventKind.TASK_STARTED and e.task == 1 for e in sim.trace.events())


def test_spot_preemption_requeues_without_using_retries():
    """Spot nodes vanish after a notice; their tasks run again elsewhere and finish."""
    cluster = ClusterConfig([
        NodeSpec("spot", cpus=2, count=2, spot=True, spot_mtbp=50.0, spot_notice=5.0),
        NodeSpec("ondemand", cpus=2, count=1),
    ])
    tasks = [SimTask(i, 0.0, 40.0, {"CPU": 1}, max_retries=0) for i in range(12)]
    sim = Simulation(cluster, tasks, seed=3).run()
    m = sim.metrics()
    assert m["finished"] == 12 and m["preemptions"] > 0
    removed = [e for e in sim.trace.events() if e.kind == EventKind.NODE_REMOVED]
    assert removed and all(e.data["reason"] == "spot preempted" for e in removed)
    notices = [e for e in sim.trace.events() if e.kind == EventKind.NODE_STATE
               and e.data.get("reason") == "spot notice"]
    assert len(notices) >= len(removed)
    assert_capacity_restored(sim)


def test_calibration_window_blocks_new_work():
    """No QPU job starts inside the device's calibration window."""
    qpu = DeviceType("QPU", "Q", speed={"circuit": 1.0}, shot_time=0.01,
                     unavailable=(Window(50.0, 100.0, period=400.0, reason="calibration"),))
    cluster = ClusterConfig([NodeSpec("q", qpu, 1, cpus=1, count=1)])
    tasks = [SimTask(i, 5.0 * i, 1.0, {"QPU": 1}, name="circuit", shots=500) for i in range(60)]
    sim = Simulation(cluster, tasks, seed=0).run()
    starts = [e.time for e in sim.trace.events() if e.kind == EventKind.TASK_STARTED]
    assert len(starts) == 60
    for t in starts:
        phase = t % 400.0
        assert not (50.0 <= phase < 150.0 and t > 50.0 + 6.0), t  # a job may straddle the start
    states = [e.data["state"] for e in sim.trace.events() if e.kind == EventKind.NODE_STATE]
    assert "draining" in states and "up" in states


def test_events_replay_into_cluster_log():
    """The live event bus and the trace give the runtime's ClusterLog the same picture."""
    bus = EventBus()
    live = ClusterLog().attach(bus)
    sim = Simulation(small_cluster(cpu={"mtbf": 500.0}), mixed_jobs(200, 0.2), seed=5,
                     events=bus).run()
    replay = ClusterLog()
    for e in sim.trace.events():
        replay(e)
    assert live.counts() == replay.counts()
    assert live.counts()["finished"] == sim.metrics()["finished"]
    assert live.events_seen == len(sim.trace)


def test_run_in_steps_equals_one_run():
    """run(until=a) then run() gives the same trace and metrics as a single run()."""
    one = Simulation(small_cluster(), mixed_jobs(200, 0.3), seed=9).run()
    two = Simulation(small_cluster(), mixed_jobs(200, 0.3), seed=9)
    two.run(until=150.0)
    assert not two.done and two.now == 150.0
    two.run(until=400.0)
    two.run()
    assert two.digest() == one.digest()
    m1, m2 = one.metrics(), two.metrics()
    for k in ("jct_mean", "makespan", "util_CPU", "util_GPU", "cost", "wait_mean"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-9), k
