"""Faults (RELIABILITY 1, 2, 9, 11) on backends with real processes; each test owns its cluster."""

from __future__ import annotations

import os
import signal
import time

import pytest

import runtime

pytestmark = pytest.mark.requires("processes")


@runtime.remote
def pid_then_sleep(path, seconds):
    """First attempt: write our pid and sleep (to be killed); later attempts: return."""
    if os.path.exists(path):
        return "second attempt"
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return "not killed"


@runtime.remote
def crash():
    os._exit(17)


@runtime.remote
def ok(x):
    return x


@runtime.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@runtime.remote
class Proc:
    def __init__(self):
        self.calls = []

    def pid(self):
        return os.getpid()

    def record(self, k):
        self.calls.append(k)
        return list(self.calls)

    def mark_and_sleep(self, path, seconds):
        open(path, "w").close()
        time.sleep(seconds)


def _wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); check its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_sigkilled_worker_task_is_retried(fresh, tmp_path):
    """RELIABILITY 1: SIGKILL mid-task with max_retries=2: re-run, right value, attempt 2."""
    events = []
    unsub = runtime.subscribe(events.append)
    path = str(tmp_path / "pid")
    ref = pid_then_sleep.options(max_retries=2).remote(path, 600)
    _wait_for(lambda: os.path.exists(path), what="the task to start")
    pid = int(open(path).read())
    os.kill(pid, signal.SIGKILL)
    assert runtime.get(ref, timeout=60) == "second attempt"
    unsub()
    attempts = [e.data["attempt"] for e in events if e.kind == "task_started" and e.task == ref.id]
    assert attempts == [1, 2]
    assert [e for e in events if e.kind == "task_retried" and e.task == ref.id]
    _wait_for(lambda: not _alive(pid), what="the killed worker to be reaped")


def test_task_that_always_crashes_its_worker(fresh):
    """RELIABILITY 2: after max_retries+1 attempts WorkerCrashedError names task and attempts."""
    ref = crash.options(max_retries=1).remote()
    others = [ok.remote(i) for i in range(4)]
    with pytest.raises(runtime.WorkerCrashedError) as info:
        runtime.get(ref, timeout=60)
    err = info.value
    assert err.attempts == 2 and err.task_name == "crash" and err.last_worker
    assert "crash" in str(err) and "2 attempt" in str(err)
    assert runtime.get(others, timeout=60) == [0, 1, 2, 3]
    assert runtime.get(ok.remote("still usable"), timeout=60) == "still usable"


def test_actor_restarts_then_dies(fresh, tmp_path):
    """RELIABILITY 9: queued calls run in order on the restarted actor; then ActorDiedError."""
    a = Proc.options(max_restarts=1).remote()
    pid1 = runtime.get(a.pid.remote(), timeout=60)
    marker = str(tmp_path / "started")
    running = a.mark_and_sleep.remote(marker, 600)
    queued = [a.record.remote(i) for i in range(3)]
    _wait_for(lambda: os.path.exists(marker), what="the slow call to start")
    os.kill(pid1, signal.SIGKILL)
    # state was rebuilt by the constructor; the queued calls ran in order
    assert runtime.get(queued[-1], timeout=60)[-3:] == [0, 1, 2]
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(running, timeout=60)
    pid2 = runtime.get(a.pid.remote(), timeout=60)
    assert pid2 != pid1
    os.kill(pid2, signal.SIGKILL)
    later = a.record.remote("after")
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(later, timeout=30)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(a.record.remote("again"), timeout=5)


def test_cancel_force_kills_the_worker(fresh):
    """cancel(force=True) kills the worker; get raises TaskCancelledError; no retry."""
    ref = sleeper.options(max_retries=3).remote(600)
    _wait_for(lambda: runtime.current_backend().log.tasks.get(ref.id) is not None and
              runtime.current_backend().log.tasks[ref.id].state == "running", what="start")
    assert runtime.cancel(ref, force=True)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)
    assert runtime.get(ok.remote(1), timeout=60) == 1


def test_shutdown_with_running_tasks(fresh):
    """RELIABILITY 11: shutdown kills every child (by pid); pending refs raise; twice is fine."""
    backend = runtime.current_backend()
    running = [sleeper.remote(600) for _ in range(3)]
    a = Proc.remote()
    runtime.get(a.pid.remote(), timeout=60)
    pids = backend.worker_pids()
    assert pids
    runtime.shutdown()
    for pid in pids:
        _wait_for(lambda pid=pid: not _alive(pid), timeout=10, what=f"pid {pid} to exit")
    for r in running:
        with pytest.raises(runtime.RuntimeShutdownError):
            runtime.get(r, timeout=5)
    runtime.shutdown()
    with pytest.raises(runtime.RuntimeShutdownError):
        runtime.current_backend()
