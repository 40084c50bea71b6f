"""Errors and the event stream on every backend."""

from __future__ import annotations

import threading

import pytest

import runtime


@runtime.remote
def boom(msg="bad"):
    raise ValueError(msg)


@runtime.remote
def add(a, b=0):
    return a + b


@runtime.remote
class Tally:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


@runtime.remote
def flaky(tally, fail_times, exc_name):
    n = runtime.get(tally.bump.remote())
    if n <= fail_times:
        raise {"ValueError": ValueError, "KeyError": KeyError}[exc_name](f"attempt {n}")
    return n


@runtime.remote
def returns_lock():
    return threading.Lock()


def test_task_error_is_cause_type_with_remote_traceback(cluster):
    """RELIABILITY 3: the error is a ValueError and a TaskError, with the remote traceback."""
    with pytest.raises(ValueError) as info:
        runtime.get(boom.remote("bad input"), timeout=60)
    err = info.value
    assert isinstance(err, runtime.TaskError)
    assert "bad input" in str(err)
    assert "boom" in err.remote_traceback and "ValueError" in err.remote_traceback


def test_task_error_runs_once_by_default(cluster):
    """Without retry_exceptions a raising task runs once."""
    t = Tally.remote()
    with pytest.raises(ValueError):
        runtime.get(flaky.remote(t, 5, "ValueError"), timeout=60)
    assert runtime.get(t.bump.remote(), timeout=60) == 2
    runtime.kill(t)


def test_retry_exceptions_retries_listed_types(cluster):
    """retry_exceptions=[ValueError] re-runs a ValueError; [KeyError] does not."""
    t = Tally.remote()
    ok = flaky.options(retry_exceptions=[ValueError], max_retries=3).remote(t, 2, "ValueError")
    assert runtime.get(ok, timeout=60) == 3
    t2 = Tally.remote()
    bad = flaky.options(retry_exceptions=[KeyError], max_retries=3).remote(t2, 2, "ValueError")
    with pytest.raises(ValueError):
        runtime.get(bad, timeout=60)
    assert runtime.get(t2.bump.remote(), timeout=60) == 2
    runtime.kill(t)
    runtime.kill(t2)


def test_failed_dependency_fails_dependent_without_running(cluster):
    """RELIABILITY 4: g(f()) where f raises: get(g) raises f's error, g never starts."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        f = boom.remote("upstream")
        g = add.remote(f, 1)
        with pytest.raises(ValueError, match="upstream"):
            runtime.get(g, timeout=60)
    finally:
        unsub()
    assert not [e for e in events if e.kind == "task_started" and e.task == g.id]
    assert [e for e in events if e.kind == "task_failed" and e.task == g.id]


def test_get_raises_first_error_in_order(cluster):
    """get(list) raises the first failing ref's error, in list order."""
    with pytest.raises(KeyError):
        runtime.get([add.remote(1), flaky.remote(Tally.remote(), 9, "KeyError"),
                     boom.remote()], timeout=60)


def test_unpicklable_argument_fails_at_submit(cluster):
    """RELIABILITY 10: a lock argument fails at submit, naming the argument and its type."""
    with pytest.raises(runtime.SerializationError) as info:
        add.remote(1, b=threading.Lock())
    assert "'b'" in str(info.value) and "lock" in str(info.value)
    with pytest.raises(TypeError, match="argument 0.*generator"):
        add.remote(i for i in range(3))


def test_unpicklable_return_fails_only_that_task(cluster):
    """RELIABILITY 10: an unpicklable return value fails that task; the worker lives on."""
    with pytest.raises(runtime.SerializationError, match="returns_lock|lock"):
        runtime.get(returns_lock.remote(), timeout=60)
    assert runtime.get(add.remote(2, 3), timeout=60) == 5


def test_events_describe_a_task_life(cluster):
    """submitted (name, resources) -> placed (by the control plane, naming the node) ->
    started (attempt, the same node) -> finished, in that order. On dask without a policy
    dask's scheduler places tasks, so there is no placement decision to publish."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        ref = add.options(name="adder", num_gpus=0.5).remote(1, 1)
        runtime.get(ref, timeout=60)
    finally:
        unsub()
    mine = [e for e in events if e.task == ref.id]
    planned = cluster.name != "dask"
    want = ["task_submitted", *(["task_placed"] if planned else []), "task_started",
            "task_finished"]
    assert [e.kind for e in mine] == want
    sub = mine[0]
    assert sub.data["name"] == "adder"
    assert sub.data["resources"] == {"CPU": 1.0, "GPU": 0.5}
    started = mine[-2]
    assert started.data["attempt"] == 1 and started.node
    if planned:
        assert mine[1].node == started.node and mine[1].data["decided"] is True
    assert all(a.time <= b.time for a, b in zip(mine, mine[1:], strict=False))


def test_cluster_log_counts(cluster):
    """The backend's ClusterLog folds the stream into per-state counts."""
    log = runtime.current_backend().log
    before = log.counts().get("finished", 0)
    runtime.get([add.remote(i) for i in range(5)], timeout=60)
    assert log.counts().get("finished", 0) >= before + 5
    rec = max(log.tasks.values(), key=lambda r: r.id)
    assert rec.state == "finished" and rec.attempts == 1
