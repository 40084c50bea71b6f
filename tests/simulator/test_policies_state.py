"""Every registered policy runs in the simulator; the simulator's ClusterState answers exactly."""

from __future__ import annotations

import random
import re

import pytest

from runtime.cluster import TaskInfo, free_score
from runtime.control import ClusterIndex
from runtime.policies import POLICIES, Place
from runtime.resources import Resources
from simulator.engine import Simulation
from simulator.workloads.base import SimTask

from .conftest import mixed_jobs, small_cluster

pytestmark = pytest.mark.timeout(60)

NAMES = sorted(POLICIES)


@pytest.mark.parametrize("policy", NAMES)
def test_every_policy_finishes_work_and_restores_capacity(policy):
    """Each built-in policy runs a mixed two-tenant workload to the end with exact accounting."""
    sim = Simulation(small_cluster(), mixed_jobs(300, 0.3), policy=policy, seed=11).run()
    m = sim.metrics()
    assert m["finished"] == 300, m
    assert m["policy"] == sim.policy_name
    for n in sim.state.records().values():
        assert n.free == n.group.total
    assert 0 < m["util_GPU"] <= 1.0 and 0 < m["util_CPU"] <= 1.0


@pytest.mark.parametrize("policy", NAMES)
def test_exact_window_gives_valid_runs(policy):
    """window=None (the policy sees every pending task each round) also completes."""
    sim = Simulation(small_cluster(), mixed_jobs(150, 0.5), policy=policy, window=None,
                     seed=2).run()
    assert sim.metrics()["finished"] == 150


class ShortestFirst:
    """A user policy in a few lines: shortest expected task first, on the first node that fits."""

    name = "sjf"

    def schedule(self, pending, cluster):
        out, used = [], set()
        for t in sorted(pending, key=lambda t: (t.duration_hint or 0, t.id)):
            node = next((n for n in cluster.fitting(t) if n.id not in used), None)
            if node is not None:
                used.add(node.id)
                out.append(Place(t.id, node.id))
        return out


def test_user_policy_object_runs():
    """A plain object with schedule() is a policy; short jobs wait less than under FIFO."""
    sjf = Simulation(small_cluster(), mixed_jobs(300, 0.3), policy=ShortestFirst(), seed=4).run()
    fifo = Simulation(small_cluster(), mixed_jobs(300, 0.3), policy="fifo", seed=4).run()
    assert sjf.metrics()["finished"] == 300
    assert sjf.metrics()["policy"] == "sjf"
    assert sjf.metrics()["wait_mean"] <= fifo.metrics()["wait_mean"] * 1.05


def _brute(state: ClusterIndex, task: TaskInfo, order: str) -> list[str]:
    nodes = [n for n in state.nodes() if n.state == "up" and task.request.fits(n.free)
             and (task.accelerator_type is None or n.accelerator_type == task.accelerator_type)
             and state.speed(task, n) > 0]
    if order == "id":
        key = lambda n: n.id  # noqa: E731
    elif order == "tightest":
        key = lambda n: (free_score(n), n.id)  # noqa: E731
    else:
        key = lambda n: (-free_score(n), n.id)  # noqa: E731
    return [n.id for n in sorted(nodes, key=key)]


def test_fitting_orders_match_brute_force():
    """fitting(task, order) lists exactly the nodes a full scan would, in the same order."""
    cluster = small_cluster(cpu={"count": 6}, v100={"count": 5})
    state = ClusterIndex()
    rng = random.Random(0)
    for spec in cluster.initial_nodes():
        k = sum(1 for n in state.records().values() if n.spec.name == spec.name)
        state.add_node(f"{spec.name}-{k:06d}", spec, state="up")
    shapes = [Resources({"CPU": 1}), Resources({"CPU": 2, "GPU": 1}), Resources({"CPU": 1, "GPU": 2})]
    tid = 0
    for _ in range(300):
        req = rng.choice(shapes)
        task = TaskInfo(tid, "t", req, kind="train")
        cands = list(state.fitting(task, "id"))
        if cands and rng.random() < 0.6:
            n = state.record(rng.choice(cands).id)
            state.allocate_vec(task, n, n.group.reqvec(req))
            tid += 1
        elif state.running():
            victim = rng.choice([t.id for t in state.running()])
            state.release(victim)
        for probe in shapes:
            for acc in (None, "A100"):
                t = TaskInfo(10_000, "p", probe, kind="train", accelerator_type=acc)
                for order in ("id", "tightest", "loosest"):
                    got = [n.id for n in state.fitting(t, order)]
                    assert got == _brute(state, t, order), (order, probe, acc)


def test_speed_zero_nodes_are_not_offered():
    """A task kind whose speed is 0 on a model is never offered (nor placed on) that model."""
    from simulator.cluster import ClusterConfig
    from simulator.devices import DeviceType
    from simulator.nodes import NodeSpec

    slow = DeviceType("GPU", "OLD", speed={"train": 0.0})
    cluster = ClusterConfig([NodeSpec("old", slow, 2, cpus=2, count=1),
                             NodeSpec("new", DeviceType("GPU", "NEW"), 1, cpus=2, count=1)])
    tasks = [SimTask(i, 0.0, 10.0, {"CPU": 1, "GPU": 1}, name="train") for i in range(3)]
    sim = Simulation(cluster, tasks).run()
    assert sim.metrics()["finished"] == 3
    assert {e.node for e in sim.trace.events() if e.kind == "task_started"} == {"new-000000"}
    assert sim.metrics()["makespan"] == pytest.approx(30.0)


def test_priority_policy_preempts_in_simulation():
    """An urgent task preempts a low-priority one; the victim is requeued and finishes later."""
    from simulator.cluster import ClusterConfig
    from simulator.nodes import NodeSpec

    cluster = ClusterConfig([NodeSpec("n", cpus=2, count=1)])
    tasks = [SimTask(0, 0.0, 100.0, {"CPU": 1}), SimTask(1, 0.0, 100.0, {"CPU": 1}),
             SimTask(2, 10.0, 5.0, {"CPU": 1}, priority=5, name="urgent")]
    sim = Simulation(cluster, tasks, policy="priority").run()
    ev = list(sim.trace.events())
    urgent_start = next(e.time for e in ev if e.kind == "task_started" and e.task == 2)
    assert urgent_start == pytest.approx(10.0)
    assert sum(e.kind == "task_preempted" for e in ev) == 1
    m = sim.metrics()
    assert m["finished"] == 3 and m["preemptions"] == 1
    assert sim.state.record("n-000000").free == (2.0,)


def test_bad_preempt_decision_is_rejected_naming_the_policy():
    """Preempting a task that is not running is rejected with a PolicyError naming the policy
    and the task id (as on every backend); the run stays usable."""
    from runtime.cluster import Place, Preempt
    from runtime.errors import PolicyError

    class Wild:
        name = "wild"

        def schedule(self, pending, cluster):
            node = next(cluster.fitting(pending[0]))
            return [Preempt(999), Place(pending[0].id, node.id)]

    sim = Simulation(small_cluster(), [SimTask(0, 0.0, 1.0, {"CPU": 1})], policy=Wild()).run()
    (err,) = sim.policy_errors
    assert isinstance(err, PolicyError)
    assert re.search(r"'wild' preempted task id 999 which is not a running task", str(err))
    assert sim.metrics()["finished"] == 1  # the good decision of the same round stands
