"""Scheduling policies, tested with no cluster at all: a cluster index built by hand."""

from __future__ import annotations

import random

import pytest

from runtime.cluster import ClusterState
from runtime.control import ClusterIndex
from runtime.policies import (
    DRF,
    POLICIES,
    EasyBackfill,
    FairShare,
    Hetero,
    Place,
    Preempt,
    PriorityPreempt,
    from_function,
    get_policy,
)
from runtime.policies.ledger import Ledger

from .helpers import apply, cluster, task

pytestmark = pytest.mark.timeout(60)


class PlainView:
    """A ClusterState with only the declared members, each delegated to an index: a policy
    that reached for anything else (an index internal) would fail here."""

    def __init__(self, idx: ClusterIndex) -> None:
        self._idx = idx

    @property
    def now(self) -> float:
        return self._idx.now

    @property
    def holding(self) -> bool:
        return self._idx.holding

    def __getattr__(self, name: str):  # noqa: ANN204
        if name in _DECLARED:
            return getattr(self._idx, name)
        raise AttributeError(f"{name!r} is not a member of the ClusterState protocol")


_DECLARED = {n for n in vars(ClusterState) if not n.startswith("_")} - {"now", "holding"}


def mixed_cluster() -> ClusterIndex:
    idx = cluster(("a", {"CPU": 4}), ("b", {"CPU": 4}), ("c", {"CPU": 8}),
                  ("g1", {"CPU": 8, "GPU": 2, "accel": "V100", "cost": 2.0}),
                  ("g2", {"CPU": 8, "GPU": 2, "accel": "A100", "cost": 4.0}),
                  speeds={"train": {"V100": 1.0, "A100": 3.0}})
    idx.allocate(task(900, CPU=3), "a")
    idx.allocate(task(901, CPU=1), "b")
    return idx


def mixed_pending() -> list:
    out = []
    for i in range(24):
        if i % 3 == 0:
            out.append(task(i, kind="train", tenant="t1", priority=i % 2, hint=5.0, CPU=1, GPU=1))
        else:
            out.append(task(i, tenant="t2" if i % 2 else "t1", priority=i % 4, hint=float(i),
                            CPU=1 + i % 3))
    return out


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_deterministic_and_order_independent(name: str) -> None:
    results = []
    for seed in range(4):
        pending = mixed_pending()
        random.Random(seed).shuffle(pending)
        idx = mixed_cluster()
        before = [(n.id, n.free) for n in idx.nodes()]
        out = list(get_policy(name).schedule(pending, idx))
        assert [(n.id, n.free) for n in idx.nodes()] == before  # the view is unchanged
        results.append(out)
        apply(idx, out, pending)  # valid: no overbooking, accelerators honoured
    assert all(r == results[0] for r in results)
    assert any(isinstance(d, Place) for d in results[0])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_overbooking_within_one_call(name: str) -> None:
    idx = cluster(("a", {"CPU": 2}), ("b", {"CPU": 1}))
    pending = [task(i, CPU=1) for i in range(5)]
    out = list(get_policy(name).schedule(pending, idx))
    placed = [d for d in out if isinstance(d, Place)]
    assert len(placed) == 3
    apply(idx, out, pending)
    assert idx.available() == {}


@pytest.mark.parametrize("name", ["fifo", "best_fit", "spread", "hetero", "drf", "backfill",
                                  "priority", "fair_share"])
def test_generic_cluster_state_gives_the_same_decisions(name: str) -> None:
    pending = mixed_pending()
    native = list(get_policy(name).schedule(pending, mixed_cluster()))
    generic = list(get_policy(name).schedule(pending, PlainView(mixed_cluster())))
    assert generic == native and native


def test_best_fit_picks_tightest_and_spread_loosest() -> None:
    idx = mixed_cluster()  # a: 1 CPU free of 4, b: 3 of 4, c: 8 of 8
    t = task(1, CPU=1)
    assert get_policy("best_fit").schedule([t], idx) == [Place(1, "a")]
    assert get_policy("spread").schedule([task(1, CPU=1)], idx) == [Place(1, "g1")]
    assert get_policy("fifo").schedule([task(1, CPU=2)], idx) == [Place(1, "b")]
    # within one call best-fit keeps filling the node it just made tightest
    out = get_policy("best_fit").schedule([task(i, CPU=1) for i in range(1, 5)], idx)
    assert out == [Place(1, "a"), Place(2, "b"), Place(3, "b"), Place(4, "b")]
    # spread goes round the emptiest nodes
    out = get_policy("spread").schedule([task(i, CPU=1) for i in range(1, 4)], idx)
    assert [p.node for p in out] == ["g1", "g2", "g1"]


def test_hetero_fastest_model_and_per_dollar() -> None:
    idx = mixed_cluster()
    t = task(1, kind="train", CPU=1, GPU=1)
    assert Hetero().schedule([t], idx) == [Place(1, "g2")]  # A100: 3x
    # per dollar: A100 3/4 = 0.75 vs V100 1/2 = 0.5 -> still A100; make A100 dearer
    idx2 = cluster(("g1", {"CPU": 8, "GPU": 2, "accel": "V100", "cost": 2.0}),
                   ("g2", {"CPU": 8, "GPU": 2, "accel": "A100", "cost": 8.0}),
                   speeds={"train": {"V100": 1.0, "A100": 3.0}})
    assert Hetero().schedule([t], idx2) == [Place(1, "g2")]
    assert Hetero(per_cost=True).schedule([t], idx2) == [Place(1, "g1")]
    assert get_policy("hetero_cost").schedule([t], idx2) == [Place(1, "g1")]
    # a model with speed 0 is never used; when the fast one is full, the next best
    idx3 = cluster(("t", {"CPU": 8, "TPU": 1, "accel": "TPUv4"}),
                   ("g1", {"CPU": 8, "GPU": 2, "accel": "V100"}),
                   ("g2", {"CPU": 8, "GPU": 1, "accel": "A100"}),
                   speeds={"train": {"V100": 1.0, "A100": 3.0, "TPUv4": 0.0}})
    ts = [task(i, kind="train", CPU=1) for i in range(1, 5)]
    out = Hetero().schedule(ts, idx3)
    assert [p.node for p in out] == ["g2", "g2", "g2", "g2"]  # CPU-only: A100 node has room
    gs = [task(i, kind="train", CPU=1, GPU=1) for i in range(1, 5)]
    assert [p.node for p in Hetero().schedule(gs, idx3)] == ["g2", "g1", "g1"]


def test_drf_equalises_dominant_shares() -> None:
    # the classic DRF example: 9 CPU, 18 GB; A tasks <1 CPU, 4 GB>, B tasks <3 CPU, 1 GB>
    idx = cluster(("n", {"CPU": 9, "mem": 18}))
    pending = ([task(i, tenant="A", CPU=1, mem=4) for i in range(10)]
               + [task(100 + i, tenant="B", CPU=3, mem=1) for i in range(10)])
    out = list(DRF().schedule(pending, idx))
    apply(idx, out, pending)
    by_tenant = {"A": 0, "B": 0}
    for p in out:
        by_tenant["A" if p.task < 100 else "B"] += 1
    assert by_tenant == {"A": 3, "B": 2}  # A: 3 tasks (2/3 of memory), B: 2 (2/3 of CPU)
    shares = DRF().shares(idx)
    assert shares["A"] == pytest.approx(2 / 3) and shares["B"] == pytest.approx(2 / 3)


def test_drf_counts_what_tenants_already_run_and_weights() -> None:
    idx = cluster(("n", {"CPU": 10}))
    for i in range(4):
        idx.allocate(task(500 + i, tenant="A", CPU=1), "n")
    pending = [task(i, tenant="A") for i in range(10)] + [task(100 + i, tenant="B") for i in range(10)]
    out = DRF().schedule(pending, idx)
    assert sum(p.task >= 100 for p in out) == 5 and sum(p.task < 100 for p in out) == 1
    out = DRF(weights={"A": 2.0}).schedule(pending, cluster(("n", {"CPU": 9})))
    assert sum(p.task < 100 for p in out) == 6
    with pytest.raises(ValueError, match="weight of tenant 'A'"):
        DRF(weights={"A": 0})


def test_fair_share_qpu_alternates_users_by_service() -> None:
    idx = cluster(("q", {"QPU": 1}))
    fs = FairShare()
    pending = [task(i, tenant="alice", hint=10.0, QPU=1) for i in range(3)]
    pending += [task(10 + i, tenant="bob", hint=1.0, QPU=1) for i in range(3)]
    served = []
    while pending:
        out = fs.schedule(pending, idx)
        assert len(out) == 1  # a QPU runs one job at a time
        served.append(out[0].task)
        pending = [t for t in pending if t.id != out[0].task]
    # alice's first 10 s job puts her behind bob until bob has had 10 s too
    assert served == [0, 10, 11, 12, 1, 2]
    assert fs.service == {"alice": 30.0, "bob": 3.0}


def test_fair_share_half_life_decays_service() -> None:
    idx = cluster(("q", {"QPU": 1}))
    fs = FairShare(half_life=10.0)
    fs.schedule([task(1, tenant="a", hint=8.0, QPU=1)], idx)
    idx.now = 20.0
    fs.schedule([], idx)
    assert fs.service["a"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="half_life"):
        FairShare(half_life=-1)


def test_backfill_does_not_delay_the_head_job() -> None:
    idx = cluster(("n1", {"CPU": 4}), ("n2", {"CPU": 4}))
    idx.now = 0.0
    idx.allocate(task(900, hint=10.0, CPU=3), "n1")   # n1 frees 3 CPU at t=10
    idx.allocate(task(901, hint=100.0, CPU=4), "n2")  # n2 busy until t=100
    head = task(1, hint=50.0, CPU=4)                    # must wait: shadow t=10 on n1
    short = task(2, hint=5.0, CPU=1)                    # ends at 5 <= 10: may jump ahead
    long = task(3, hint=20.0, CPU=1)                    # would end at 20 > 10: would delay head
    pol = EasyBackfill()
    out = pol.schedule([long, head, short], idx)
    assert out == [Place(2, "n1")]
    res = pol.last_reservation
    assert (res.task, res.node, res.shadow) == (1, "n1", 10.0)
    # with no hints, a running task never ends: the head waits, nothing jumps it on n1
    idx2 = cluster(("n1", {"CPU": 4}))
    idx2.allocate(task(900, CPU=3), "n1")
    assert pol.schedule([task(1, CPU=4), task(2, hint=1.0, CPU=1)], idx2) == []
    # room the head leaves over at its shadow time may be used by anyone
    idx3 = cluster(("n1", {"CPU": 8}))
    idx3.allocate(task(900, hint=10.0, CPU=6), "n1")
    out = pol.schedule([task(1, CPU=6), task(2, CPU=2), task(3, CPU=1)], idx3)
    assert out == [Place(2, "n1")] and pol.last_reservation.extra == {"CPU": 2.0}


def test_backfill_skips_jobs_that_never_fit() -> None:
    idx = cluster(("n1", {"CPU": 2}))
    out = EasyBackfill().schedule([task(1, CPU=64), task(2, CPU=1)], idx)
    assert out == [Place(2, "n1")]


def test_priority_preempts_lowest_and_newest_once() -> None:
    idx = cluster(("n1", {"CPU": 2}), ("n2", {"CPU": 2}))
    idx.now = 0.0
    idx.allocate(task(900, priority=1, CPU=2), "n1")
    idx.allocate(task(901, priority=0, CPU=1), "n2")
    idx.now = 1.0
    idx.allocate(task(902, priority=0, CPU=1), "n2")
    pol = PriorityPreempt()
    hi = task(1, priority=5, CPU=2)
    out = pol.schedule([hi, task(2, priority=0, CPU=1)], idx)
    assert out == [Preempt(902, reason="preempted by task 1 (priority 5 > 0)"),
                   Preempt(901, reason="preempted by task 1 (priority 5 > 0)")]
    # asked again before the backend acted: no further victims
    assert pol.schedule([hi], idx) == []
    apply(idx, out, [])
    out = pol.schedule([hi, task(2, priority=0, CPU=1)], idx)
    assert out == [Place(1, "n2")]
    apply(idx, out, [hi])
    # nothing of lower priority to evict: nothing happens; preempt=False never evicts
    assert PriorityPreempt().schedule([task(3, priority=1, CPU=2)], idx) == []
    assert PriorityPreempt(preempt=False).schedule([task(4, priority=9, CPU=2)], idx) == []


def test_priority_orders_by_priority() -> None:
    idx = cluster(("n1", {"CPU": 1}))
    out = PriorityPreempt().schedule([task(1, priority=0), task(2, priority=3)], idx)
    assert out == [Place(2, "n1")]


def test_from_function_policy_in_a_few_lines() -> None:
    def biggest_first(pending, cluster):  # noqa: ANN001, ANN202
        with Ledger(cluster) as ledger:
            for t in sorted(pending, key=lambda t: (-t.request.get("CPU", 0), t.id)):
                placed = ledger.place(t, "tightest")
                if placed:
                    yield placed

    idx = cluster(("a", {"CPU": 4}), ("b", {"CPU": 2}))
    pol = from_function(biggest_first, name="big")
    out = pol.schedule([task(1, CPU=1), task(2, CPU=4), task(3, CPU=2)], idx)
    assert pol.name == "big" and out == [Place(2, "a"), Place(3, "b")]
    assert idx.available() == {"CPU": 6.0}  # tentative holds undone
    assert get_policy(biggest_first).name == "biggest_first"
    with pytest.raises(TypeError, match="expected Place"):
        from_function(lambda p, c: [("x", "y")]).schedule([], idx)


def test_get_policy_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown policy name 'bestfit'.*best_fit.*spread"):
        get_policy("bestfit")
    with pytest.raises(TypeError, match="expected a policy name"):
        get_policy(42)
    with pytest.raises(ValueError, match="order='x'"):
        get_policy("drf", order="x")
    assert get_policy("backfill").name == "backfill"


def test_backend_cannot_allocate_while_a_policy_holds() -> None:
    idx = cluster(("a", {"CPU": 2}))
    with Ledger(idx) as ledger:
        ledger.place(task(1), "id")
        with pytest.raises(RuntimeError, match="inside schedule"):
            idx.allocate(task(2), "a")
    idx.allocate(task(2), "a")
    assert idx.available() == {"CPU": 1.0}


@pytest.mark.parametrize("name", ["fifo", "best_fit", "spread", "drf", "priority", "backfill",
                                  "hetero", "hetero_cost"])
def test_generic_path_matches_native_on_a_random_busy_cluster(name: str) -> None:
    rng = random.Random(11)
    shapes = [{"CPU": 4}, {"CPU": 8, "GPU": 2, "accel": "V100", "cost": 1.0},
              {"CPU": 2, "mem": 8}, {"CPU": 16, "GPU": 4, "accel": "A100", "cost": 5.0}]

    def build() -> ClusterIndex:
        r = random.Random(3)
        idx = cluster(*[(f"n{i:03d}", shapes[i % 4]) for i in range(120)],
                      speeds={"f": {"V100": 1.0, "A100": 2.5, "cpu": 0.5}})
        for j in range(150):
            t = task(10_000 + j, CPU=r.choice([1, 2]))
            node = next(iter(sorted(idx.fitting(t, "id"), key=lambda n: r.random())), None)
            if node is not None:
                idx.allocate(t, node.id)
        return idx

    reqs = [{"CPU": 1}, {"CPU": 2}, {"CPU": 1, "GPU": 1}, {"CPU": 1, "mem": 2}, {"GPU": 2}]
    pending = [task(i, tenant=rng.choice("ab"), priority=rng.randrange(3),
                    accel=rng.choice([None, None, "A100"]) if i % 5 == 2 else None,
                    hint=float(rng.randrange(1, 9)), **rng.choice(reqs)) for i in range(500)]
    native = list(get_policy(name).schedule(pending, build()))
    generic = list(get_policy(name).schedule(pending, PlainView(build())))
    assert generic == native
    idx = build()
    apply(idx, native, pending)


def test_priority_victims_are_distinct_and_freed_room_is_held() -> None:
    idx = cluster(("n1", {"CPU": 2}), ("n2", {"CPU": 2}))
    for i in range(4):
        idx.allocate(task(900 + i, CPU=1), f"n{1 + i // 2}")
    out = PriorityPreempt().schedule([task(1, priority=5, CPU=2), task(2, priority=5, CPU=2)], idx)
    victims = {d.task: d.reason for d in out if isinstance(d, Preempt)}
    assert sorted(victims) == [900, 901, 902, 903] and not any(isinstance(d, Place) for d in out)
    assert {victims[900], victims[901]} == {"preempted by task 1 (priority 5 > 0)"}
    # one CPU already free on n1: it is kept for the high-priority task, not given away
    idx2 = cluster(("n1", {"CPU": 2}))
    idx2.allocate(task(900, CPU=1), "n1")
    out = PriorityPreempt().schedule([task(1, priority=5, CPU=2), task(2, priority=0)], idx2)
    assert [type(d).__name__ for d in out] == ["Preempt"] and out[0].task == 900
