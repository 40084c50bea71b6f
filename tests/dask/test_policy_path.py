"""The dask backend's policy path (tasks sent ahead, held refs, actors) and its submission batching.

Real ``dask scheduler`` + two ``dask worker`` processes (``cpu``: 2 threads;
``gpu``: 2 threads, 2 GPUs). With a first-fit-style policy the backend queues
tasks of a running task's shape on its worker ahead of time (``prefetch``);
these tests check that such tasks keep every promise a placed task makes.
"""

from __future__ import annotations

import os
import time

import pytest

import runtime
from tests.dask.cluster import run_options

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


@runtime.remote
def add(a, b=0):
    return a + b


@runtime.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@runtime.remote
def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


@runtime.remote
def touch_after(dep, path):
    with open(path, "w") as f:
        f.write(str(dep))
    return path


@runtime.remote
def where():
    import distributed

    return str(distributed.get_worker().name)


@runtime.remote
class Box:
    def pid(self):
        return os.getpid()


def _wait(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _fill(n=4):
    """Occupy every thread of the cluster with sleepers; wait until they run."""
    sleepers = [nap.remote(600) for _ in range(n)]
    log = runtime.current_backend().log
    _wait(lambda: all(log.tasks.get(r.id) is not None and log.tasks[r.id].state == "running"
                      for r in sleepers), what="the sleepers to start")
    return sleepers


@pytest.mark.parametrize("bad", [-1, 1.5, "yes"])
def test_prefetch_option_is_validated(procs, bad):
    with pytest.raises(ValueError, match="prefetch="):
        runtime.init(procs.address, policy="fifo", prefetch=bad, **run_options())
    assert not runtime.is_initialized()


def test_many_short_tasks_with_a_policy_are_all_right_and_use_both_workers(procs):
    with runtime.init(procs.address, policy="fifo", **run_options()):
        refs = [add.remote(i, 1) for i in range(400)]
        assert runtime.get(refs, timeout=90) == [i + 1 for i in range(400)]
        nodes = runtime.get([where.remote() for _ in range(40)], timeout=60)
        assert set(nodes) == {"cpu", "gpu"}
        ctl = runtime.current_backend().control
        assert ctl.prefetch > 0 and ctl.depth(next(iter(ctl._runtime))) >= 1
        # nothing is left held: every slot and every place ahead was given back
        _wait(lambda: not ctl.index.running() and not ctl.plane.ahead.behind_of,
              what="slots to be released")
        assert all(n.free == n.total for n in ctl.index.nodes())


def test_a_task_sent_ahead_can_be_cancelled_and_never_runs(procs, tmp_path):
    with runtime.init(procs.address, policy="fifo", prefetch=1, **run_options()):
        sleepers = _fill()
        ctl = runtime.current_backend().control
        marker = tmp_path / "ran"
        ahead = touch.remote(str(marker))
        _wait(lambda: ahead.id in ctl.plane.ahead.behind_of, what="the task to be sent ahead")
        assert runtime.cancel(ahead) is True
        with pytest.raises(runtime.TaskCancelledError):
            runtime.get(ahead, timeout=10)
        assert ahead.id not in ctl.plane.ahead.behind_of
        for r in sleepers:
            runtime.cancel(r)
        # the threads are free again: a new task runs, the cancelled one did not
        assert runtime.get(add.remote(1, 1), timeout=30) == 2
        time.sleep(0.3)  # a task that wrongly ran would have written by now
        assert not marker.exists()


def test_prefetch_off_sends_nothing_ahead(procs):
    with runtime.init(procs.address, policy="fifo", prefetch=False, **run_options()):
        sleepers = _fill()
        ctl = runtime.current_backend().control
        extra = add.remote(2, 3)
        time.sleep(0.3)  # several placement rounds
        assert ctl.plane.ahead is None and extra.id in ctl.plane.queue
        for r in sleepers:
            runtime.cancel(r)
        assert runtime.get(extra, timeout=30) == 5


def test_submitting_a_task_on_a_held_ref_does_not_block(procs):
    """A dependent of a task the policy still holds is queued at once (no waiting)."""
    with runtime.init(procs.address, policy="fifo", prefetch=False, **run_options()):
        sleepers = _fill()
        t0 = time.monotonic()
        first = add.remote(1, 1)
        second = add.remote(first, 10)
        assert time.monotonic() - t0 < 2.0
        assert not runtime.current_backend().done(second)
        for r in sleepers:
            runtime.cancel(r)
        assert runtime.get(second, timeout=30) == 12


def test_a_failed_held_input_fails_the_dependent_without_running_it(procs, tmp_path):
    with runtime.init(procs.address, policy="fifo", prefetch=False, **run_options()):
        sleepers = _fill()
        bad = add.remote(1, "x")
        marker = tmp_path / "ran"
        dependent = touch_after.remote(bad, str(marker))
        for r in sleepers:
            runtime.cancel(r)
        with pytest.raises(TypeError):
            runtime.get(bad, timeout=30)
        with pytest.raises(TypeError):
            runtime.get(dependent, timeout=30)
        assert not marker.exists()


def test_an_actor_is_placed_by_the_policy_and_keeps_a_thread_for_its_calls(procs):
    """Tasks submitted before the actor cannot take every thread of its worker."""
    with runtime.init(procs.address, policy="fifo", prefetch=False, **run_options()):
        sleepers = [nap.remote(600) for _ in range(3)]
        box = Box.remote()
        assert isinstance(runtime.get(box.pid.remote(), timeout=30), int)
        ctl = runtime.current_backend().control
        held = [t for t in ctl.index.running() if t.id < 0]
        assert len(held) == 1 and held[0].request.get("CPU") == 1.0
        runtime.kill(box)
        _wait(lambda: not [t for t in ctl.index.running() if t.id < 0],
              what="the actor's thread to be given back")
        for r in sleepers:
            runtime.cancel(r)


# ---------------------------------------------------------------------------
# no policy: submissions wait a moment in an outbox and go to dask in batches
# ---------------------------------------------------------------------------


def test_a_task_nobody_waits_for_still_runs(rt, tmp_path):
    marker = tmp_path / "ran"
    touch.remote(str(marker))  # fire and forget: the outbox is sent without a get
    _wait(marker.exists, what="the task to run")


def test_a_burst_with_dependencies_on_queued_tasks(rt):
    firsts = [add.remote(i, 1) for i in range(300)]
    seconds = [add.remote(f, 1000) for f in firsts]  # inputs still in the outbox
    assert runtime.get(seconds, timeout=90) == [i + 1001 for i in range(300)]


def test_a_function_that_cannot_be_sent_fails_its_tasks_with_a_clear_error(rt):
    import threading

    lock = threading.Lock()

    def holds_a_lock():
        return lock.locked()

    f = runtime.remote(holds_a_lock)
    refs = [f.remote() for _ in range(3)]
    ok = add.remote(1, 2)
    for r in refs:
        with pytest.raises(runtime.SerializationError, match="holds_a_lock"):
            runtime.get(r, timeout=30)
    assert runtime.get(ok, timeout=30) == 3  # other tasks are not affected


def test_only_a_client_the_backend_created_gets_the_short_send_interval(procs):
    import distributed

    from runtime.backends.dask.backend import SEND_INTERVAL

    with runtime.init(procs.address, **run_options()):
        assert runtime.current_backend().client.scheduler_comm.interval == SEND_INTERVAL
    with distributed.Client(procs.address, set_as_default=False, timeout=30) as mine:
        default = mine.scheduler_comm.interval
        with runtime.init(mine, **run_options()):
            assert runtime.get(add.remote(1, 1), timeout=30) == 2
            assert mine.scheduler_comm.interval == default != SEND_INTERVAL


# ---------------------------------------------------------------------------
# lookahead: a side-effect-free policy (drf) picks the task queued behind each
# running one, on a copy of the index where that task has ended
# ---------------------------------------------------------------------------


def test_drf_queues_its_choice_behind_running_tasks_and_it_can_be_cancelled(procs, tmp_path):
    with runtime.init(procs.address, policy="drf", **run_options()):
        ctl = runtime.current_backend().control
        assert ctl.lookahead and not ctl.prefetch
        sleepers = _fill()
        marker = tmp_path / "ran"
        behind = touch.remote(str(marker))
        _wait(lambda: behind.id in ctl.plane.ahead.behind_of,
              what="the task to be queued behind one")
        assert ctl.plane.ahead.behind_of[behind.id] in {r.id for r in sleepers}
        assert runtime.cancel(behind) is True
        with pytest.raises(runtime.TaskCancelledError):
            runtime.get(behind, timeout=10)
        assert behind.id not in ctl.plane.ahead.behind_of
        for r in sleepers:
            runtime.cancel(r)
        assert runtime.get(add.remote(2, 2), timeout=30) == 4
        time.sleep(0.3)  # a task that wrongly ran would have written by now
        assert not marker.exists()


def test_many_short_tasks_with_drf_are_all_right_and_nothing_stays_held(procs):
    with runtime.init(procs.address, policy="drf", **run_options()):
        ctl = runtime.current_backend().control
        refs = [add.remote(i, 2) for i in range(400)]
        assert runtime.get(refs, timeout=90) == [i + 2 for i in range(400)]
        _wait(lambda: not ctl.index.running() and not ctl.plane.ahead.behind,
              what="slots to be released")
        assert all(n.free == n.total for n in ctl.index.nodes())


def test_a_policy_with_state_gets_no_lookahead(procs):
    with runtime.init(procs.address, policy="fair_share", **run_options()):
        ctl = runtime.current_backend().control
        assert not ctl.lookahead and not ctl.prefetch
        assert runtime.get(add.remote(1, 2), timeout=30) == 3
