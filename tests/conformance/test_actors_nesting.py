"""Actors and nested tasks on every backend."""

from __future__ import annotations

import time

import pytest

import runtime


@runtime.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.log = []

    def add(self, k=1):
        self.n += k
        self.log.append(k)
        return self.n

    def history(self):
        return list(self.log)

    def fail(self):
        raise KeyError("no such thing")

    def slow_add(self, k, seconds):
        time.sleep(seconds)
        return self.add(k)


@runtime.remote
def fib(n):
    if n < 2:
        return n
    return sum(runtime.get([fib.remote(n - 1), fib.remote(n - 2)]))


@runtime.remote
def fan_wait(n):
    refs = [square.remote(i) for i in range(n)]
    ready, rest = runtime.wait(refs, num_returns=n)
    return sorted(runtime.get(ready)) if not rest else None


@runtime.remote
def square(x):
    return x * x


@runtime.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@runtime.remote
def parent_of_nap():
    return runtime.get(nap.remote(0.5))


@runtime.remote
def use_actor(counter, k):
    return runtime.get(counter.add.remote(k))


def test_actor_calls_run_in_order_and_keep_state(cluster):
    """Methods run one at a time in submission order; state lives in the actor."""
    c = Counter.remote(10)
    refs = [c.add.remote(i) for i in range(1, 21)]
    assert runtime.get(refs, timeout=60)[-1] == 10 + sum(range(1, 21))
    assert runtime.get(c.history.remote(), timeout=60) == list(range(1, 21))
    runtime.kill(c)


def test_actor_method_error_keeps_actor_alive(cluster):
    """A method that raises fails only that call, with the original type."""
    c = Counter.remote()
    with pytest.raises(KeyError) as info:
        runtime.get(c.fail.remote(), timeout=60)
    assert isinstance(info.value, runtime.TaskError)
    assert runtime.get(c.add.remote(), timeout=60) == 1
    runtime.kill(c)


def test_actor_handle_passed_to_task(cluster):
    """A task can call an actor whose handle it received."""
    c = Counter.remote()
    assert runtime.get(use_actor.remote(c, 5), timeout=60) == 5
    assert runtime.get(c.add.remote(1), timeout=60) == 6
    runtime.kill(c)


def test_actor_holds_resources_for_its_life(cluster):
    """An actor with num_gpus=1 holds a GPU until it is killed."""
    total = runtime.cluster_resources()["GPU"]
    c = Counter.options(num_gpus=1).remote()
    runtime.get(c.add.remote(), timeout=60)
    assert runtime.available_resources().get("GPU", 0.0) <= total - 1
    runtime.kill(c)
    deadline = time.monotonic() + 10
    while runtime.available_resources().get("GPU", 0.0) < total:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_killed_actor_raises_actor_died(cluster):
    """After kill, pending and later calls raise ActorDiedError."""
    c = Counter.remote()
    runtime.get(c.add.remote(), timeout=60)
    runtime.kill(c)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(c.add.remote(), timeout=30)


def test_unknown_actor_method(cluster):
    """A method the class lacks is an AttributeError naming it, before anything is sent."""
    c = Counter.remote()
    with pytest.raises(AttributeError, match="nope"):
        c.nope.remote()
    runtime.kill(c)


def test_nested_fib_deeper_than_workers(cluster):
    """Nested get lends the CPU back: recursion deeper than the CPU count finishes."""
    assert runtime.get(fib.remote(7), timeout=120) == 13


def test_nested_wait_lends_too(cluster):
    """A task blocked in wait() lends its CPU, like get()."""
    assert runtime.get([fan_wait.remote(6) for _ in range(6)], timeout=120) == \
        [[i * i for i in range(6)]] * 6


def test_blocked_events_are_published(cluster):
    """A task blocked in a nested get publishes task_blocked and task_unblocked."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        ref = parent_of_nap.remote()
        assert runtime.get(ref, timeout=60) == 0.5
    finally:
        unsub()
    kinds = [e.kind for e in events if e.task == ref.id]
    assert "task_blocked" in kinds and "task_unblocked" in kinds
    assert kinds.index("task_blocked") < kinds.index("task_unblocked")
