"""Decision equivalence on a real dask scheduler with workers: a run's event stream, replayed
into a fresh control plane with the same policy (or autoscaler), reproduces every decision.
Also: a ``Preempt`` decision on dask cancels the victim, queues it again, and its result is
still right."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import runtime
from runtime.autoscaling import DemandAutoscaler
from runtime.control.replay import Recorder, replay
from runtime.events import EventKind as K
from runtime.policies import POLICIES
from tests.dask.cluster import DaskCluster, dask_cluster, run_options

from . import program

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(240)]

DEPTH = 2  # a fixed send-ahead depth (the adaptive one depends on measured run times)


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """The standard two-node cluster (``cpu``; ``gpu`` with 2 GPUs, A100), one per module."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c


def _replay_options(name: str) -> dict:
    pol = runtime.current_backend().control
    return {"node_types": pol.plane.node_types.values(), "window": 256,
            "send_ahead": (lambda shape: DEPTH) if (pol.prefetch or pol.lookahead) else None,
            "lookahead": pol.lookahead, "grace": 0.3}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_replays_to_the_same_decisions_on_dask(procs, name):
    """Placements, tasks sent ahead or queued behind running ones, rounds: all reproduced."""
    if runtime.is_initialized():
        runtime.shutdown()
    runtime.init(procs.address, policy=name, prefetch=DEPTH, **run_options())
    rec = Recorder(runtime.current_backend())
    try:
        program.mixed()
        if name == "priority":
            program.saturate_then_urgent()
        options = _replay_options(name)
    finally:
        runtime.shutdown()
    rep = replay(rec.stop(), name, **options)
    assert not rep.mismatches(), "\n".join(rep.mismatches())
    counts = rep.counts()
    assert counts.get(K.TASK_PLACED, 0) >= 20, counts
    if name == "priority":
        assert counts.get(K.TASK_PREEMPTED, 0) >= 1, counts


def test_preemption_on_dask_requeues_the_victim_and_its_result_is_right(procs):
    """A high-priority task preempts a running low-priority one: the victim's attempt is
    cancelled, it runs again from the start, and get() returns its (second) result."""
    if runtime.is_initialized():
        runtime.shutdown()
    runtime.init(procs.address, policy="priority", **run_options())
    events: list = []
    runtime.subscribe(events.append)
    try:
        started = time.monotonic()
        low = [program.work.options(priority=0).remote(1.5, f"low{i}") for i in range(4)]
        deadline = time.monotonic() + 30
        log = runtime.current_backend().log
        while sum(1 for r in low if log.tasks.get(r.id) and log.tasks[r.id].state == "running") \
                < 4:
            assert time.monotonic() < deadline, "the low-priority tasks did not start"
            time.sleep(0.02)
        high = program.work.options(priority=9, num_cpus=2).remote(0.2, "high")
        assert runtime.get(high, timeout=60) == "high"
        assert runtime.get(low, timeout=60) == [f"low{i}" for i in range(4)]
        high_done = next(e.time for e in events if e.kind == K.TASK_FINISHED
                         and e.task == high.id)
        assert high_done - started < 1.5 + 1.0  # it did not wait for the victims to end
    finally:
        runtime.shutdown()
    victims = [e.task for e in events if e.kind == K.TASK_PREEMPTED]
    assert victims and set(victims) <= {r.id for r in low}
    for v in victims:  # each victim started again after its preemption
        starts = [e for e in events if e.kind == K.TASK_STARTED and e.task == v]
        assert len(starts) >= 2, starts


def test_the_autoscaler_replays_to_the_same_scale_decisions_on_dask(tmp_path):
    """On a SpecCluster: GPU demand adds a worker, idle it is retired; replayed, the same."""
    from distributed import Nanny, Scheduler, SpecCluster

    if runtime.is_initialized():
        runtime.shutdown()
    base = {"host": "127.0.0.1", "dashboard": False, "local_directory": str(tmp_path)}
    cpu_spec = {"cls": Nanny, "options": {**base, "name": "cpu-1", "nthreads": 1,
                                          "resources": {"CPU": 1}}}
    cluster = SpecCluster(
        workers={"cpu-1": cpu_spec},
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}},
        worker={"cls": Nanny, "options": base})
    try:
        node_types = [{"name": "cpu", "resources": {"CPU": 1}, "min_count": 1},
                      {"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "accelerator_type": "T4",
                       "cost_per_hour": 1.0}]
        runtime.init(cluster, node_types=node_types, policy="fifo", prefetch=False,
                     autoscaler=DemandAutoscaler(idle_timeout=1.0), autoscale_interval=0.3,
                     **run_options())
        rec = Recorder(runtime.current_backend())
        options = _replay_options("fifo")
        assert runtime.get(program.work.options(num_gpus=1).remote(0.2, "g"), timeout=120) == "g"
        deadline = time.monotonic() + 60
        while any(n["NodeID"].startswith("gpu") for n in runtime.nodes()):
            assert time.monotonic() < deadline, "the idle GPU worker was not retired"
            time.sleep(0.1)
        runtime.shutdown()
        rep = replay(rec.stop(), "fifo", DemandAutoscaler(idle_timeout=1.0), **options)
        assert not rep.mismatches(), "\n".join(rep.mismatches())
        scale = [e for e in rep.recorded if e.kind == K.SCALE_DECISION]
        assert any(e.data["add"] for e in scale) and any(e.data["remove"] for e in scale), scale
    finally:
        if runtime.is_initialized():
            runtime.shutdown()
        cluster.close(timeout=20)
