"""Ray semantics on the sim backend: errors, dependencies, retries, cancel, actors, objects."""

from __future__ import annotations

import threading
import time

import pytest

import runtime as rt
from runtime.events import EventKind

pytestmark = pytest.mark.timeout(60)


def test_task_error_is_raised_at_get_with_cause_type_and_traceback(sim):
    """A body's ValueError reaches get (not submit) as a ValueError and a TaskError."""
    sim()

    @rt.remote
    def bad(x: int) -> int:
        raise ValueError(f"bad {x}")

    ref = bad.remote(3)  # no raise here
    with pytest.raises(ValueError) as info:
        rt.get(ref)
    err = info.value
    assert isinstance(err, rt.TaskError) and "bad 3" in str(err)
    assert "in bad" in err.remote_traceback and "ValueError: bad 3" in err.remote_traceback


def test_failed_dependency_fails_dependant_without_running_it(sim):
    """g.remote(f.remote()) where f raises: g's get raises f's error; g never runs."""
    sim()
    ran: list[str] = []

    @rt.remote
    def f() -> int:
        raise KeyError("k")

    @rt.remote
    def g(x: int) -> int:
        ran.append("g")
        return x

    with pytest.raises(KeyError):
        rt.get(g.remote(f.remote()))
    assert ran == []


def test_retry_exceptions(sim):
    """retry_exceptions=[ValueError] re-runs the body (attempts visible in events);
    [KeyError] does not."""
    b = sim()
    calls: list[str] = []

    @rt.remote(max_retries=2, retry_exceptions=[ValueError])
    def flaky(tag: str) -> str:
        calls.append(tag)
        if calls.count(tag) < 3:
            raise ValueError("again")
        return tag

    assert rt.get(flaky.remote("a")) == "a"
    assert calls == ["a", "a", "a"]
    retried = [e for e in b.trace if e[1] == EventKind.TASK_RETRIED]
    assert [dict(e[4])["attempt"] for e in retried] == [1, 2]

    @rt.remote(max_retries=2, retry_exceptions=[KeyError])
    def once() -> None:
        calls.append("once")
        raise ValueError("no retry")

    with pytest.raises(ValueError):
        rt.get(once.remote())
    assert calls.count("once") == 1


def test_put_and_refs_as_arguments(sim):
    """put() values and task refs passed as top-level arguments arrive as values."""
    sim()
    data = rt.put([1, 2, 3])

    @rt.remote
    def total(xs: list[int], extra: int = 0) -> int:
        return sum(xs) + extra

    @rt.remote
    def one() -> int:
        return 1

    assert rt.get(total.remote(data, extra=one.remote())) == 7
    assert rt.get(data) == [1, 2, 3]


def test_wait_order_num_returns_and_virtual_timeout(sim):
    """wait keeps input order, returns at most num_returns, and times out virtually."""
    sim(num_cpus=4)

    @rt.remote
    def after(s: float) -> float:
        time.sleep(s)
        return s

    refs = [after.remote(s) for s in (3, 1, 2, 100)]
    ready, rest = rt.wait(refs, num_returns=2)
    assert ready == [refs[1], refs[2]] and rest == [refs[0], refs[3]]
    assert rt.now() == 2.0
    ready, rest = rt.wait(refs, num_returns=4, timeout=5)
    assert ready == refs[:3] and rest == [refs[3]]
    assert rt.now() == 7.0


def test_wait_inside_a_task_with_timeout(sim):
    """wait(timeout=) inside a body returns what is ready after that many virtual seconds."""
    sim(num_cpus=3)

    @rt.remote
    def after(s: float) -> float:
        time.sleep(s)
        return s

    @rt.remote
    def parent() -> tuple[int, float]:
        refs = [after.remote(1), after.remote(50)]
        ready, _ = rt.wait(refs, num_returns=2, timeout=10)
        return len(ready), rt.now()

    assert rt.get(parent.remote()) == (1, 10.0)


def test_cancel_pending_task_never_runs(sim):
    """Cancelling a task queued behind a full cluster: it never runs; get raises."""
    sim(num_cpus=1)
    ran: list[int] = []

    @rt.remote(sim_duration=5)
    def job(i: int) -> int:
        ran.append(i)
        return i

    first, second = job.remote(1), job.remote(2)
    assert rt.cancel(second)
    assert rt.get(first) == 1
    with pytest.raises(rt.TaskCancelledError):
        rt.get(second)
    assert ran == [1] and rt.cancel(first) is False


def test_cancel_is_recursive(sim):
    """Cancelling a parent blocked on its child cancels the child too."""
    b = sim(num_cpus=2)

    @rt.remote
    def child() -> None:
        time.sleep(1e6)

    @rt.remote
    def parent() -> None:
        rt.get(child.remote())

    ref = parent.remote()
    with pytest.raises(rt.GetTimeoutError):
        rt.get(ref, timeout=1)
    rt.cancel(ref)
    cancelled = [e[2] for e in b.trace if e[1] == EventKind.TASK_CANCELLED]
    assert len(cancelled) == 2
    assert rt.available_resources() == {"CPU": 2.0}


def test_nested_submission_and_now_inside_tasks(sim):
    """Tasks submit tasks; runtime.now() in a body is the virtual start (plus sleeps)."""
    sim(num_cpus=2)

    @rt.remote(sim_duration=2)
    def leaf() -> float:
        return rt.now()

    @rt.remote
    def parent() -> list[float]:
        time.sleep(1)
        return rt.get([leaf.remote() for _ in range(3)])

    assert rt.get(parent.remote()) == [1.0, 1.0, 3.0]


def test_actor_calls_run_in_order_one_at_a_time(sim):
    """Calls on one actor run in submission order, each after the previous ends."""
    sim(num_cpus=1)

    @rt.remote(sim_duration=1)
    class Acc:
        def __init__(self, start: int) -> None:
            self.items = [start]

        def push(self, x: int) -> list[int]:
            self.items.append(x)
            return list(self.items)

        def when(self) -> float:
            return rt.now()

    a = Acc.remote(0)
    refs = [a.push.remote(i) for i in range(1, 4)]
    assert rt.get(refs[-1]) == [0, 1, 2, 3]
    assert rt.get(a.when.remote()) == 3.0


def test_actor_restart_then_death(sim):
    """max_restarts=1: a kill rebuilds state and queued calls still run in order; the
    second kill is final and every call raises ActorDiedError."""
    sim(num_cpus=1)

    @rt.remote(max_restarts=1)
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self) -> int:
            self.n += 1
            return self.n

    c = Counter.remote()
    assert rt.get(c.add.remote()) == 1
    rt.kill(c, no_restart=False)
    assert rt.get([c.add.remote(), c.add.remote()]) == [1, 2]  # state rebuilt
    rt.kill(c, no_restart=False)  # no restarts left
    with pytest.raises(rt.ActorDiedError):
        rt.get(c.add.remote())


def test_actor_kill_fails_queued_calls_and_constructor_error(sim):
    """kill() fails queued calls; a constructor that raises kills the actor."""
    sim(num_cpus=1)

    @rt.remote(sim_duration=10)
    class Slow:
        def work(self) -> int:
            return 1

    s = Slow.remote()
    refs = [s.work.remote() for _ in range(3)]
    with pytest.raises(rt.GetTimeoutError):
        rt.get(refs[0], timeout=1)
    rt.kill(s)
    for r in refs:
        with pytest.raises(rt.ActorDiedError):
            rt.get(r)

    @rt.remote
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("no")

        def f(self) -> int:
            return 1

    with pytest.raises(rt.ActorDiedError, match="constructor raised RuntimeError"):
        rt.get(Broken.remote().f.remote())


def test_actor_resources_are_held_for_its_life(sim):
    """An actor asking for a GPU holds it until it is killed."""
    sim(num_cpus=2, num_gpus=1)

    @rt.remote(num_gpus=1)
    class G:
        def ping(self) -> str:
            return "pong"

    g = G.remote()
    assert rt.get(g.ping.remote()) == "pong"
    assert rt.available_resources().get("GPU", 0.0) == 0.0
    rt.kill(g)
    rt.sleep(0)
    assert rt.available_resources()["GPU"] == 1.0


def test_infeasible_request_fails_at_submit(sim):
    """A QPU request on a CPU-only cluster fails at submit naming the resource."""
    sim(num_cpus=2)

    @rt.remote(resources={"QPU": 1})
    def q() -> None:
        return None

    with pytest.raises(rt.InfeasibleRequestError, match="QPU"):
        q.remote()


def test_unpicklable_argument_and_return(sim):
    """A lock as argument fails at submit naming it; a lock as return fails that task only."""
    sim()

    @rt.remote
    def take(x: object) -> int:
        return 1

    @rt.remote
    def give() -> object:
        return threading.Lock()

    with pytest.raises(rt.SerializationError, match="argument 0"):
        take.remote(threading.Lock())
    with pytest.raises(rt.SerializationError):
        rt.get(give.remote())
    assert rt.get(take.remote(1)) == 1


def test_done_callbacks_and_await(sim):
    """add_done_callback fires in virtual time; awaiting a ref drives the engine."""
    import asyncio

    sim(num_cpus=1)

    @rt.remote(sim_duration=4)
    def f(x: int) -> int:
        return x

    seen: list[tuple[int, float]] = []
    ref = f.remote(5)
    ref.add_done_callback(lambda r: seen.append((r.id, rt.now())))
    assert rt.get(ref) == 5 and seen == [(ref.id, 4.0)]

    async def main() -> int:
        return await f.remote(6)

    assert asyncio.run(main()) == 6 and rt.now() == 8.0


def test_bad_init_options_are_named(sim):
    """Unknown or invalid init options raise, naming the option and what is accepted."""
    with pytest.raises(TypeError, match="'colour'"):
        sim(colour="red")
    with pytest.raises(TypeError, match="seed="):
        sim(seed="x")
    with pytest.raises(ValueError, match=r"speeds\['train'\]\['A100'\]"):
        sim(speeds={"train": {"A100": -1}})
    with pytest.raises(ValueError, match="policy"):
        sim(policy="no-such-policy")


def test_bodies_see_the_submitters_context_vars(sim):
    """A body runs in a copy of its submitter's contextvars (as asyncio tasks do);
    what it sets stays its own."""
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    sim(num_cpus=1)
    token = var.set("driver")
    try:
        @rt.remote
        def change() -> str:
            var.set("changed")
            return var.get()

        @rt.remote
        def read() -> str:
            return var.get()

        assert rt.get(change.remote()) == "changed"
        assert rt.get(read.remote()) == "driver" and var.get() == "driver"
    finally:
        var.reset(token)


def test_a_task_can_cancel_another_running_task(sim):
    """cancel() called inside a body unwinds the other task's body (its finally runs)."""
    sim(num_cpus=2)
    log: list[str] = []

    @rt.remote
    def victim() -> None:
        try:
            time.sleep(1e6)
        finally:
            log.append(f"victim unwound at {rt.now():g}")

    @rt.remote
    def killer(ref: list) -> bool:
        rt.sleep(3)
        return rt.cancel(ref[0])

    v = victim.remote()
    assert rt.get(killer.remote([v])) is True
    with pytest.raises(rt.TaskCancelledError):
        rt.get(v)
    assert log == ["victim unwound at 3"]
    assert rt.available_resources() == {"CPU": 2.0}


def test_node_failure_while_a_task_lends_its_cpu(sim):
    """A parent blocked in get (CPU lent) on a failed node is retried elsewhere and the
    books balance afterwards."""
    b = sim(nodes=[{"name": "n", "resources": {"CPU": 1}, "count": 2}])

    @rt.remote(sim_duration=5)
    def child() -> int:
        return 2

    @rt.remote(max_retries=1)
    def parent() -> int:
        return rt.get(child.remote()) * 10

    ref = parent.remote()
    rt.sleep(1)
    started = [e for e in b.trace if e[1] == EventKind.TASK_STARTED and e[2] == ref.id]
    b.fail_node(started[0][3])
    assert rt.get(ref) == 20
    assert rt.available_resources() == {"CPU": 1.0}


def test_refs_of_an_earlier_cluster_are_refused(sim):
    """A ref from a previous sim cluster passed to the new one fails clearly, never
    aliasing a new object with the same id."""
    sim(num_cpus=1)

    @rt.remote
    def f(x: int) -> int:
        return x

    old = f.remote(1)
    rt.get(old)
    rt.shutdown()
    sim(num_cpus=1)
    with pytest.raises(ValueError, match="another cluster"):
        f.remote(old)
    with pytest.raises(ValueError, match="another cluster"):
        rt.get([f.remote(2), old])


def test_finally_blocks_that_block_again_while_unwinding(sim):
    """A cancelled body whose finally calls get/sleep keeps unwinding (no hang, no error
    leaking into cancel), and shutdown copes with a finally that raises."""
    sim(num_cpus=2)
    log: list[str] = []

    @rt.remote
    def leaf() -> int:
        return 1

    @rt.remote
    def stubborn() -> None:
        try:
            time.sleep(1e6)
        finally:
            log.append("finally")
            rt.get(leaf.remote())
            log.append("not reached")

    ref = stubborn.remote()
    rt.sleep(1)
    assert rt.cancel(ref)
    assert log == ["finally"]

    @rt.remote
    def raiser() -> None:
        try:
            time.sleep(1e6)
        finally:
            raise RuntimeError("in finally")

    raiser.remote()
    rt.sleep(1)
    rt.shutdown()


def test_in_flight_actor_call_is_retried_with_max_task_retries(sim):
    """Killed mid-call with max_restarts=1, max_task_retries=1: the interrupted call runs
    again on the restarted actor; without task retries it raises ActorDiedError."""
    sim(num_cpus=1)

    @rt.remote(max_restarts=1, max_task_retries=1)
    class Worker:
        def __init__(self) -> None:
            self.started = 0

        def slow(self) -> int:
            self.started += 1
            time.sleep(10)
            return self.started

    w = Worker.remote()
    ref = w.slow.remote()
    rt.sleep(1)
    rt.kill(w, no_restart=False)
    assert rt.get(ref) == 1  # fresh state after the restart
    assert rt.now() == 11.0

    v = Worker.options(max_task_retries=0).remote()
    ref = v.slow.remote()
    rt.sleep(1)
    rt.kill(v, no_restart=False)
    with pytest.raises(rt.ActorDiedError):
        rt.get(ref)
