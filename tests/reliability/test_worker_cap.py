"""Issue 11, item 6: nested tasks never run the machine out of processes. The local backend
keeps at most ``max_workers`` task worker processes; at the cap a child runs inside its
blocked parent's worker (or another blocked worker of the node), so deep recursion and
fan-out finish, without deadlock, within the cap."""

from __future__ import annotations

import os
import signal
import time

import pytest

import runtime
from runtime.events import EventKind as K
from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(120)


@runtime.remote
def depth(n: int) -> int:
    """Recursion ``n`` deep, each level blocking on the next."""
    return 0 if n == 0 else 1 + runtime.get(depth.remote(n - 1))


@runtime.remote
def leaf(i: int) -> int:
    """A child."""
    return i * 2


@runtime.remote
def node(i: int) -> int:
    """Every 7th waits on 3 children."""
    if i % 7:
        return i
    return sum(runtime.get([leaf.remote(i + k) for k in range(3)]))


def _started_pids(events: list) -> set[int]:
    return {e.data["pid"] for e in events if e.kind == K.TASK_STARTED and e.data.get("pid")}


def test_recursion_1000_deep_finishes_within_the_cap(local):
    """1,000 nested levels on 2 CPUs with max_workers=4: the right answer, at most 4 task
    worker processes ever, most levels run inside blocked workers."""
    b = local(num_cpus=2, max_workers=4)
    events: list = []
    runtime.subscribe(events.append)
    assert b.worker_limit == 4 and runtime.current_backend().describe()["worker_limit"] == 4
    assert runtime.get(depth.remote(1000), timeout=90) == 1000
    assert len(_started_pids(events)) <= 4
    inside = sum(1 for e in events if e.kind == K.TASK_STARTED and e.data.get("inside"))
    assert inside >= 990, inside
    assert len(b.worker_pids()) <= 4


def test_fan_out_of_2000_tasks_with_nested_waits_stays_under_the_cap(local):
    """2,000 tasks, every 7th waiting on 3 children: all right, at most 6 processes."""
    b = local(num_cpus=2, max_workers=6)
    events: list = []
    runtime.subscribe(events.append)
    refs = [node.remote(i) for i in range(2000)]
    want = [i if i % 7 else sum(2 * (i + k) for k in range(3)) for i in range(2000)]
    assert runtime.get(refs, timeout=90) == want
    assert len(_started_pids(events)) <= 6
    assert len(b.worker_pids()) <= 6


def test_the_default_cap_is_per_cpu_and_bounded_by_memory(local):
    """Without max_workers: 4 per CPU at most, at least CPUs + 2; the setting is checked."""
    b = local(num_cpus=2)
    assert 4 <= b.worker_limit <= 8


def test_a_bad_cap_names_the_setting(local, monkeypatch):
    """max_workers=0 or 'many' (or the variable) fail init naming it; nothing starts."""
    for bad in (0, "many", True, 2.5):
        with pytest.raises(ValueError, match=rf"max_workers={bad!r}: expected a whole number"):
            local(num_cpus=1, max_workers=bad)
    monkeypatch.setenv("NBCLUSTER_MAX_WORKERS", "lots")
    with pytest.raises(ValueError, match=r"NBCLUSTER_MAX_WORKERS='lots'"):
        local(num_cpus=1)
    monkeypatch.setenv("NBCLUSTER_MAX_WORKERS", "3")
    assert local(num_cpus=1).worker_limit == 3


@runtime.remote
def slow_child(path: str) -> str:
    """Waits for ``path`` to exist, then answers."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return "child done"


@runtime.remote
def parent_of(path: str) -> tuple[str, int]:
    """Blocks on a slow child; returns its answer and this process's pid."""
    return runtime.get(slow_child.remote(path)), os.getpid()


def test_cancelling_a_parent_with_a_child_inside_its_wait(local, tmp_path):
    """With one worker process, the child runs inside the parent's wait. Cancelling the
    parent alone (recursive=False) cancels it once the child returned; the child finishes
    (not cancelled), and the worker is usable after."""
    local(num_cpus=1, max_workers=1)
    events: list = []
    runtime.subscribe(events.append)
    go = tmp_path / "go"
    p = parent_of.remote(str(go))
    child = wait_for(lambda: next((e.task for e in events if e.kind == K.TASK_STARTED
                                   and e.data.get("inside")), None), what="the child inside")
    assert runtime.cancel(p, recursive=False)
    go.touch()
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(p, timeout=30)
    ends = [e.kind for e in events if e.task == child and e.kind in
            (K.TASK_FINISHED, K.TASK_FAILED, K.TASK_CANCELLED)]
    assert ends == [K.TASK_FINISHED]
    assert runtime.get(depth.remote(3), timeout=30) == 3


def test_a_worker_killed_with_a_child_inside_reruns_both(local, tmp_path):
    """SIGKILL the one worker while a child runs inside its parent: both are retried, and
    the parent's result is right."""
    b = local(num_cpus=1, max_workers=1)
    events: list = []
    runtime.subscribe(events.append)
    go = tmp_path / "go"
    p = parent_of.remote(str(go))
    wait_for(lambda: any(e.kind == K.TASK_STARTED and e.data.get("inside") for e in events),
             what="the child inside")
    [pid] = b.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: sum(1 for e in events if e.kind == K.TASK_RETRIED) >= 2,
             what="both retried")
    go.touch()
    answer, ran_on = runtime.get(p, timeout=60)
    assert answer == "child done" and ran_on != pid
