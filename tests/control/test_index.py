"""The control plane's index: fit order, capacity accounting and bookkeeping, against a naive model."""

from __future__ import annotations

import random

import pytest

from runtime.cluster import score_of
from runtime.control import ClusterIndex
from runtime.resources import EPSILON, Resources

from ..policies.helpers import cluster, task

pytestmark = pytest.mark.timeout(60)


def naive_fitting(idx: ClusterIndex, t, order: str) -> list[str]:  # noqa: ANN001
    nodes = [n for n in idx.nodes() if n.state == "up" and t.request.fits(n.free)
             and (t.accelerator_type is None or n.accelerator_type == t.accelerator_type)]
    if order == "id":
        nodes.sort(key=lambda n: n.id)
    elif order == "tightest":
        nodes.sort(key=lambda n: (score_of(n.free, n.total), n.id))
    else:
        nodes.sort(key=lambda n: (-score_of(n.free, n.total), n.id))
    return [n.id for n in nodes]


def test_fitting_orders_small() -> None:
    idx = cluster(("a", {"CPU": 4}), ("b", {"CPU": 4}), ("c", {"CPU": 8}),
                  ("g", {"CPU": 8, "GPU": 1, "accel": "A100"}))
    idx.allocate(task(1, CPU=3), "a")
    idx.allocate(task(2, CPU=1), "b")
    t = task(9, CPU=1)
    assert [n.id for n in idx.fitting(t, "tightest")] == ["a", "b", "c", "g"]
    assert [n.id for n in idx.fitting(t, "loosest")] == ["g", "c", "b", "a"]
    assert [n.id for n in idx.fitting(t, "id")] == ["a", "b", "c", "g"]
    assert [n.id for n in idx.fitting(task(10, accel="A100", CPU=1), "id")] == ["g"]
    assert [n.id for n in idx.fitting(task(11, CPU=2), "tightest")] == ["b", "c", "g"]
    assert list(idx.fitting(task(12, CPU=9))) == []
    with pytest.raises(ValueError, match="order='best'"):
        idx.fitting(t, "best")  # type: ignore[arg-type]


@pytest.mark.parametrize("n_nodes", [60, 400])
def test_randomised_against_naive_model(n_nodes: int) -> None:
    rng = random.Random(n_nodes)
    idx = ClusterIndex()
    shapes = [{"CPU": 4}, {"CPU": 8, "memory": 16.0}, {"CPU": 8, "GPU": 2}, {"CPU": 2, "QPU": 1}]
    for i in range(n_nodes):
        sh = dict(shapes[i % 4])
        labels = {"accelerator_type": "V100"} if "GPU" in sh and i % 8 == 2 else {}
        idx.add_node(f"n{i:03d}", f"t{i % 4}", sh, labels=labels)
    running: dict[int, str] = {}
    requests = [{"CPU": 1}, {"CPU": 2}, {"CPU": 1, "GPU": 1}, {"QPU": 1}, {"CPU": 0.5},
                {"CPU": 1, "memory": 3.0}, {"GPU": 0.25}]
    next_id = 0
    for step in range(1500):
        op = rng.random()
        if op < 0.55 + (0.2 if step < 700 and n_nodes > 100 else 0.0):
            req = rng.choice(requests)
            accel = "V100" if "GPU" in req and rng.random() < 0.3 else None
            t = task(next_id, accel=accel, **req)
            next_id += 1
            order = rng.choice(["id", "tightest", "loosest"])
            got = [n.id for n in idx.fitting(t, order)]
            assert got == naive_fitting(idx, t, order), (step, order, t)
            if got:
                nid = got[0] if rng.random() < 0.7 else rng.choice(got)
                idx.allocate(t, nid)
                running[t.id] = nid
        elif op < 0.9 and running:
            tid = rng.choice(sorted(running))
            assert idx.release(tid) == running.pop(tid)
        elif op < 0.95:
            nid = rng.choice(sorted(n.id for n in idx.nodes()))
            idx.set_state(nid, rng.choice(["up", "up", "draining", "booting"]))
        else:
            nid = rng.choice(sorted(n.id for n in idx.nodes()))
            lost = idx.remove_node(nid)
            assert lost == sorted(t for t, n in running.items() if n == nid)
            for t in lost:
                del running[t]
            idx.add_node(nid + "x", "t9", {"CPU": 4})
        # capacity accounting: free = total - sum of what runs there, never negative
        if step % 50 == 0:
            for n in idx.nodes():
                used: dict[str, float] = {}
                for t in idx.tasks_on(n.id):
                    for k, v in t.request.items():
                        used[k] = used.get(k, 0.0) + v
                for k, v in n.total.items():
                    assert n.free.get(k, 0.0) >= -EPSILON
                    assert abs(n.free.get(k, 0.0) + used.get(k, 0.0) - v) < 1e-6
            assert sorted(t.id for t in idx.running()) == sorted(running)
            avail: dict[str, float] = {}
            for n in idx.nodes():
                if n.state == "up":
                    for k, v in n.free.items():
                        avail[k] = avail.get(k, 0.0) + v
            assert idx.available() == pytest.approx(dict(sorted(avail.items())))


def test_capacity_never_negative_and_release_checks() -> None:
    idx = cluster(("a", {"CPU": 2}))
    idx.allocate(task(1, CPU=2), "a")
    with pytest.raises(ValueError, match="negative"):
        idx.allocate(task(2, CPU=1), "a")
    assert idx.node("a").free == Resources({})
    assert idx.release(1) == "a"
    assert idx.node("a").free == Resources({"CPU": 2})
    assert idx.release(1) is None  # twice: nothing held


def test_lending_release_and_reacquire() -> None:
    idx = cluster(("a", {"CPU": 2, "GPU": 1}))
    t = task(1, CPU=1, GPU=1)
    idx.allocate(t, "a")
    idx.release(1, {"CPU": 1}, keep_running=True)  # blocked in get: lends its CPU
    assert idx.node("a").free == Resources({"CPU": 2})
    assert idx.placement_of(1) == "a"
    assert idx.tenant_usage() == {"default": {"GPU": 1.0}}
    idx.reacquire(1, {"CPU": 1})
    assert idx.node("a").free == Resources({"CPU": 1})
    idx.release(1)  # gives back what it holds now (CPU 1 + GPU 1)
    assert idx.node("a").free == Resources({"CPU": 2, "GPU": 1})
    assert idx.tenant_usage() == {}


def test_bookkeeping_idle_counts_totals() -> None:
    idx = cluster(("a", {"CPU": 2}), ("b", {"CPU": 2, "GPU": 1, "accel": "T4"}))
    idx.add_node("c", "cpu", {"CPU": 2}, state="booting")
    idx.now = 5.0
    idx.allocate(task(1, tenant="x"), "a")
    assert [n for n, _ in idx.idle_nodes()] == ["b"]
    assert idx.node_counts() == {"T4": {"up": 1}, "cpu": {"booting": 1, "up": 1}}
    assert idx.totals() == {"CPU": 4.0, "GPU": 1.0}
    assert idx.available() == {"CPU": 3.0, "GPU": 1.0}
    assert idx.started_at(1) == 5.0
    idx.now = 9.0
    idx.set_state("c", "up")
    idx.release(1)
    assert idx.idle_nodes() == [("b", 0.0), ("c", 9.0), ("a", 9.0)]
    idx.set_state("a", "draining")
    assert [n for n, _ in idx.idle_nodes()] == ["b", "c"]
    assert idx.totals() == {"CPU": 6.0, "GPU": 1.0}
    assert idx.available() == {"CPU": 4.0, "GPU": 1.0}
    with pytest.raises(ValueError, match="already exists"):
        idx.add_node("a", "cpu", {"CPU": 1})
    with pytest.raises(ValueError, match="state='gone'"):
        idx.set_state("a", "gone")  # type: ignore[arg-type]


def test_first_item_is_cheap_on_a_full_cluster() -> None:
    # 2000 full nodes and one free one: the first fitting node must come from the
    # index (bucket walk), so this would take seconds if it scanned nodes per call.
    idx = ClusterIndex()
    for i in range(2000):
        idx.add_node(f"n{i:05d}", "cpu", {"CPU": 2})
        if i != 1234:
            idx.allocate(task(i, CPU=2), f"n{i:05d}")
    t = task(10_000, CPU=1)
    for order in ("id", "tightest", "loosest"):
        for _ in range(2000):
            node = next(idx.fitting(t, order))
        assert node.id == "n01234"
