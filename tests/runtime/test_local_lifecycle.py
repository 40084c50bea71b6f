"""Local backend: lifecycle events of actors and cancelled tasks, and worker survival."""

from __future__ import annotations

import threading
import time

import pytest

import runtime

pytestmark = pytest.mark.timeout(90)


@runtime.remote
class Box:
    def __init__(self) -> None:
        self.items: list[int] = []

    def add(self, x: int) -> int:
        self.items.append(x)
        return len(self.items)


@runtime.remote
def pid_of() -> int:
    import os

    return os.getpid()


@runtime.remote
def returns_lock() -> threading.Lock:
    return threading.Lock()


@runtime.remote
def nap(s: float) -> float:
    time.sleep(s)
    return s


def _wait_for(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_actor_created_restarted_died_events(local):
    """An actor's life is on the event stream: created, restarted after a kill, died."""
    local(num_cpus=2)
    events: list[runtime.Event] = []
    runtime.subscribe(events.append)
    box = Box.options(max_restarts=1).remote()
    assert runtime.get(box.add.remote(1), timeout=30) == 1
    runtime.kill(box, no_restart=False)
    _wait_for(lambda: any(e.kind == "actor_restarted" for e in events))
    assert runtime.get(box.add.remote(1), timeout=30) == 1  # state rebuilt by the constructor
    runtime.kill(box)
    _wait_for(lambda: any(e.kind == "actor_died" for e in events))
    kinds = [e.kind for e in events if e.kind.startswith("actor_")]
    assert kinds[0] == "actor_created"
    assert kinds.index("actor_restarted") < kinds.index("actor_died")
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(box.add.remote(2), timeout=30)


def test_cancel_publishes_task_cancelled(local):
    """Cancelling a running task publishes task_cancelled for it."""
    local(num_cpus=1)
    events: list[runtime.Event] = []
    runtime.subscribe(events.append)
    ref = nap.remote(600)
    _wait_for(lambda: any(e.kind == "task_started" and e.task == ref.id for e in events))
    runtime.cancel(ref)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)
    _wait_for(lambda: any(e.kind == "task_cancelled" and e.task == ref.id for e in events))


def test_unpicklable_return_keeps_the_same_worker(local):
    """RELIABILITY 10: an unpicklable result fails that task only; the worker (same pid) lives."""
    local(num_cpus=1)
    before = runtime.get(pid_of.remote(), timeout=30)
    with pytest.raises(runtime.SerializationError):
        runtime.get(returns_lock.remote(), timeout=30)
    assert runtime.get(pid_of.remote(), timeout=30) == before
    assert before in runtime.current_backend().worker_pids()


def test_driver_import_stays_light():
    """`import runtime` loads neither dask, IPython, ipywidgets nor simpy."""
    import subprocess
    import sys

    code = ("import sys, runtime; heavy = [m for m in ('dask', 'distributed', 'IPython', "
            "'ipywidgets', 'simpy', 'greenlet', 'numpy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
