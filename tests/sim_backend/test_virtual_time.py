"""Virtual time: figures of the toy, lending, deadlocks, sleeps, threads and aborts."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from time import sleep as prebound_sleep  # bound before any init(): stays real

import pytest

import runtime as rt
from runtime.backends.sim.core import real_sleep
from tests.sim_backend import toy

pytestmark = pytest.mark.timeout(60)

#: The toy's trace hash; it changes only when the backend's event stream changes on purpose.
TOY_GOLDEN_HASH = "f43d205e27952d9a460dc0173a4e9d11779d4509d948972e9ea2e8241fb009e2"


def make_fib(duration: float = 1):
    @rt.remote(sim_duration=duration)
    def fib(n: int) -> int:
        if n < 2:
            return n
        return sum(rt.get([fib.remote(n - 1), fib.remote(n - 2)]))

    return fib


@pytest.mark.parametrize(("n", "value", "end"), [(3, 2, 4.0), (4, 3, 6.0)])
def test_fib_on_two_cpus_ends_at_hand_computed_time(sim, n, value, end):
    """fib(n) with 1 s per call on 2 CPUs, worked out by hand. fib(3): leaves end at t=1
    and 2, fib(2) at 3, the root at 4. fib(4): four leaves run in 0-2, fib(2) (right)
    takes its CPU back first at 2-3, fib(2) (left) at 3-4, fib(3) at 4-5, root at 5-6."""
    sim(num_cpus=2)
    assert rt.get(make_fib().remote(n)) == value
    assert rt.now() == end


def test_toy_figures_and_golden_hash():
    """The toy gives the figures worked out by hand and a stable trace hash."""
    out = toy.run()
    assert out["first_ready"] == (0, 1.0)  # prep 0 (1 s) is first
    assert out["trains"] == ([1, 21], 13.0)  # GPU: train0 1->7, train1 waits for the GPU: 7->13
    assert out["fib6"][0] == 8
    assert out["counter"] == [1, 2, 3, 4, 5]
    t0 = out["history"][0]
    assert out["history"] == [round(t0 + 0.3 * i, 6) for i in range(5)]  # one at a time
    assert out["after_sleep"] == pytest.approx(out["history"][-1] + 0.3 + 0.3 + 2)
    assert out["nested"].startswith("caught ValueError")
    assert out["driver_error"] == "ValueError"
    assert out["hash"] == TOY_GOLDEN_HASH


def test_nested_get_with_more_blocked_tasks_than_cpus(sim):
    """fib(6) on 2 CPUs finishes: blocked parents lend their CPU to their children."""
    sim(num_cpus=2)
    assert rt.get(make_fib().remote(6)) == 8
    assert rt.now() == 15.0


def test_without_lending_nested_get_deadlocks_naming_blocked_tasks(sim):
    """With lending off, fib(6) on 2 CPUs raises SimDeadlock naming the blocked fibs."""
    sim(num_cpus=2, lending=False)
    with pytest.raises(rt.SimDeadlock) as info:
        rt.get(make_fib().remote(6))
    msg = str(info.value)
    assert "blocked tasks: {1: 'make_fib.<locals>.fib', 2:" in msg and "lending is off" in msg


def test_wait_lends_like_get(sim):
    """A parent in wait([child]) on a 1-CPU cluster lends its CPU, so the child runs."""
    sim(num_cpus=1)

    @rt.remote(sim_duration=2)
    def child() -> int:
        return 7

    @rt.remote
    def parent() -> int:
        ref = child.remote()
        ready, rest = rt.wait([ref], num_returns=1)
        assert rest == []
        return rt.get(ready[0])

    assert rt.get(parent.remote()) == 7
    assert rt.now() == 2.0


def test_gpu_is_not_lent(sim):
    """A GPU task blocked on another GPU task on a 1-GPU cluster deadlocks (as in Ray)."""
    sim(num_cpus=4, num_gpus=1)

    @rt.remote(num_gpus=1)
    def inner() -> int:
        return 1

    @rt.remote(num_gpus=1)
    def outer() -> int:
        return rt.get(inner.remote())

    with pytest.raises(rt.SimDeadlock) as info:
        rt.get(outer.remote())
    msg = str(info.value)
    assert "outer'" in msg and "inner'" in msg and "GPUs" in msg


def test_sleep_in_body_is_virtual_and_keeps_the_cpu(sim):
    """time.sleep in a body costs virtual time only, and the task keeps its CPU meanwhile."""
    sim(num_cpus=1)

    @rt.remote
    def napper(i: int) -> float:
        time.sleep(10_000)  # would blow the test's timeout if it were real
        return rt.now()

    assert rt.get([napper.remote(0), napper.remote(1)]) == [10_000.0, 20_000.0]


def test_driver_sleep_advances_the_cluster(sim):
    """The driver's time.sleep runs the cluster meanwhile; done() never advances time."""
    sim(num_cpus=1)

    @rt.remote(sim_duration=3)
    def job() -> int:
        return 1

    ref = job.remote()
    assert not ref.done() and rt.now() == 0.0
    time.sleep(5)
    assert rt.now() == 5.0 and ref.done()


def test_prebound_sleep_is_real_and_runtime_sleep_always_virtual(sim):
    """``from time import sleep`` before init stays real (0 virtual s); runtime.sleep is virtual."""
    sim(num_cpus=1)

    @rt.remote
    def body() -> tuple[float, float]:
        t0 = rt.now()
        prebound_sleep(0.01)
        t1 = rt.now()
        rt.sleep(7)
        return t1 - t0, rt.now() - t1

    assert rt.get(body.remote()) == (0.0, 7.0)
    assert prebound_sleep is real_sleep


def test_time_sleep_in_other_threads_stays_real(sim):
    """Only the engine thread's sleeps are virtual; another thread's sleep is real."""
    sim(num_cpus=1)
    done = threading.Event()

    def other() -> None:
        time.sleep(0.01)
        done.set()

    th = threading.Thread(target=other)
    th.start()
    th.join(10)
    assert done.is_set() and rt.now() == 0.0


def test_get_from_a_foreign_thread_raises(sim):
    """get() from a thread started inside a task raises; pure compute in a pool works."""
    sim(num_cpus=1)

    @rt.remote
    def leaf() -> int:
        return 3

    @rt.remote
    def body() -> tuple[str, int]:
        ref = leaf.remote()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                rt.get(ref)
            except RuntimeError as exc:
                errors.append(exc)

        th = threading.Thread(target=worker)
        th.start()
        th.join(10)
        with ThreadPoolExecutor(2) as pool:
            squares = sum(pool.map(lambda x: x * x, range(10)))
        return str(errors[0]), squares + rt.get(ref)

    msg, total = rt.get(body.remote())
    assert "thread the engine does not own" in msg
    assert total == 285 + 3


def test_get_from_a_foreign_driver_thread_raises(sim):
    """A thread of the driver process that is not the engine's cannot block on refs,
    but may read refs that are already done."""
    sim(num_cpus=1)

    @rt.remote
    def f() -> int:
        return 1

    ref = f.remote()
    errors: list[BaseException] = []
    th = threading.Thread(target=lambda: _capture(errors, lambda: rt.get(ref)))
    th.start()
    th.join(10)
    assert isinstance(errors[0], RuntimeError)
    assert rt.get(ref) == 1
    values: list[int] = []
    th = threading.Thread(target=lambda: values.append(rt.get(ref)))
    th.start()
    th.join(10)
    assert values == [1]


def _capture(errors: list[BaseException], fn) -> None:  # noqa: ANN001
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def test_get_inside_c_callbacks(sim):
    """Blocking get() from inside map() and sorted(key=) in a body returns right values."""
    sim(num_cpus=2)

    @rt.remote(sim_duration=1)
    def val(x: int) -> int:
        return x

    @rt.remote
    def body() -> tuple[list[int], list[int]]:
        refs = [val.remote(x) for x in (5, 3, 9, 1)]
        mapped = list(map(rt.get, refs))
        ordered = sorted(refs, key=lambda r: rt.get(r))
        return mapped, [rt.get(r) for r in ordered]

    assert rt.get(body.remote()) == ([5, 3, 9, 1], [1, 3, 5, 9])


def test_get_timeout_is_virtual_then_cancel(sim):
    """get(timeout=) on a task that never ends raises after that many virtual seconds;
    the task keeps running; cancel stops it (its finally runs) and get raises cancelled."""
    sim(num_cpus=1)
    log: list[str] = []

    @rt.remote
    def forever() -> None:
        try:
            time.sleep(1e9)
        finally:
            log.append("unwound")

    ref = forever.remote()
    with pytest.raises(rt.GetTimeoutError):
        rt.get(ref, timeout=5)
    assert rt.now() == 5.0 and not ref.done()
    assert rt.cancel(ref) is True
    assert log == ["unwound"]
    with pytest.raises(rt.TaskCancelledError):
        rt.get(ref)
    assert rt.available_resources() == {"CPU": 1.0}


def test_no_leakage_after_an_aborted_sim(sim):
    """A deadlocked sim, shut down, leaves nothing behind: a fresh fib(6) gives the same
    end time and trace hash as in a fresh process-level run."""
    b = sim(num_cpus=2)
    fresh_fib = make_fib()
    assert rt.get(fresh_fib.remote(6)) == 8
    fresh = (rt.now(), b.trace_hash())
    rt.shutdown()

    sim(num_cpus=2, lending=False)
    with pytest.raises(rt.SimDeadlock):
        rt.get(make_fib().remote(6))
    rt.shutdown()

    b = sim(num_cpus=2)
    assert rt.get(make_fib().remote(6)) == 8
    assert (rt.now(), b.trace_hash()) == fresh


def test_base_exception_aborts_the_sim_and_shutdown_unwinds(sim):
    """KeyboardInterrupt in a body reaches the driver; the sim then refuses work until
    shutdown, which unwinds the other suspended bodies in task-id order."""
    sim(num_cpus=4)
    unwound: list[int] = []

    @rt.remote
    def sleeper(i: int) -> None:
        try:
            time.sleep(100)
        finally:
            unwound.append(i)

    @rt.remote(sim_duration=1)
    def interrupt() -> None:
        raise KeyboardInterrupt

    sleepers = [sleeper.remote(i) for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        rt.get(interrupt.remote())
    with pytest.raises(RuntimeError, match="aborted"):
        rt.get(sleepers[0])
    rt.shutdown()
    assert unwound == [0, 1, 2]
    assert time.sleep is real_sleep
    with pytest.raises(rt.RuntimeShutdownError):
        sleepers[0].backend.get([sleepers[0]], None)


def test_shutdown_fails_pending_refs(sim):
    """Refs of tasks still pending at shutdown raise a shutdown error."""
    b = sim(num_cpus=1)

    @rt.remote(sim_duration=10)
    def slow() -> int:
        return 1

    refs = [slow.remote() for _ in range(3)]
    rt.shutdown()
    for r in refs:
        assert r.done()
    with pytest.raises(rt.RuntimeShutdownError):
        b.get(refs, None)
    rt.shutdown()  # idempotent


def test_watchdog_turns_an_os_lock_hang_into_an_error(sim):
    """A threading.Lock held across get() hangs the engine thread; with watchdog= the
    driver gets SimDeadlock naming the stuck task, and shutdown cleans up."""
    sim(num_cpus=2, watchdog=0.3)
    lock = threading.Lock()

    @rt.remote(sim_duration=1)
    def leaf() -> int:
        return 1

    @rt.remote
    def holder() -> int:
        with lock:
            return rt.get(leaf.remote())

    @rt.remote
    def taker() -> int:
        with lock:  # blocks the engine thread for real
            return 2

    refs = [holder.remote(), taker.remote()]
    with pytest.raises(rt.SimDeadlock, match=r"watchdog: task 'test_watchdog.*taker'"):
        rt.get(refs)
    rt.shutdown()
    assert not lock.locked()
    names = [t.name for t in threading.enumerate()]
    assert "nbcluster-sim-watchdog" not in names
