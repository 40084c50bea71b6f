"""Reliability fixes of the dask backend: actor turn-taking, restarts, connecting, binding."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import runtime
from runtime.backends.dask import _remote
from runtime.backends.dask.connect import DaskConnectionError
from tests.dask.cluster import free_port, run_options

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


def _wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- actors


@pytest.mark.timeout(30)
def test_actor_turn_is_claimed_before_rejoining_and_without_the_lock(monkeypatch):
    """A waiting actor call claims its turn, then rejoins the worker's pool with the box
    lock released: rejoining waits for a pool thread, and pool threads running later
    calls need that lock (holding it there deadlocked workers under load)."""
    box = _remote._ActorBox(object(), 0, "A")
    rejoins: list[tuple[bool, object]] = []

    @contextlib.contextmanager
    def fake_seceded() -> Iterator[None]:
        yield
        # what distributed's rejoin() would do now: block until a pool thread is free
        rejoins.append((box.cond._is_owned(), box.running))

    monkeypatch.setattr(_remote, "seceded", fake_seceded)
    order: list[int] = []

    def call(seq: int) -> None:
        _remote._take_turn(box, "driver", seq)
        order.append(seq)
        _remote._end_turn(box, "driver")

    threads = [threading.Thread(target=call, args=(s,)) for s in (3, 2, 1)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(box.cond._waiters) == 3, 10, "three calls waiting their turn")
    call(0)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3]
    assert sorted(rejoins, key=lambda r: r[1]) == [(False, ("driver", s)) for s in (1, 2, 3)]


def test_dropping_a_busy_actor_never_blocks_the_worker_loop():
    """drop_actor runs on the worker's event loop: it returns even while the box lock is
    held elsewhere, and waiting calls then see the actor as dead."""
    box = _remote._ActorBox(object(), 0, "A")
    _remote._actors[("s", 1)] = box
    with box.cond:  # another thread holds the lock
        t = threading.Thread(target=_remote.drop_actor, args=("s", 1))
        t.start()
        t.join(5)
        assert not t.is_alive()
    assert box.dead and ("s", 1) not in _remote._actors


@runtime.remote
class Log:
    def __init__(self):
        self.seen = []

    def add(self, item):
        self.seen.append(item)
        return len(self.seen)

    def items(self):
        return list(self.seen)


@runtime.remote
def call_many(log, tag, n):
    return runtime.get([log.add.remote((tag, i)) for i in range(n)])


def test_many_callers_each_keep_their_order(rt):
    """Calls from the driver and from tasks interleave, but each caller's run in order."""
    log = Log.remote()
    mine = [log.add.remote(("driver", i)) for i in range(40)]
    nested = [call_many.remote(log, f"task{k}", 15) for k in range(3)]
    runtime.get(mine + nested, timeout=90)
    seen = runtime.get(log.items.remote(), timeout=60)
    assert len(seen) == 40 + 45
    for tag, n in [("driver", 40), ("task0", 15), ("task1", 15), ("task2", 15)]:
        assert [i for t, i in seen if t == tag] == list(range(n))
    runtime.kill(log)


@runtime.remote
class Slow:
    def __init__(self):
        self.seen = []

    def add(self, k, seconds=0.0):
        time.sleep(seconds)
        self.seen.append(k)
        return list(self.seen)


def _slow_first_rejoin(delay: float) -> bool:
    """Runs in the worker: the next thread to rejoin the pool takes ``delay`` s to get
    there (what a loaded machine does at random)."""
    import distributed

    orig = getattr(distributed, "_nbcluster_rejoin", distributed.rejoin)
    distributed._nbcluster_rejoin = orig
    left = [1]

    def slow() -> None:
        if left[0]:
            left[0] = 0
            time.sleep(delay)
        orig()

    distributed.rejoin = slow
    return True


@pytest.mark.slow
def test_actor_calls_arriving_while_a_waiting_call_rejoins_do_not_deadlock(own_procs):
    """The CI flake, made deterministic: calls keep arriving at a 1-thread worker while a
    call that waited for its turn is slow to rejoin the pool. Rejoining with the actor's
    lock held let the one pool thread block on that lock: every call after hung."""
    runtime.init(own_procs.address, **run_options())
    backend = runtime.current_backend()
    assert all(backend.client.run(_slow_first_rejoin, 0.3).values())
    a = Slow.remote()
    refs = [a.add.remote(0, 0.5)]  # the calls after it wait (seceded) for their turn
    k = 1
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # keep calls arriving through the slow rejoin
        refs.append(a.add.remote(k))
        k += 1
        time.sleep(0.01)
    assert runtime.get(refs, timeout=60)[-1] == list(range(k))


async def _block_event_loop(path: str, seconds: float) -> None:
    """Block the worker's event loop until ``path`` exists (at most ``seconds``)."""
    end = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.05)  # blocking inside a coroutine: the loop answers nobody


@pytest.mark.slow
def test_shutdown_returns_when_a_worker_does_not_answer(own_procs, tmp_path):
    """A worker whose event loop is stuck (holding an actor and a running task) cannot
    hang shutdown: every call to the cluster during shutdown is bounded."""
    runtime.init(own_procs.address, **run_options())
    backend = runtime.current_backend()
    a = Slow.remote()
    assert runtime.get(a.add.remote(1), timeout=60) == [1]
    running = a.add.remote(2, 600)
    _wait_for(lambda: backend._running, what="the call to start")
    release = str(tmp_path / "release")
    backend.client.run(_block_event_loop, release, 90, wait=False)
    done = threading.Event()
    threading.Thread(target=lambda: (runtime.shutdown(), done.set()), daemon=True).start()
    try:
        assert done.wait(45), "runtime.shutdown() hung on an unresponsive worker"
    finally:
        open(release, "w").close()
    with pytest.raises(runtime.RuntimeShutdownError):
        runtime.get(running, timeout=5)


# --------------------------------------------------------------------------- crashes


@runtime.remote
def crash_and_count(path):
    with open(path, "a") as f:
        f.write("run\n")
    os._exit(17)


@runtime.remote
def plus_one(x):
    return x + 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_submit_while_crashed_workers_restart_is_not_infeasible(own_procs, tmp_path):
    """RELIABILITY 2: right after a task kills the only worker, a new submit waits for the
    restarting worker (not InfeasibleRequestError) and gets the right answer; the crashing
    task reports as many attempts as its body ran (max_retries=4 goes past dask's own
    allowed-failures=3, so the backend's resubmission after KilledWorker counts too)."""
    runtime.init(own_procs.address, **run_options())
    events = []
    unsub = runtime.subscribe(events.append)
    path = str(tmp_path / "runs")
    bad = crash_and_count.options(max_retries=4).remote(path)
    _wait_for(lambda: any(e.kind == "node_removed" for e in events), what="the worker to die")
    assert runtime.nodes() == [] or all(n["NodeID"] == "cpu" for n in runtime.nodes())
    good = plus_one.options(max_retries=8).remote(41)  # no workers connected right now
    with pytest.raises(runtime.WorkerCrashedError) as info:
        runtime.get(bad, timeout=120)
    assert runtime.get(good, timeout=120) == 42
    unsub()
    with open(path) as f:
        runs = f.read().count("run")
    assert info.value.attempts == runs == 5
    assert info.value.last_worker == "cpu"
    started = [e for e in events if e.kind == "task_started"]
    assert started and {e.node for e in started} == {"cpu"}  # names, never addresses
    assert [e.data["attempt"] for e in started if e.task == bad.id] == [1, 2, 3, 4, 5]
    assert runtime.get(plus_one.remote(1), timeout=60) == 2  # still usable
    with pytest.raises(runtime.InfeasibleRequestError, match="GPU"):
        plus_one.options(num_gpus=1).remote(0)  # never had a fitting worker


# --------------------------------------------------------------------------- connecting


def _io_threads() -> int:
    return sum(t.name == "IO loop" for t in threading.enumerate())


@pytest.mark.timeout(60)
def test_unreachable_scheduler_raises_a_connection_error_naming_it():
    """Nothing listens: init raises DaskConnectionError (a ConnectionError) naming the
    address and the timeout, and leaves no client or event-loop thread behind."""
    if runtime.is_initialized():
        runtime.shutdown()
    before = _io_threads()
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(DaskConnectionError, match="127.0.0.1") as info:
        runtime.init(address, timeout=0.5)
    assert isinstance(info.value, ConnectionError)
    assert info.value.address == address and info.value.timeout == 0.5
    assert not runtime.is_initialized()
    _wait_for(lambda: _io_threads() <= before, 10, "the failed client's loop thread to stop")


def test_bad_address_or_timeout_names_what_is_accepted():
    """An unknown scheme lists the accepted ones; a bad timeout names the option."""
    with pytest.raises(ValueError, match=r"'foo://'.*tcp://.*tls://"):
        runtime.init("foo://x")
    with pytest.raises(ValueError, match="no host"):
        runtime.init("tcp://:8786")
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="timeout="):
            runtime.init("tcp://127.0.0.1:1", timeout=bad)
    assert not runtime.is_initialized()


# --------------------------------------------------------------------------- binding


def _listening(pid: int) -> set[str]:
    out = set()
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.add(c.laddr.ip)
    return out


def test_scheduler_and_workers_listen_on_localhost_only(procs):
    """RELIABILITY 12: every socket the test scheduler and workers listen on is 127.0.0.1."""
    pids = [procs.scheduler.pid, *(w.proc.pid for w in procs.workers.values())]
    addrs = set()
    for pid in pids:
        ips = _listening(pid)
        assert ips, f"pid {pid} listens on nothing"
        addrs |= ips
    assert addrs == {"127.0.0.1"}
