"""End to end: the same program with ``backfill`` and with ``priority`` makes the same
placements (and preemptions) on the sim backend and in the simulator's engine, because both
carry out the decisions of one control plane."""

from __future__ import annotations

import pytest

import runtime
from runtime.events import EventKind as K
from simulator.cluster import ClusterConfig
from simulator.engine import Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.base import SimTask

pytestmark = pytest.mark.timeout(60)

#: (submit time, CPUs, duration, priority, tenant): a queue where EASY backfill matters
#: (a wide task waits while short ones jump ahead) and priority preempts. Submissions fall
#: between other events: a driver that sleeps until ``t`` goes on after everything that
#: happens at ``t`` (the sim backend's rule), a workload's arrival at ``t`` before the
#: round of ``t`` (the engine's).
JOBS = [(0.0, 1, 10.0, 0, "a"), (0.0, 1, 10.0, 0, "a"), (0.0, 2, 30.0, 0, "b"),
        (0.0, 4, 5.0, 0, "b"), (1.11, 1, 3.0, 0, "a"), (1.11, 1, 20.0, 0, "a"),
        (2.23, 2, 2.0, 1, "b"), (4.37, 4, 8.0, 5, "a"), (6.41, 1, 1.0, 0, "b"),
        (6.41, 1, 4.0, 3, "a"), (9.67, 3, 6.0, 0, "b"), (12.79, 1, 2.0, 7, "b")]
NODES = [{"name": "cpu", "num_cpus": 4, "count": 2}]


@runtime.remote
def work() -> None:
    """A body with nothing to do: its duration is its ``sim_duration``."""


def _on_sim_backend(policy: str) -> tuple[list, list]:
    runtime.init("sim", nodes=NODES, policy=policy, seed=0)
    events: list = []
    runtime.subscribe(events.append)
    try:
        refs = []
        for at, cpus, dur, prio, tenant in JOBS:
            if runtime.now() < at:
                runtime.sleep(at - runtime.now())
            refs.append(work.options(num_cpus=cpus, sim_duration=dur, priority=prio,
                                     tenant=tenant, kind="work").remote())
        runtime.get(refs)
    finally:
        runtime.shutdown()
    ids = {r.id: i for i, r in enumerate(refs)}  # the backend's ids -> job index
    placed = [(round(e.time, 9), ids[e.task], e.node.split("-")[0], int(e.node.split("-")[1]))
              for e in events if e.kind == K.TASK_PLACED and e.task in ids]
    preempted = [(round(e.time, 9), ids[e.task]) for e in events
                 if e.kind == K.TASK_PREEMPTED and e.task in ids]
    return placed, preempted


def _in_the_engine(policy: str) -> tuple[list, list]:
    cluster = ClusterConfig([NodeSpec("cpu", cpus=4, count=2)])
    tasks = [SimTask(i + 1, at, dur, {"CPU": cpus}, name="work", kind="work", priority=prio,
                     tenant=tenant) for i, (at, cpus, dur, prio, tenant) in enumerate(JOBS)]
    sim = Simulation(cluster, tasks, policy=policy, window=256, failures=False).run()
    assert sim.metrics()["finished"] == len(JOBS)
    evs = list(sim.trace.events())
    placed = [(round(e.time, 9), e.task - 1, e.node.split("-")[0], int(e.node.split("-")[1]))
              for e in evs if e.kind == K.TASK_STARTED]
    preempted = [(round(e.time, 9), e.task - 1) for e in evs if e.kind == K.TASK_PREEMPTED]
    return placed, preempted


@pytest.mark.parametrize("policy", ["backfill", "priority", "fifo"])
def test_same_program_same_placements_on_the_sim_backend_and_in_the_engine(policy):
    """Every placement (time, task, node) and preemption is the same in both."""
    backend = _on_sim_backend(policy)
    engine = _in_the_engine(policy)
    assert backend == engine
    placed, preempted = backend
    assert len(placed) >= len(JOBS)
    if policy == "priority":
        assert preempted, "the urgent jobs should have preempted running ones"
    if policy == "backfill":  # a short job started before an older wide one (a backfill)
        start = {task: t for t, task, _, _ in reversed(placed)}
        assert any(start[j] < start[i] for i in range(len(JOBS)) for j in range(i + 1, len(JOBS))
                   if JOBS[i][1] > JOBS[j][1])
