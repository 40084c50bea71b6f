"""One task-state vocabulary: each backend's own task records use the event stream's words
(``runtime.events.TASK_STATES``), and agree with the log built from its events, for a task
blocked in a nested ``get``, the child it waits for, a task waiting for its input, and
tasks that finished or failed."""

from __future__ import annotations

import time

import pytest

import runtime
from runtime.events import TASK_STATES

pytestmark = pytest.mark.timeout(120)


def _fresh(*args, **kwargs) -> None:
    if runtime.is_initialized():
        runtime.shutdown()
    runtime.init(*args, **kwargs)


def _states(backend) -> dict[int, tuple[str, str]]:
    """task id -> (the backend's own state, the event log's state), for live tasks."""
    log = backend.log.tasks
    return {tid: (t.state, log[tid].state) for tid, t in list(backend._tasks.items())
            if tid in log}


def test_local_task_records_speak_the_event_streams_words(tmp_path):
    """While a parent blocks on its child, and a third task waits for the parent's result,
    the local backend's records say blocked / running / pending, as its log does."""
    _fresh(num_cpus=2)
    try:
        @runtime.remote
        def child(path: str) -> int:
            import os
            import time as t

            while not os.path.exists(path):
                t.sleep(0.01)
            return 1

        @runtime.remote
        def parent(path: str) -> int:
            return runtime.get(child.remote(path)) + 1

        @runtime.remote
        def after(x: int) -> int:
            return x * 10

        go = tmp_path / "go"
        p = parent.remote(str(go))
        a = after.remote(p)
        b = runtime.current_backend()
        deadline = time.monotonic() + 30
        while sorted(s for s, _ in _states(b).values()) != ["blocked", "pending", "running"]:
            assert time.monotonic() < deadline, _states(b)
            time.sleep(0.02)
        states = _states(b)
        assert all(own == logged for own, logged in states.values()), states
        assert states[p.id][0] == "blocked" and states[a.id][0] == "pending"
        assert b._tasks[a.id].stage == "inputs"
        go.touch()
        assert runtime.get(a, timeout=30) == 20
        assert b._tasks.get(a.id) is None or b._tasks[a.id].state == "finished"
        assert b.log.tasks[a.id].state == "finished"
    finally:
        runtime.shutdown()


def test_sim_task_records_speak_the_event_streams_words():
    """The same on the sim backend, seen from a probe task at a virtual instant."""
    _fresh("sim", num_cpus=4, seed=0)
    try:
        @runtime.remote(sim_duration=10)
        def child() -> int:
            return 1

        @runtime.remote
        def parent() -> int:
            return runtime.get(child.remote()) + 1

        @runtime.remote
        def after(x: int) -> int:
            return x * 10

        @runtime.remote
        def probe() -> dict:
            runtime.sleep(5)
            return _states(runtime.current_backend())

        @runtime.remote
        def boom() -> None:
            raise ValueError("no")

        bad = boom.remote()
        p = parent.remote()
        a = after.remote(p)
        seen = runtime.get(probe.remote())
        assert all(own == logged and own in TASK_STATES for own, logged in seen.values()), seen
        assert seen[p.id] == ("blocked", "blocked") and seen[a.id] == ("pending", "pending")
        assert sorted(s for s, _ in seen.values()).count("running") == 2  # child, probe
        assert runtime.get(a) == 20
        with pytest.raises(ValueError):
            runtime.get(bad)
        log = runtime.current_backend().log.tasks
        assert log[a.id].state == "finished" and log[bad.id].state == "failed"
    finally:
        runtime.shutdown()
