"""Workers killed, added and removed under a running program; autoscaling a LocalCluster."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

import runtime
import runtime.autoscaling
from tests.dask.cluster import run_options

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(180)]


def _wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@runtime.remote
def pid_then_sleep(path, seconds):
    import distributed

    if os.path.exists(path):
        return "second attempt on " + str(distributed.get_worker().name)
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "first attempt"


@runtime.remote
def where(seconds=0.0):
    import distributed

    time.sleep(seconds)
    return str(distributed.get_worker().name)


def test_sigkilled_worker_mid_task_is_retried(own_procs, tmp_path):
    """SIGKILL the worker process mid-task: the nanny restarts it and the task re-runs."""
    runtime.init(own_procs.address, **run_options())
    events = []
    unsub = runtime.subscribe(events.append)
    path = str(tmp_path / "pid")
    ref = pid_then_sleep.options(max_retries=2).remote(path, 600)
    # the file exists before the pid is written: wait for its content
    _wait_for(lambda: os.path.exists(path) and open(path).read().strip(),
              what="the task to start")
    with open(path) as f:
        pid = int(f.read())
    assert pid == own_procs.worker_pid("cpu")
    own_procs.kill_worker_process("cpu")
    assert runtime.get(ref, timeout=90) == "second attempt on cpu"
    unsub()
    kinds = [(e.kind, e.data.get("attempt")) for e in events if e.task == ref.id]
    assert ("task_retried", 2) in kinds and ("task_started", 2) in kinds
    removed = [e for e in events if e.kind == "node_removed" and e.node == "cpu"]
    assert removed, "the old worker process was reported as a removed node"
    assert runtime.get(where.remote(), timeout=60) == "cpu"


def test_worker_added_while_tasks_wait_for_its_resource(own_procs):
    """TPU tasks wait (a declared node type could run them); a TPU worker joins; they run there."""
    runtime.init(own_procs.address, node_types=[{"name": "tpu", "resources": {"CPU": 1, "TPU": 1}}],
                 **run_options())
    refs = [where.options(resources={"TPU": 1}).remote() for _ in range(3)]
    time.sleep(0.5)
    assert not any(r.done() for r in refs)
    events = []
    unsub = runtime.subscribe(events.append)
    own_procs.add_worker("tpu-1", 1, {"CPU": 1, "TPU": 1})
    assert runtime.get(refs, timeout=90) == ["tpu-1"] * 3
    _wait_for(lambda: any(e.kind == "node_added" and e.node == "tpu-1" for e in events),
              what="node_added for tpu-1")
    unsub()
    node = {n["NodeID"]: n for n in runtime.nodes()}["tpu-1"]
    assert node["NodeType"] == "tpu" and node["Resources"] == {"CPU": 1.0, "TPU": 1.0}


def test_worker_removed_its_tasks_move(own_procs):
    """Stopping a worker mid-task moves its tasks to the remaining worker; results are right."""
    own_procs.add_worker("extra", 2, {"CPU": 2})
    own_procs.wait_workers()
    runtime.init(own_procs.address, **run_options())
    events = []
    unsub = runtime.subscribe(events.append)
    refs = [where.remote(1.5) for _ in range(6)]
    _wait_for(lambda: any(e.kind == "task_started" and e.node == "extra" for e in events),
              what="a task to start on the extra worker")
    moved = {e.task for e in events if e.kind == "task_started" and e.node == "extra"}
    own_procs.stop_worker("extra")
    results = runtime.get(refs, timeout=120)
    unsub()
    by_id = dict(zip((r.id for r in refs), results, strict=True))
    assert all(by_id[t] == "cpu" for t in moved if t in by_id)
    assert any(e.kind == "node_removed" and e.node == "extra" for e in events)
    assert [n["NodeID"] for n in runtime.nodes()] == ["cpu"]


def test_autoscaling_up_for_gpu_demand_and_down_when_idle(tmp_path):
    """Demand for {GPU: 1} adds a GPU worker to a LocalCluster; idle, it is retired."""
    from distributed import LocalCluster

    if runtime.is_initialized():
        runtime.shutdown()
    cluster = LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                           dashboard_address=None, worker_dashboard_address="127.0.0.1:0",
                           local_directory=str(tmp_path))
    try:
        node_types = [{"name": "cpu", "resources": {"CPU": 1}},
                      {"name": "gpu", "resources": {"CPU": 1, "GPU": 1},
                       "accelerator_type": "T4", "cost_per_hour": 1.0}]
        events = []
        runtime.init(cluster, node_types=node_types,
                     autoscaler=runtime.autoscaling.DemandAutoscaler(idle_timeout=2.0),
                     autoscale_interval=0.3, **run_options())
        runtime.subscribe(events.append)
        ref = where.options(num_gpus=1).remote()
        assert runtime.get(ref, timeout=120).startswith("gpu-")
        adds = [e for e in runtime.current_backend().log.scale_events if e.data["add"]]
        assert adds and adds[0].data["add"] == {"gpu": 1}
        _wait_for(lambda: not runtime.nodes(), timeout=60, what="the idle GPU worker to go")
        assert any(e.kind == "scale_decision" and e.data["remove"] for e in events)
        assert any(e.kind == "node_removed" for e in events)
        with pytest.raises(runtime.InfeasibleRequestError, match="TPU"):
            where.options(resources={"TPU": 1}).remote()
    finally:
        runtime.shutdown()
        cluster.close(timeout=30)


def test_losing_the_scheduler_fails_pending_refs_clearly(own_procs):
    """When the scheduler goes away, pending refs raise ObjectLostError naming it; shutdown works."""
    runtime.init(own_procs.address, **run_options())
    ref = where.remote(30)
    _wait_for(lambda: runtime.current_backend()._running, what="the task to start")
    own_procs.stop()
    with pytest.raises(runtime.ObjectLostError, match="connection to the dask scheduler"):
        runtime.get(ref, timeout=30)
    runtime.shutdown()
    assert not runtime.is_initialized()


def test_autoscaling_a_spec_cluster_with_a_worker_spec_per_node_type(tmp_path):
    """A SpecCluster that starts with one ``cpu-1`` worker: GPU demand adds a ``gpu-<n>``
    worker spec (threads and resources from its node type); idle, it is retired, while
    ``cpu`` stays at its min_count."""
    from distributed import Nanny, Scheduler, SpecCluster

    if runtime.is_initialized():
        runtime.shutdown()
    base = {"host": "127.0.0.1", "dashboard": False, "local_directory": str(tmp_path)}
    cpu_spec = {"cls": Nanny, "options": {**base, "name": "cpu-1", "nthreads": 1,
                                          "resources": {"CPU": 1}}}
    cluster = SpecCluster(
        workers={"cpu-1": cpu_spec},
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}},
        worker={"cls": Nanny, "options": base},
    )
    try:
        node_types = [{"name": "cpu", "resources": {"CPU": 1}, "min_count": 1},
                      {"name": "gpu", "resources": {"CPU": 2, "GPU": 1},
                       "accelerator_type": "T4", "cost_per_hour": 1.0}]
        events = []
        runtime.init(cluster, node_types=node_types, min_workers=1,
                     autoscaler=runtime.autoscaling.DemandAutoscaler(idle_timeout=2.0),
                     autoscale_interval=0.3, **run_options())
        runtime.subscribe(events.append)
        assert runtime.get(where.remote(), timeout=60) == "cpu-1"
        ref = where.options(num_gpus=1, accelerator_type="T4").remote()
        gpu_name = runtime.get(ref, timeout=120)
        assert gpu_name.startswith("gpu-") and gpu_name in cluster.worker_spec
        spec = cluster.worker_spec[gpu_name]["options"]
        assert spec["nthreads"] == 2 and spec["resources"] == {"CPU": 2, "GPU": 1,
                                                                "accelerator_type:T4": 1}
        node = {n["NodeID"]: n for n in runtime.nodes()}[gpu_name]
        assert node["NodeType"] == "gpu" and node["Labels"] == {"accelerator_type": "T4"}
        _wait_for(lambda: [n["NodeID"] for n in runtime.nodes()] == ["cpu-1"], timeout=60,
                  what="the idle GPU worker to be retired")
        assert any(e.kind == "node_removed" and e.node == gpu_name for e in events)
        assert set(cluster.worker_spec) == {"cpu-1"}
    finally:
        runtime.shutdown()
        cluster.close(timeout=30)
