"""RELIABILITY 23 on the local backend: random worker kills under load."""

from __future__ import annotations

import pytest

from tests.reliability.chaos import check, kill_actors, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def test_random_worker_kills_under_load_lose_nothing_and_hang_nothing(local):
    """Workers (task and actor processes) are SIGKILLed every 50-150 ms for 4 s while
    tasks, dependants, nested tasks and actor calls run: every result is right, or a
    WorkerCrashedError naming max_retries + 1 attempts (tasks allowed 2 retries), or an
    ActorDiedError (the actor allowed one restart); no get() outlives its timeout."""
    backend = local(num_cpus=2)
    report = run_chaos(backend.worker_pids, seconds=4, interval=(0.05, 0.15), timeout=60)
    counts = check(report, timeout=60, min_kills=20)
    kill_actors(report)
    print("chaos:", report.kills, "kills", counts)
    assert counts.get("ok", 0) >= 200, counts
    assert backend.errors == []
