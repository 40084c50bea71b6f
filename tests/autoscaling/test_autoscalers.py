"""Autoscalers, tested with no cluster at all (as Dask's test_adaptive_core.py does)."""

from __future__ import annotations

import pytest

from runtime.autoscaling import (
    AUTOSCALERS,
    DemandAutoscaler,
    NodeType,
    ScaleDecision,
    TargetUtilization,
    get_autoscaler,
)
from runtime.control import ClusterIndex
from runtime.policies import get_policy

from ..policies.helpers import task

pytestmark = pytest.mark.timeout(60)

TYPES = {
    "cpu": NodeType("cpu", {"CPU": 4}, cost_per_hour=0.5, boot_latency=10.0),
    "gpu1": NodeType("gpu1", {"CPU": 4, "GPU": 1}, {"accelerator_type": "T4"}, 1.0, 10.0,
                     max_count=3),
    "gpu4": NodeType("gpu4", {"CPU": 16, "GPU": 4}, {"accelerator_type": "A100"}, 3.0, 30.0),
}


class Driver:
    """Enacts decisions on a ClusterIndex the way a backend would (booting, then up)."""

    def __init__(self, types: dict[str, NodeType], register_booting: bool = True) -> None:
        self.idx = ClusterIndex()
        self.types = types
        self.register = register_booting
        self.booting: list[tuple[float, str]] = []
        self.n = 0
        self.launched: dict[str, int] = {}

    def enact(self, d: ScaleDecision) -> None:
        for name, k in d.add.items():
            nt = self.types[name]
            self.launched[name] = self.launched.get(name, 0) + k
            for _ in range(k):
                nid = f"{name}-{self.n:04d}"
                self.n += 1
                if self.register:
                    self.idx.add_node(nid, name, nt.resources, nt.labels, state="booting",
                                      cost_per_hour=nt.cost_per_hour)
                self.booting.append((self.idx.now + nt.boot_latency, nid))
        for nid in d.remove:
            assert not self.idx.tasks_on(nid)
            self.idx.remove_node(nid)

    def tick(self, now: float) -> None:
        self.idx.now = now
        for at, nid in list(self.booting):
            if at <= now and self.register:
                self.idx.set_state(nid, "up")
                self.booting.remove((at, nid))


def test_demand_packs_into_cheapest_fitting_types_within_max() -> None:
    d = DemandAutoscaler()
    idx = ClusterIndex()
    unmet = [task(i, CPU=1, GPU=1) for i in range(5)] + [task(10 + i, CPU=2) for i in range(3)]
    dec = d.decide(unmet, idx, TYPES)
    # GPU tasks: 3 x gpu1 (max_count 3), the other 2 on one gpu4; CPU tasks fit in the room
    # left on those (4 CPU - 1 on each gpu1: 3 x 3 CPU free) -> no cpu node needed
    assert dec.add == {"gpu1": 3, "gpu4": 1}
    assert dec.remove == [] and dec.infeasible == []
    only_cpu = DemandAutoscaler().decide([task(i, CPU=2) for i in range(5)], ClusterIndex(), TYPES)
    assert only_cpu.add == {"cpu": 3}


def test_demand_accelerator_type_is_matched() -> None:
    dec = DemandAutoscaler().decide([task(1, accel="A100", GPU=1)], ClusterIndex(), TYPES)
    assert dec.add == {"gpu4": 1}


def test_demand_does_not_relaunch_for_booting_or_in_flight_nodes() -> None:
    for register in (True, False):
        drv = Driver(TYPES, register_booting=register)
        a = DemandAutoscaler(launch_grace=5.0)
        unmet = [task(i, CPU=2) for i in range(4)]
        drv.enact(a.decide(unmet, drv.idx, TYPES))
        assert drv.launched == {"cpu": 2}
        for t in (1.0, 5.0, 9.0):
            drv.tick(t)
            assert a.decide(unmet, drv.idx, TYPES).add == {}
        if not register:
            # the launch never showed up: after boot_latency + grace it may be retried once
            drv.tick(16.0)
            drv.enact(a.decide(unmet, drv.idx, TYPES))
            assert drv.launched == {"cpu": 4}
            drv.tick(17.0)
            assert a.decide(unmet, drv.idx, TYPES).add == {}


def test_infeasible_reported_once_and_never_launched() -> None:
    a = DemandAutoscaler()
    idx = ClusterIndex()
    unmet = [task(1, TPU=1), task(2, CPU=64), task(3, CPU=1)]
    first = a.decide(unmet, idx, TYPES)
    assert first.infeasible == [1, 2] and first.add == {"cpu": 1}
    assert "infeasible" in first.reason
    second = a.decide(unmet, idx, TYPES)
    assert second.infeasible == [] and second.add == {}
    # a node type that may never have a node (max_count 0) cannot make a task feasible
    never = {"gpu": NodeType("gpu", {"CPU": 1, "GPU": 1}, max_count=0)}
    assert DemandAutoscaler().decide([task(7, GPU=1)], idx, never).infeasible == [7]


def test_idle_timeout_with_hysteresis_and_min_count() -> None:
    for min_count in (1, 0):
        types = {"cpu": NodeType("cpu", {"CPU": 4}, min_count=min_count)}
        idx = ClusterIndex()
        for i in range(3):
            idx.add_node(f"n{i}", "cpu", {"CPU": 4})
        a = DemandAutoscaler(idle_timeout=60.0)
        idx.now = 30.0
        assert a.decide([], idx, types).remove == []  # idle only 30 s
        idx.now = 40.0
        idx.allocate(task(1), "n0")  # n0 works for a moment: its idle clock restarts
        idx.now = 50.0
        idx.release(1)
        idx.now = 61.0
        dec = a.decide([], idx, types)
        assert dec.remove == ["n1", "n2"] and dec.add == {}
        for nid in dec.remove:
            idx.remove_node(nid)
        idx.now = 100.0
        assert a.decide([], idx, types).remove == []  # n0 idle 50 s only
        idx.now = 111.0
        assert a.decide([], idx, types).remove == ([] if min_count else ["n0"])


def test_idle_nodes_kept_when_unmet_work_could_run_there() -> None:
    idx = ClusterIndex()
    idx.add_node("n0", "cpu", {"CPU": 4})
    idx.now = 1000.0
    dec = DemandAutoscaler(idle_timeout=1.0).decide([task(1, CPU=2)], idx, TYPES)
    assert dec.remove == [] and dec.add == {}


def test_min_and_max_counts_are_clamps() -> None:
    types = {"cpu": NodeType("cpu", {"CPU": 1}, min_count=2, max_count=4)}
    a = DemandAutoscaler()
    idx = ClusterIndex()
    dec = a.decide([], idx, types)
    assert dec.add == {"cpu": 2}
    dec = DemandAutoscaler().decide([task(i) for i in range(10)], ClusterIndex(), types)
    assert dec.add == {"cpu": 4} and "max_count" in dec.reason
    # over max: idle surplus goes at once
    idx = ClusterIndex()
    for i in range(6):
        idx.add_node(f"n{i}", "cpu", {"CPU": 1})
    assert DemandAutoscaler().decide([], idx, types).remove == ["n0", "n1"]


def test_target_scales_up_to_reach_the_target() -> None:
    idx = ClusterIndex()
    for i in range(2):
        idx.add_node(f"n{i}", "cpu", {"CPU": 4})
        for j in range(4):
            idx.allocate(task(10 * i + j), f"n{i}")
    from ..policies.test_policies import PlainView

    unmet = [task(100 + i) for i in range(4)]
    for view in (idx, PlainView(idx)):
        dec = TargetUtilization(target=0.75, tolerance=0.05).decide(unmet, view,
                                                                    {"cpu": TYPES["cpu"]})
        assert dec.add == {"cpu": 2}  # load 12 / 0.75 = 16 CPU wanted, 8 there
    # below target + tolerance: nothing
    idx2 = ClusterIndex()
    idx2.add_node("n0", "cpu", {"CPU": 4})
    idx2.allocate(task(1, CPU=3), "n0")
    assert TargetUtilization(target=0.75, tolerance=0.05).decide([], idx2, TYPES).add == {}


def test_target_accelerator_demand_goes_to_that_model() -> None:
    idx = ClusterIndex()
    idx.add_node("g", "gpu1", {"CPU": 4, "GPU": 1}, {"accelerator_type": "T4"})
    dec = TargetUtilization().decide([task(2, accel="A100", CPU=1, GPU=1)], idx, TYPES)
    assert dec.add == {"gpu4": 1}  # the idle T4 cannot host it; an A100 node can
    idx.allocate(task(1, CPU=1, GPU=1), "g")  # now the T4 GPU is 100% busy (> 0.7 + 0.1)
    dec = TargetUtilization().decide([task(2, accel="A100", CPU=1, GPU=1)], idx, TYPES)
    assert dec.add == {"gpu1": 1, "gpu4": 1}


def test_target_scale_down_needs_a_sustained_drop() -> None:
    types = {"cpu": NodeType("cpu", {"CPU": 4})}
    idx = ClusterIndex()
    for i in range(4):
        idx.add_node(f"n{i}", "cpu", {"CPU": 4})
    a = TargetUtilization(target=0.5, tolerance=0.1, scale_down_delay=60.0)
    for i in range(8):  # 8 of 16 CPU busy: exactly the target
        idx.allocate(task(i), f"n{i // 2}")
    for t in (0.0, 30.0, 60.0):
        idx.now = t
        assert a.decide([], idx, types).empty
    for i in range(8):  # a dip: everything idle at t=70 ...
        idx.release(i)
    idx.now = 70.0
    assert a.decide([], idx, types).remove == []  # the window still wants 16 CPU
    idx.now = 110.0
    assert a.decide([], idx, types).remove == []  # t=60 sample still in the window
    idx.now = 125.0  # ... sustained for more than the window: now idle nodes go
    assert a.decide([], idx, types).remove == ["n0", "n1", "n2", "n3"]


def test_target_infeasible_once_and_clamped_to_max() -> None:
    a = TargetUtilization()
    idx = ClusterIndex()
    dec = a.decide([task(1, TPU=1)] + [task(10 + i, GPU=1, CPU=1) for i in range(20)],
                   idx, {"gpu1": TYPES["gpu1"]})
    assert dec.infeasible == [1] and dec.add == {"gpu1": 3}
    assert a.decide([task(1, TPU=1)], idx, {"gpu1": TYPES["gpu1"]}).infeasible == []


def test_closed_loop_never_launches_endlessly() -> None:
    for name in ("demand", "target"):
        drv = Driver(TYPES)
        a = get_autoscaler(name)
        pending = [task(i, CPU=1, GPU=1) for i in range(6)] + [task(50, TPU=1)]
        reported = []
        halfway: dict[str, int] = {}
        for step in range(40):
            if step == 20:
                halfway = dict(drv.launched)
            drv.tick(float(step * 5))
            pol = get_policy("best_fit")
            for p in pol.schedule(pending, drv.idx):
                t = next(t for t in pending if t.id == p.task)
                drv.idx.allocate(t, p.node)
                pending.remove(t)
            dec = a.decide(pending, drv.idx, TYPES)
            reported += dec.infeasible
            drv.enact(dec)
        assert [t.id for t in pending] == [50] and reported == [50]
        assert drv.launched == halfway  # launches stopped: demand met, target reached
        if name == "demand":
            assert drv.launched == {"gpu1": 3, "gpu4": 1}
        else:  # 6 GPUs busy at target 0.7 (+0.1) want more than 7 GPUs: one more gpu4
            assert drv.launched == {"gpu1": 3, "gpu4": 2}


def test_get_autoscaler_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown autoscaler name 'demnd'.*demand, none, target"):
        get_autoscaler("demnd")
    with pytest.raises(TypeError, match="decide"):
        get_autoscaler(3.5)
    with pytest.raises(ValueError, match="idle_timeout must be a number >= 0, got -1"):
        get_autoscaler("demand", idle_timeout=-1)
    with pytest.raises(ValueError, match="target must be a number > 0 and <= 1, got 1.5"):
        TargetUtilization(target=1.5)
    assert set(AUTOSCALERS) >= {"none", "demand", "target"}


def test_idle_clock_survives_fresh_snapshots_and_plain_views() -> None:
    # a backend that builds a new ClusterIndex per decision (its idle clocks restart) and
    # a view that only has the bare ClusterState protocol both age idleness correctly
    from ..policies.test_policies import PlainView

    types = {"cpu": NodeType("cpu", {"CPU": 2})}

    def snap(now: float, busy: bool) -> ClusterIndex:
        idx = ClusterIndex()
        idx.now = now
        idx.add_node("n0", "cpu", {"CPU": 2})
        if busy:
            idx.allocate(task(1), "n0")
        return idx

    for wrap in (lambda i: i, PlainView):
        a = DemandAutoscaler(idle_timeout=30.0)
        assert a.decide([], wrap(snap(0.0, False)), types).remove == []
        assert a.decide([], wrap(snap(20.0, True)), types).remove == []  # busy: clock resets
        assert a.decide([], wrap(snap(40.0, False)), types).remove == []
        assert a.decide([], wrap(snap(60.0, False)), types).remove == []  # idle 20 s only
        assert a.decide([], wrap(snap(71.0, False)), types).remove == ["n0"]
