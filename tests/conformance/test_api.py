"""API semantics on every backend: remote, get, put, wait, options, ObjectRef futures."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import runtime


@runtime.remote
def add(a, b=0):
    return a + b


@runtime.remote
def ident(x):
    return x


@runtime.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@runtime.remote
def get_inner(refs):
    return [runtime.get(r) for r in refs]


def test_remote_get_single_and_list(cluster):
    """get of one ref returns the value; of a list, the values in order."""
    assert runtime.get(add.remote(1, 2)) == 3
    assert runtime.get([add.remote(i, b=i) for i in range(6)]) == [0, 2, 4, 6, 8, 10]
    assert runtime.get([]) == []


def test_put_and_refs_as_arguments(cluster):
    """put stores a value; top-level ref arguments are resolved before the task runs."""
    ref = runtime.put({"k": [1, 2]})
    assert runtime.get(ref) == {"k": [1, 2]}
    assert runtime.get(ident.remote(ref)) == {"k": [1, 2]}
    assert runtime.get(add.remote(add.remote(1, 2), b=add.remote(3))) == 6


def test_nested_refs_are_not_resolved(cluster):
    """Refs inside containers reach the task as refs (Ray semantics); it can get them."""
    refs = [runtime.put(i) for i in range(3)]
    assert runtime.get(get_inner.remote(refs)) == [0, 1, 2]


def test_options_override_and_bad_options(cluster):
    """.options() changes one call; bad options fail when given, naming the keyword."""
    assert runtime.get(add.options(name="renamed").remote(2, 2)) == 4
    with pytest.raises(ValueError, match="num_gpus"):
        add.options(num_gpus=-1)
    with pytest.raises((TypeError, ValueError), match="GPU"):
        add.options(resources={"GPU": "two"})
    with pytest.raises(TypeError, match="TPU"):
        add.options(resources={"TPU": "two"})
    with pytest.raises(TypeError, match="bogus"):
        add.options(bogus=1)
    with pytest.raises(TypeError, match="retry_exceptions"):
        add.options(retry_exceptions=[int])
    with pytest.raises(TypeError, match="cannot be called directly"):
        add(1, 2)


def test_wait_argument_errors(cluster):
    """RELIABILITY 6: bare ref -> TypeError; duplicates, range, bad timeouts -> ValueError."""
    r = add.remote(1)
    with pytest.raises(TypeError):
        runtime.wait(r)
    with pytest.raises(ValueError):
        runtime.wait([r, r])
    with pytest.raises(ValueError):
        runtime.wait([r], num_returns=2)
    with pytest.raises(ValueError):
        runtime.wait([r], num_returns=0)
    with pytest.raises(ValueError):
        runtime.wait([r], timeout=-1)
    with pytest.raises(ValueError):
        runtime.wait([r], timeout=math.nan)
    assert runtime.wait([]) == ([], [])
    runtime.get(r)


def test_wait_order_and_num_returns(cluster):
    """wait returns (ready, not ready) in input order, at most num_returns ready."""
    refs = [add.remote(i) for i in range(5)]
    runtime.get(refs)
    ready, rest = runtime.wait(refs, num_returns=3)
    assert ready == refs[:3] and rest == refs[3:]
    ready, rest = runtime.wait(refs, num_returns=5, timeout=10)
    assert ready == refs and rest == []


def test_wait_timeout_returns_partial(cluster):
    """A wait that times out returns what is ready; the slow task keeps running."""
    slow = sleeper.remote(60)
    fast = add.remote(1)
    runtime.get(fast)
    ready, rest = runtime.wait([slow, fast], num_returns=2, timeout=0.2)
    assert ready == [fast] and rest == [slow]
    assert runtime.cancel(slow)


def test_get_timeout_then_cancel(cluster):
    """RELIABILITY 5: get(timeout) raises a TimeoutError; cancel stops the task."""
    ref = sleeper.remote(600)
    t0 = time.monotonic()
    with pytest.raises(runtime.GetTimeoutError) as info:
        runtime.get(ref, timeout=0.2)
    assert time.monotonic() - t0 < 10, "the timeout was not prompt"
    assert isinstance(info.value, TimeoutError)
    assert not ref.done()
    assert runtime.cancel(ref) is True
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)
    assert ref.cancelled()
    # the cancelled task gave its resources back, and the cluster keeps working
    deadline = time.monotonic() + 20
    while runtime.available_resources() != runtime.cluster_resources():
        assert time.monotonic() < deadline, runtime.available_resources()
        runtime.sleep(0.05)
    assert runtime.get(add.remote(5)) == 5


def test_cancel_pending_task_never_runs(cluster):
    """A task waiting on a dependency is cancelled before it starts; it never runs."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        blocker = sleeper.remote(600)
        dependent = add.remote(blocker)
        assert runtime.cancel(dependent)
        with pytest.raises(runtime.TaskCancelledError):
            runtime.get(dependent, timeout=30)
        runtime.cancel(blocker)
        with pytest.raises(runtime.TaskCancelledError):
            runtime.get(blocker, timeout=30)
    finally:
        unsub()
    started = [e for e in events if e.kind == "task_started" and e.task == dependent.id]
    assert started == []
    assert runtime.cancel(dependent) is False  # already done


def test_objectref_future_vocabulary(cluster):
    """ObjectRef: hashable, done(), result(), exception(), add_done_callback."""
    r = add.remote(20, 22)
    assert r.result(timeout=30) == 42
    assert r.done() and r.exception() is None
    assert hash(r) == hash(r) and {r: 1}[r] == 1
    seen = []
    r.add_done_callback(seen.append)
    assert seen == [r]
    late = sleeper.remote(0.05)
    got = []
    late.add_done_callback(got.append)
    late.result(timeout=30)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [late]


def test_objectref_is_awaitable(cluster):
    """An ObjectRef can be awaited in asyncio code."""
    async def main():
        return await add.remote(3, 4), await asyncio.gather(add.remote(1), add.remote(2))

    assert asyncio.run(main()) == (7, [1, 2])


def test_get_argument_errors(cluster):
    """get of a non-ref is a TypeError naming the type; negative timeout a ValueError."""
    with pytest.raises(TypeError, match="int"):
        runtime.get(3)
    with pytest.raises(TypeError, match="item 1"):
        runtime.get([add.remote(1), 3])
    with pytest.raises(ValueError, match="timeout"):
        runtime.get(add.remote(1), timeout=-1)
