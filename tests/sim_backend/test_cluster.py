"""The simulated cluster: placement by policy objects, speeds, events, failures, autoscaling."""

from __future__ import annotations

import time

import pytest

import runtime as rt
from runtime.autoscaling import ScaleDecision
from runtime.events import EventKind
from runtime.policies import Place

pytestmark = pytest.mark.timeout(60)

NODES = [
    {"name": "cpu", "resources": {"CPU": 2}},
    {"name": "gpu", "resources": {"CPU": 2, "GPU": 2}, "accelerator_type": "A100"},
]


def _started_on(backend, task_id: int) -> str:
    return next(e[3] for e in backend.trace if e[1] == EventKind.TASK_STARTED and e[2] == task_id)


def test_accelerator_and_gpu_requests_land_on_the_gpu_node(sim):
    """accelerator_type and num_gpus place tasks on the node that has them."""
    b = sim(nodes=NODES)

    @rt.remote(accelerator_type="A100", num_cpus=1)
    def on_a100() -> int:
        return 1

    @rt.remote(num_gpus=0.5, num_cpus=0)
    def half() -> float:
        rt.sleep(1)
        return rt.now()

    r1 = on_a100.remote()
    halves = [half.remote() for _ in range(4)]
    assert rt.get(r1) == 1 and _started_on(b, r1.id) == "gpu-0"
    assert rt.get(halves) == [1.0, 1.0, 1.0, 1.0]  # 4 x 0.5 GPU fit in 2 GPUs at once
    assert [n["NodeID"] for n in rt.nodes()] == ["cpu-0", "gpu-0"]


def test_a_user_policy_object_places_tasks(sim):
    """A policy written in a few lines decides placements (here: the last node by id)."""

    class LastFit:
        name = "last_fit"
        calls = 0

        def schedule(self, pending, cluster):
            LastFit.calls += 1
            out = []
            for task in pending:
                nodes = list(cluster.fitting(task))
                if nodes:
                    out.append(Place(task.id, nodes[-1].id))
                    break  # one per round keeps this toy policy simple
            return out

    b = sim(nodes=NODES, policy=LastFit())

    @rt.remote
    def f() -> int:
        return 1

    ref = f.remote()
    assert rt.get(ref) == 1 and _started_on(b, ref.id) == "gpu-0"
    assert LastFit.calls >= 1


def test_an_invalid_placement_raises_policy_error(sim):
    """A policy placing on an unknown node raises PolicyError naming policy and task."""

    class Wrong:
        name = "wrong"

        def schedule(self, pending, cluster):
            return [Place(t.id, "nowhere") for t in pending]

    sim(nodes=NODES, policy=Wrong())

    @rt.remote
    def f() -> int:
        return 1

    with pytest.raises(rt.PolicyError, match="'wrong'.*'.*f'.*nowhere"):
        rt.get(f.remote())


def test_speed_table_divides_sim_duration(sim):
    """speeds={kind: {model: s}} divides sim_duration by s on nodes of that model."""
    sim(nodes=NODES, speeds={"train": {"A100": 4.0}})

    @rt.remote(kind="train", accelerator_type="A100", sim_duration=8)
    def train() -> float:
        return 0.0

    @rt.remote(kind="other", accelerator_type="A100", sim_duration=8)
    def other() -> float:
        return 0.0

    rt.get(train.remote())
    assert rt.now() == 2.0
    rt.get(other.remote())
    assert rt.now() == 10.0


def test_sim_duration_callable_of_arguments(sim):
    """A callable sim_duration gets the task's (resolved) arguments."""
    sim(num_cpus=1)

    @rt.remote(sim_duration=lambda n: n * 0.5)
    def work(n: int) -> int:
        return n

    assert rt.get(work.remote(rt.put(6))) == 6 and rt.now() == 3.0

    @rt.remote(sim_duration=lambda: -1)
    def broken() -> None:
        return None

    with pytest.raises(ValueError, match="sim_duration"):
        rt.get(broken.remote())


def test_events_carry_virtual_time_and_feed_the_status_view(sim):
    """Subscribers see submitted / the decision round and its placement / started /
    finished with virtual times; status shows them."""
    b = sim(nodes=NODES)
    seen = []
    rt.subscribe(lambda e: seen.append((e.time, e.kind, e.node)))

    @rt.remote(sim_duration=3)
    def f() -> int:
        return 1

    rt.get(f.remote())
    assert seen == [(0.0, "task_submitted", None), (0.0, "decision_round", None),
                    (0.0, "task_placed", "cpu-0"), (0.0, "task_started", "cpu-0"),
                    (3.0, "task_finished", "cpu-0")]
    text = repr(rt.ClusterHandle(b))
    assert "sim cluster" in text and "3s (virtual)" in text and "finished 1" in text


def test_node_failure_retries_then_crashes(sim):
    """fail_node: a task with retries left runs again elsewhere; without, WorkerCrashedError."""
    b = sim(nodes=[{"name": "n", "resources": {"CPU": 1}, "count": 3}])

    @rt.remote(max_retries=1, sim_duration=10)
    def job() -> str:
        return "ok"

    ref = job.remote()
    rt.sleep(1)
    b.fail_node(_started_on(b, ref.id))
    assert rt.get(ref) == "ok" and rt.now() == 11.0

    fragile = job.options(max_retries=0).remote()
    rt.sleep(1)
    b.fail_node(_started_on(b, fragile.id))
    with pytest.raises(rt.WorkerCrashedError):
        rt.get(fragile)
    assert len(rt.nodes()) == 1


def test_autoscaler_adds_a_node_after_its_boot_latency(sim):
    """A task no current node fits waits for an autoscaler's node to boot, then runs."""

    class AddGpu:
        name = "add_gpu"

        def decide(self, unmet, cluster, node_types):
            booting = any(n.state == "booting" for n in cluster.nodes())
            if unmet and not booting and not any(n.node_type == "gpu" for n in cluster.nodes()):
                return ScaleDecision(add={"gpu": 1}, reason="gpu demand")
            return ScaleDecision()

    b = sim(nodes=[{"name": "cpu", "resources": {"CPU": 2}}], autoscaler=AddGpu(),
            node_types=[{"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "count": 0,
                         "boot_latency": 30, "max_count": 2}])

    @rt.remote(num_gpus=1, sim_duration=5)
    def g() -> float:
        return rt.now()

    assert rt.get(g.remote()) == 30.0 and rt.now() == 35.0
    decisions = [e for e in b.trace if e[1] == EventKind.SCALE_DECISION]
    assert len(decisions) == 1
    assert [n["NodeType"] for n in rt.nodes()] == ["cpu", "gpu"]


@pytest.mark.parametrize("policy", sorted(__import__("runtime.policies", fromlist=["POLICIES"])
                                          .POLICIES))
def test_every_registered_policy_runs_a_mixed_workload(sim, policy):
    """Each built-in policy, by name, places a mixed CPU/GPU workload with nesting."""
    sim(nodes=NODES, policy=policy)

    @rt.remote(sim_duration=1)
    def cpu(i: int) -> int:
        return i

    @rt.remote(num_gpus=1, sim_duration=2, kind="train")
    def gpu(i: int) -> int:
        return rt.get(cpu.remote(i)) * 10

    refs = [cpu.remote(i) for i in range(6)] + [gpu.remote(i) for i in range(3)]
    assert rt.get(refs) == [0, 1, 2, 3, 4, 5, 0, 10, 20]
    assert rt.available_resources() == {"CPU": 4.0, "GPU": 2.0}


def test_demand_autoscaler_boots_then_removes_an_idle_node(sim):
    """The built-in "demand" autoscaler adds a GPU node (booting 30 s) for GPU demand and
    removes it once it has been idle for its idle timeout while the driver sleeps."""
    from runtime.autoscaling import DemandAutoscaler

    b = sim(nodes=[{"name": "cpu", "resources": {"CPU": 2}}],
            autoscaler=DemandAutoscaler(idle_timeout=60),
            node_types=[{"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "count": 0,
                         "boot_latency": 30, "max_count": 2}])

    @rt.remote(num_gpus=1, sim_duration=5)
    def g() -> float:
        return rt.now()

    assert rt.get(g.remote()) == 30.0
    assert [n["NodeType"] for n in rt.nodes()] == ["cpu", "gpu"]
    rt.sleep(300)
    assert [n["NodeType"] for n in rt.nodes()] == ["cpu"]
    removed = [e for e in b.trace if e[1] == EventKind.NODE_REMOVED]
    assert len(removed) == 1 and 95.0 <= removed[0][0] <= 100.0


def test_autoscaler_that_cannot_help_still_reports_deadlock(sim):
    """With an autoscaler at its max count, a task that fits no live node ends in
    SimDeadlock (not an endless wait)."""
    from runtime.autoscaling import DemandAutoscaler

    sim(nodes=[{"name": "cpu", "resources": {"CPU": 1}}], autoscaler=DemandAutoscaler(),
        node_types=[{"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "count": 0,
                     "max_count": 0}])

    @rt.remote(num_gpus=1)
    def g() -> int:
        return 1

    with pytest.raises((rt.SimDeadlock, rt.InfeasibleRequestError)):
        rt.get(g.remote())


def test_priority_policy_preempts_and_reruns_the_victim(sim):
    """With the "priority" policy a high-priority task preempts a running low-priority one,
    which goes back to pending and runs again from the start afterwards."""
    b = sim(num_cpus=1, policy="priority")
    runs: list[str] = []

    @rt.remote
    def job(tag: str, seconds: float) -> tuple[str, float]:
        runs.append(tag)
        time.sleep(seconds)
        return tag, rt.now()

    low = job.options(priority=0).remote("low", 10)
    rt.sleep(2)
    high = job.options(priority=10).remote("high", 3)
    assert rt.get(high) == ("high", 5.0)
    assert rt.get(low) == ("low", 15.0)
    assert runs == ["low", "high", "low"]
    assert [e[2] for e in b.trace if e[1] == EventKind.TASK_PREEMPTED] == [low.id]


def test_actors_are_never_preempted(sim):
    """An actor's resources are not a preemption victim; the task waits instead."""
    sim(num_cpus=1, policy="priority")

    @rt.remote(num_cpus=1)
    class Holder:
        def ping(self) -> str:
            return "pong"

    h = Holder.remote()
    assert rt.get(h.ping.remote()) == "pong"

    @rt.remote(priority=10)
    def urgent() -> int:
        return 1

    ref = urgent.remote()
    with pytest.raises(rt.SimDeadlock):
        rt.get(ref)
    assert rt.get(h.ping.remote()) == "pong"


def test_autoscaler_ticks_stop_when_only_stale_timers_are_left(sim):
    """A cancelled long sleeper leaves a timer in the queue; with an autoscaler and an
    unplaceable task the driver still gets SimDeadlock (no endless ticking)."""
    from runtime.autoscaling import DemandAutoscaler

    sim(nodes=[{"name": "cpu", "resources": {"CPU": 1}}], autoscaler=DemandAutoscaler(),
        node_types=[{"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "count": 0,
                     "max_count": 0}], autoscale_interval=0.001)

    @rt.remote
    def sleeper() -> None:
        time.sleep(1e7)

    s = sleeper.remote()
    rt.sleep(1)
    rt.cancel(s)

    @rt.remote(num_gpus=1)
    def g() -> int:
        return 1

    with pytest.raises((rt.SimDeadlock, rt.InfeasibleRequestError)):
        rt.get(g.remote())


def test_scale_by_hand_boots_nodes_and_removes_idle_ones(sim):
    """backend.scale(type, n) adds booting nodes (up after boot_latency) or removes idle ones."""
    b = sim(nodes=[{"name": "w", "resources": {"CPU": 1}, "boot_latency": 5}])
    b.scale("w", 3)
    assert [n["State"] for n in rt.nodes()] == ["up", "booting", "booting"]
    rt.sleep(5)
    assert [n["State"] for n in rt.nodes()] == ["up", "up", "up"]
    b.scale("w", 1)
    assert [n["NodeID"] for n in rt.nodes()] == ["w-0"]
    with pytest.raises(ValueError, match="node_type='nope'"):
        b.scale("nope", 1)
