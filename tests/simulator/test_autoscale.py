"""The simulator's side of autoscaling: boot latency, clamps, idle removal, cost (RELIABILITY 21)."""

from __future__ import annotations

import re

import pytest

from runtime.autoscaling import AUTOSCALERS, ScaleDecision
from runtime.errors import PolicyError
from runtime.events import EventKind
from simulator.cluster import ClusterConfig
from simulator.devices import DEVICES
from simulator.engine import Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.base import SimTask

pytestmark = pytest.mark.timeout(60)

SCALERS = sorted(n for n in AUTOSCALERS if n != "none")


def elastic(max_gpu: int = 3, boot: float = 120.0) -> ClusterConfig:
    return ClusterConfig([
        NodeSpec("head", cpus=4, count=1, min_count=1, max_count=1),
        NodeSpec("gpu", DEVICES["V100"], 2, cpus=4, count=0, max_count=max_gpu,
                 boot_latency=boot, cost_per_hour=1.0),
    ], name="elastic")


def waves() -> list[SimTask]:
    first = [SimTask(i, 0.0, 300.0, {"CPU": 1, "GPU": 1}, name="train") for i in range(20)]
    second = [SimTask(100 + i, 20_000.0, 300.0, {"CPU": 1, "GPU": 1}, name="train")
              for i in range(4)]
    return first + second


def live_nodes_over_time(sim: Simulation, node_type: str) -> list[int]:
    live, out = 0, []
    for e in sim.trace.events():
        if e.kind == EventKind.NODE_ADDED and e.data["node_type"] == node_type:
            live += 1
        elif e.kind == EventKind.NODE_REMOVED and e.node.startswith(node_type + "-"):
            live -= 1
        out.append(live)
    return out


@pytest.mark.parametrize("scaler", SCALERS)
def test_boot_latency_clamp_and_idle_removal(scaler):
    """Nodes start work only after booting, never exceed max_count, and idle ones are removed."""
    sim = Simulation(elastic(), waves(), autoscaler=scaler, seed=1).run()
    m = sim.metrics()
    assert m["finished"] == 24
    first_start = min(e.time for e in sim.trace.events() if e.kind == EventKind.TASK_STARTED)
    assert first_start >= 120.0
    assert max(live_nodes_over_time(sim, "gpu")) <= 3
    assert m["scale_ups"] >= 1 and m["scale_downs"] >= 1
    removed_at = [e.time for e in sim.trace.events() if e.kind == EventKind.NODE_REMOVED]
    assert any(300 < t < 20_000 for t in removed_at), "idle nodes stay between the waves"
    assert all(e.data for e in sim.trace.events() if e.kind == EventKind.SCALE_DECISION)


def test_cost_accrues_per_node_hour():
    """Cost = price x node-hours, from the moment a node exists to the end of the run."""
    cluster = ClusterConfig([NodeSpec("n", cpus=1, count=2, cost_per_hour=3.6)])
    sim = Simulation(cluster, [SimTask(0, 0.0, 1000.0, {"CPU": 1})]).run()
    assert sim.metrics()["cost"] == pytest.approx(2 * 3.6 * 1000.0 / 3600.0)


def test_booting_nodes_cost_money():
    """A node costs from its request (booting) on: boot 100 s + run 300 s on a $3.6/h node."""
    cluster = ClusterConfig([NodeSpec("n", cpus=1, count=0, max_count=1, boot_latency=100.0,
                                      cost_per_hour=3.6)])
    sim = Simulation(cluster, [SimTask(0, 0.0, 300.0, {"CPU": 1})], autoscaler="demand").run()
    assert sim.metrics()["makespan"] == pytest.approx(400.0)
    assert sim.metrics()["cost"] == pytest.approx(3.6 * 400.0 / 3600.0)


def test_infeasible_request_launches_nothing():
    """A request no node type fits fails fast and never launches a node."""
    for scaler in SCALERS:
        sim = Simulation(elastic(), [SimTask(0, 0.0, 1.0, {"TPU": 1})], autoscaler=scaler).run()
        assert type(sim.errors[0]).__name__ == "InfeasibleRequestError"
        assert sim.scale_ups == 0


class _Greedy:
    """Asks for 50 GPU nodes on every tick."""

    name = "greedy"

    def decide(self, unmet, cluster, node_types):
        return ScaleDecision(add={"gpu": 50}, infeasible=[t.id for t in unmet], reason="more")


def test_driver_clamps_and_reports_infeasible_once():
    """A greedy autoscaler is clamped to max_count; each infeasible id is reported once."""
    sim = Simulation(elastic(max_gpu=2), waves()[:6], autoscaler=_Greedy()).run()
    assert max(live_nodes_over_time(sim, "gpu")) == 2
    reported = [t for e in sim.trace.events() if e.kind == EventKind.SCALE_DECISION
                for t in e.data["infeasible"]]
    assert len(reported) == len(set(reported))


class _Unknown:
    name = "typo"

    def decide(self, unmet, cluster, node_types):
        return ScaleDecision(add={"gpux": 1})


def test_unknown_node_type_is_a_policy_error():
    """Asking for a node type that does not exist is rejected with a PolicyError naming the
    autoscaler and the type (as on every backend); nothing is added, the run ends and the
    GPU tasks (which only a GPU node could run) are still pending, not lost."""
    sim = Simulation(elastic(), waves()[:2], autoscaler=_Unknown()).run()
    assert sim.policy_errors
    for err in sim.policy_errors:
        assert isinstance(err, PolicyError)
        assert re.search(r"autoscaler 'typo' asked for unknown node type 'gpux'", str(err))
    assert sim.scale_ups == 0
    assert sim.metrics()["finished"] == 0 and sim.pending_count == 2


def test_short_idle_dip_removes_nothing():
    """A 30 s idle gap (shorter than the demand autoscaler's 60 s idle timeout) removes no node."""
    cluster = ClusterConfig([NodeSpec("n", cpus=2, count=2, max_count=2)])
    tasks = [SimTask(0, 0.0, 100.0, {"CPU": 2}), SimTask(1, 0.0, 100.0, {"CPU": 2}),
             SimTask(2, 130.0, 100.0, {"CPU": 2}), SimTask(3, 130.0, 100.0, {"CPU": 2})]
    sim = Simulation(cluster, tasks, autoscaler="demand").run()
    assert sim.scale_downs == 0
    assert sim.metrics()["makespan"] == pytest.approx(230.0)


def test_utilization_series_follows_changing_capacity():
    """Per-bin GPU utilization never exceeds 1 while nodes come and go, and averages to util_GPU."""
    from simulator.metrics import utilization_series

    sim = Simulation(elastic(), waves(), autoscaler="demand", seed=1).run()
    t, u = utilization_series(sim, "GPU", bins=400)
    assert u.max() <= 1.0 + 1e-9 and u.max() > 0.9
    assert (u >= 0).all()
