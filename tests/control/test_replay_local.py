"""Decision equivalence on the local backend: a real run's event stream, replayed into a fresh
control plane with the same policy (or autoscaler), reproduces every decision the run made."""

from __future__ import annotations

import pytest

import runtime
from runtime.autoscaling import DemandAutoscaler, TargetUtilization
from runtime.control.replay import Recorder, replay
from runtime.events import EventKind as K
from runtime.policies import POLICIES

from . import program

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def _record(**init) -> tuple[list, object]:
    runtime.init(**init)
    b = runtime.current_backend()
    return Recorder(b).events, b


def _kinds(rep) -> dict[str, int]:
    return rep.counts()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_replays_to_the_same_decisions(name):
    """Placements (also those sent ahead), lender resumptions and rounds: all reproduced."""
    events, b = _record(nodes=program.NODES, policy=name)
    try:
        program.mixed()
        if name == "priority":
            program.saturate_then_urgent()
    finally:
        runtime.shutdown()
    rep = replay(events, name, node_types=b.plane.node_types.values(), window=256,
                 send_ahead=lambda shape: 1)
    assert not rep.mismatches(), "\n".join(rep.mismatches())
    counts = _kinds(rep)
    assert counts.get(K.TASK_PLACED, 0) >= 25, counts
    assert counts.get(K.DECISION_ROUND, 0) >= 3, counts
    if name == "priority":
        assert counts.get(K.TASK_PREEMPTED, 0) >= 1, counts


@pytest.mark.parametrize("make", [lambda: DemandAutoscaler(idle_timeout=0.3),
                                  lambda: TargetUtilization(scale_down_delay=0.3)],
                         ids=["demand", "target"])
def test_every_autoscaler_replays_to_the_same_scale_decisions(make):
    """Scale-ups for GPU demand and scale-downs of idle nodes: reproduced decision by decision."""
    types = [{"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "count": 0, "max_count": 2,
              "accelerator_type": "T4"}]
    events, b = _record(num_cpus=1, autoscaler=make(), node_types=types)
    try:
        refs = [program.work.options(num_gpus=1).remote(0.2, i) for i in range(4)]
        runtime.get(refs, timeout=60)
        runtime.get(program.work.remote(0.1), timeout=60)
        deadline = __import__("time").monotonic() + 20
        while any(n["NodeID"].startswith("gpu") for n in runtime.nodes()):
            assert __import__("time").monotonic() < deadline, "idle GPU nodes were not removed"
            runtime.sleep(0.1)
    finally:
        runtime.shutdown()
    rep = replay(events, "fifo", make(), node_types=b.plane.node_types.values(), window=256,
                 send_ahead=lambda shape: 1)
    assert not rep.mismatches(), "\n".join(rep.mismatches())
    scale = [e for e in rep.recorded if e.kind == K.SCALE_DECISION]
    assert any(e.data["add"] for e in scale) and any(e.data["remove"] for e in scale), scale


def test_a_different_policy_does_not_replay_to_the_same_decisions():
    """The check can fail: the same stream replayed with another policy differs."""
    events, b = _record(nodes=program.NODES, policy="best_fit")
    try:
        program.mixed()
    finally:
        runtime.shutdown()
    same = replay(events, "best_fit", node_types=b.plane.node_types.values(),
                  send_ahead=lambda shape: 1)
    other = replay(events, "spread", node_types=b.plane.node_types.values(),
                   send_ahead=lambda shape: 1)
    assert not same.mismatches() and other.mismatches()
