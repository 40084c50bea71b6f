"""The simulator's fast paths decide exactly what the general paths decide.

The index's ``first_fitting`` (the head of ``fitting``), the Ledger's holds on the
index, the control plane's per-shape queues for policies that declare
``greedy_by_shape`` and the engine's bare heap callbacks.
"""

from __future__ import annotations

import random
import re

import pytest

from runtime.cluster import Place, TaskInfo
from runtime.control import ClusterIndex
from runtime.errors import PolicyError
from runtime.policies import BestFit, FirstFit, Spread, get_policy
from runtime.policies.ledger import Ledger
from runtime.resources import Resources
from simulator.cluster import ClusterConfig, bench_cluster
from simulator.devices import DEVICES
from simulator.engine import Core, Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.arrivals import JobMix
from simulator.workloads.base import Exp, Shape

pytestmark = pytest.mark.timeout(60)

SHAPES = [Resources({"CPU": 1}), Resources({"CPU": 4}), Resources({"CPU": 1, "GPU": 1}),
          Resources({"CPU": 2, "GPU": 2}), Resources({"CPU": 1, "TPU": 1}),
          Resources({"CPU": 40})]


def _state(nodes: int = 60) -> ClusterIndex:
    cl = bench_cluster(nodes)
    st = ClusterIndex()
    for spec in cl.node_specs:
        for i in range(spec.count):
            st.add_node(f"{spec.name}-{i:06d}", spec, state="up")
    return st


def _snapshot(st: ClusterIndex) -> tuple:
    return (sorted((n.id, n.free) for n in st.records().values()),
            sorted(st.free_total.items()))


def test_first_fitting_is_the_head_of_fitting_in_every_order() -> None:
    """On random fill levels, first_fitting equals next(fitting()) for each order and shape."""
    rng = random.Random(7)
    st = _state()
    running: list[tuple[TaskInfo, str]] = []
    tid = 0
    for step in range(400):
        req = rng.choice(SHAPES)
        accel = rng.choice([None, None, "A100"]) if "GPU" in req else None
        task = TaskInfo(tid, "t", req, accelerator_type=accel)
        tid += 1
        for order in ("id", "tightest", "loosest"):
            want = next(iter(st.fitting(task, order)), None)  # type: ignore[arg-type]
            got = st.first_fitting(task, order)  # type: ignore[arg-type]
            assert (got.id if got else None) == (want.id if want else None), (step, order, req)
        node = st.first_fitting(task, rng.choice(["id", "tightest", "loosest"]))  # type: ignore[arg-type]
        if node is not None and rng.random() < 0.7:
            n = st.record(node.id)
            st.allocate_vec(task, n, n.group.reqvec(req))
            running.append((task, node.id))
        if running and rng.random() < 0.3:
            done, nid = running.pop(rng.randrange(len(running)))
            st.release(done.id)
    with pytest.raises(ValueError, match="order="):
        st.first_fitting(TaskInfo(0, "t", SHAPES[0]), "best")  # type: ignore[arg-type]


def test_ledger_holds_on_the_sim_state_and_restores_it_exactly() -> None:
    """The Ledger holds on the index itself: holds show within the call, vanish after."""
    st = _state(10)
    before = _snapshot(st)
    big = TaskInfo(1, "t", Resources({"CPU": 20}))
    with Ledger(st) as ledger:
        assert ledger.owner
        placed = [ledger.place(TaskInfo(i, "t", big.request), "tightest") for i in range(40)]
        # 20 of 32 CPUs per CPU/A100/H100 node: one such task per node, none on 16-CPU nodes
        hosts = [p.node for p in placed if p is not None]
        assert len(hosts) == len(set(hosts)) == 2 + 2 + 2
        assert st.holding
    assert not st.holding
    assert _snapshot(st) == before


def test_a_hold_beyond_free_capacity_clamps_at_zero_and_rolls_back() -> None:
    """A tentative hold never makes capacity negative; rollback restores the exact vector."""
    st = _state(5)
    nid = "cpu-000000"
    before = _snapshot(st)
    info = st.hold(nid, Resources({"CPU": 100}))
    assert info.free.get("CPU", 0.0) == 0.0
    assert all(v >= 0 for v in st.record(nid).free)
    st.rollback()
    assert _snapshot(st) == before and not st.holding


class _Plain:
    """A greedy policy without the greedy_by_shape declaration (the engine keeps per-tenant
    queues): the old, general path."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = f"{inner.name}_plain"  # type: ignore[attr-defined]

    def schedule(self, pending, cluster):  # noqa: ANN001, ANN201
        return self.inner.schedule(pending, cluster)  # type: ignore[attr-defined]


def _saturated(policy: object, seed: int = 3) -> Simulation:
    cluster = ClusterConfig([
        NodeSpec("cpu", cpus=8, count=3),
        NodeSpec("v100", DEVICES["V100"], 2, cpus=8, count=2),
        NodeSpec("tpu", DEVICES["TPUv4"], 4, cpus=8, count=1),
    ], name="sat")
    shapes = [Shape(Resources({"CPU": 1}), "c", Exp(20.0), weight=3.0),
              Shape(Resources({"CPU": 2, "GPU": 1}), "g", Exp(30.0)),
              Shape(Resources({"CPU": 1, "TPU": 2}), "t", Exp(25.0))]
    wl = JobMix(1500, 2.0, shapes, tenants={"a": 1.0, "b": 2.0, "c": 1.0})
    return Simulation(cluster, wl, policy=policy, seed=seed, failures=False).run()


@pytest.mark.parametrize("name,cls", [("best_fit", BestFit), ("fifo", FirstFit),
                                      ("spread", Spread)])
def test_shape_queues_give_the_same_trace_as_per_tenant_queues(name, cls) -> None:
    """A greedy policy (greedy by shape) and the same policy without the flag: identical
    traces (the per-shape queues change no decision)."""
    fast = _saturated(name)
    plain = _saturated(_Plain(cls()))
    assert fast.plane.queue.by_shape and not plain.plane.queue.by_shape
    assert fast.metrics()["wait_mean"] > 10  # a real queue built up
    assert fast.metrics()["finished"] == 1500
    assert fast.digest() == plain.digest()
    assert cls(strict=True).greedy_by_shape is False


@pytest.mark.parametrize("name", ["fifo", "best_fit"])
def test_windowed_greedy_runs_equal_exact_runs_with_dags(name) -> None:
    """On DAG jobs mixed with independent jobs of several tenants (a DAG task becomes ready
    after later-submitted tasks of its shape), the per-shape queues, the per-tenant queues
    (the policy without the flag) and the exact path (window=None, every pending task shown
    every round) give one trace: pending queues keep the policies' (submitted_at, id) order."""
    from simulator.cluster import demo_cluster
    from simulator.workloads import get_workload

    runs = [Simulation(demo_cluster(), get_workload("hetero_demo"), policy=p, seed=0, **kw).run()
            for p, kw in ((name, {}), (_Plain(get_policy(name)), {}), (name, {"window": None}))]
    fast, plain, exact = runs
    assert fast.plane.queue.by_shape and not plain.plane.queue.by_shape
    assert not exact.plane.queue.by_shape
    assert fast.metrics()["wait_mean"] > 1
    assert fast.digest() == plain.digest() == exact.digest()


class _HoldsAndOvershoots:
    """A user policy: holds through the hooks without a Ledger, then places too much."""

    name = "overshoot"

    def schedule(self, pending, cluster):  # noqa: ANN001, ANN201
        node = "cpu-000000"
        cluster.hold(node, pending[0].request)  # left held on purpose
        return [Place(t.id, node) for t in pending]


def test_stray_holds_are_undone_and_over_capacity_is_still_caught() -> None:
    """Leftover holds are rolled back; a placement over capacity fails that task with a
    PolicyError naming the policy and the task, and the run goes on."""
    cluster = ClusterConfig([NodeSpec("cpu", cpus=2, count=1)], name="tiny")
    wl = JobMix(10, 100.0, [Shape(Resources({"CPU": 1}), "c", Exp(50.0))], burst_size=10)
    sim = Simulation(cluster, wl, policy=_HoldsAndOvershoots(), seed=0, failures=False,
                     window=None).run()
    m = sim.metrics(check=True)
    assert m["finished"] == 2 and m["failed"] == 8, m
    assert sorted(sim.errors) == sorted(e.task for e in sim.trace.events()
                                        if e.kind == "task_failed")
    for tid, err in sim.errors.items():
        assert isinstance(err, PolicyError)
        assert re.search(rf"'overshoot' placed task .*\(id {tid}\).*over capacity", str(err))
    assert len(sim.policy_errors) == 8
    assert not sim.state.holding
    assert all(v >= 0 for v in sim.state.record("cpu-000000").free)


def test_core_runs_bare_callbacks_beside_simpy_events() -> None:
    """Core.step (simpy's run) handles the engine's bare callbacks and ordinary events."""
    env = Core()
    seen: list[tuple[str, float]] = []

    def proc():  # noqa: ANN202
        yield env.timeout(2.0)
        seen.append(("proc", env.now))

    env.process(proc())
    env.call_in(1.0, lambda ev: seen.append(("call", env.now)))
    from heapq import heappush

    heappush(env._queue, (1.5, 1, next(env._eid), lambda x: seen.append((x, env.now)), ("bare",)))
    env.run()
    assert seen == [("call", 1.0), ("bare", 1.5), ("proc", 2.0)]


def test_run_pauses_the_garbage_collector_and_restores_it() -> None:
    """gc is off during run() (pause_gc=True) and back on afterwards; bad values refused."""
    import gc

    seen: list[bool] = []

    class Probe:
        name = "probe"

        def __init__(self) -> None:
            self.inner = BestFit()

        def schedule(self, pending, cluster):  # noqa: ANN001, ANN201
            seen.append(gc.isenabled())
            return self.inner.schedule(pending, cluster)

    cluster = ClusterConfig([NodeSpec("cpu", cpus=2, count=1)], name="tiny")
    wl = JobMix(5, 1.0, [Shape(Resources({"CPU": 1}), "c", Exp(1.0))])
    assert gc.isenabled()
    Simulation(cluster, wl, policy=Probe(), failures=False).run()
    assert seen and not any(seen) and gc.isenabled()
    seen.clear()
    Simulation(cluster, wl, policy=Probe(), failures=False, pause_gc=False).run()
    assert seen and all(seen)
    with pytest.raises(TypeError, match="pause_gc"):
        Simulation(cluster, wl, pause_gc="yes")  # type: ignore[arg-type]


def test_only_plain_greedy_policies_declare_greedy_by_shape() -> None:
    """fifo/best_fit/spread declare it; strict mode or an overridden schedule() does not."""
    assert get_policy("best_fit").greedy_by_shape is True
    assert get_policy("fifo").greedy_by_shape is True
    assert FirstFit().greedy_by_shape is True
    assert FirstFit(strict=True).greedy_by_shape is False
    assert Spread().greedy_by_shape is True
    assert Spread(strict=True).greedy_by_shape is False

    class Custom(BestFit):
        def schedule(self, pending, cluster):  # noqa: ANN001, ANN201
            return super().schedule(pending, cluster)

    class CustomFifo(FirstFit):
        def schedule(self, pending, cluster):  # noqa: ANN001, ANN201
            return super().schedule(pending, cluster)

    assert Custom().greedy_by_shape is False
    assert CustomFifo().greedy_by_shape is False
    assert not hasattr(get_policy("drf"), "greedy_by_shape")
    assert not hasattr(get_policy("hetero"), "greedy_by_shape")


def test_best_fit_digest_is_the_same_in_another_process() -> None:
    """The fast paths keep one seed -> one trace across processes and hash seeds."""
    import os
    import subprocess
    import sys

    want = _saturated("best_fit", seed=5).digest()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys; sys.path.insert(0, 'tests/simulator'); import test_fast_paths as t; "
            "print(t._saturated('best_fit', seed=5).digest())")
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == want
    assert _saturated("best_fit", seed=6).digest() != want
