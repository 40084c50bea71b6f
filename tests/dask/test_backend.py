"""The dask backend on a real scheduler + 2 workers: mapping, nesting, policy, bad input."""

from __future__ import annotations

import time

import pytest

import runtime
from runtime.policies import FirstFit, Place
from tests.dask.cluster import run_options

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


@runtime.remote
def add(a, b=0):
    return a + b


@runtime.remote
def node_name():
    import distributed

    return str(distributed.get_worker().name)


@runtime.remote(num_cpus=1)
def fib(n):
    if n < 2:
        return n
    return sum(runtime.get([fib.remote(n - 1), fib.remote(n - 2)]))


@runtime.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_dask_resources_and_accelerator_label_route_tasks(rt):
    """GPU and accelerator_type requests run only on the worker that declares them."""
    gpu = node_name.options(num_gpus=1)
    a100 = node_name.options(accelerator_type="A100")
    assert set(runtime.get([gpu.remote() for _ in range(4)], timeout=60)) == {"gpu"}
    assert set(runtime.get([a100.remote() for _ in range(4)], timeout=60)) == {"gpu"}
    nodes = {n["NodeID"]: n for n in runtime.nodes()}
    assert nodes["gpu"]["Labels"] == {"accelerator_type": "A100"}
    assert nodes["cpu"]["Resources"] == {"CPU": 2.0}
    assert runtime.cluster_resources() == {"CPU": 4.0, "GPU": 2.0}


def test_infeasible_request_fails_at_submit_naming_the_resource(rt):
    """A request no worker (nor declared node type) can satisfy raises at submit."""
    with pytest.raises(runtime.InfeasibleRequestError, match="TPU"):
        add.options(resources={"TPU": 1}).remote(1)
    with pytest.raises(runtime.InfeasibleRequestError, match="V100"):
        add.options(accelerator_type="V100").remote(1)
    with pytest.raises(runtime.InfeasibleRequestError, match="GPU"):
        add.options(num_gpus=3).remote(1)


def test_nested_tasks_deeper_than_the_threads_do_not_deadlock(rt):
    """fib(8) blocks far more tasks than the 4 worker threads: blocked tasks secede."""
    assert runtime.get(fib.remote(8), timeout=90) == 21
    kinds = {e.kind for e in runtime.current_backend().log.scale_events} | set()
    assert kinds == set()  # no autoscaler here


def test_events_feed_status_text(rt):
    """Task and node events from dask reach the ClusterLog that status views read."""
    from runtime.view import status_text

    runtime.get([add.remote(i) for i in range(5)], timeout=60)
    counts = runtime.current_backend().log.counts()
    assert counts["finished"] >= 5
    text = status_text(runtime.current_backend())
    assert "dask cluster" in text and "gpu" in text and "A100" in text


def test_task_started_event_names_the_worker(rt):
    """task_started carries the node (worker name) and attempt 1."""
    events = []
    unsub = runtime.subscribe(events.append)
    ref = node_name.options(num_gpus=1).remote()
    assert runtime.get(ref, timeout=60) == "gpu"
    unsub()
    started = [e for e in events if e.kind == "task_started" and e.task == ref.id]
    assert [(e.node, e.data["attempt"]) for e in started] == [("gpu", 1)]


class OnlyNode:
    """A policy that places every task on one node, when it fits there."""

    name = "only"

    def __init__(self, node):
        self.node = node

    def schedule(self, pending, cluster):
        out = []
        taken = 0.0
        for t in pending:
            free = cluster.node(self.node).free.get("CPU", 0.0) - taken
            if t.request.get("CPU", 0.0) <= free:
                out.append(Place(t.id, self.node))
                taken += t.request.get("CPU", 0.0)
        return out


class BadPolicy:
    """Places tasks on a node that does not exist."""

    name = "bad"

    def schedule(self, pending, cluster):
        return [Place(t.id, "nowhere") for t in pending]


def test_policy_pins_tasks_to_the_chosen_worker(procs):
    """With a policy, the same policy object picks the worker and the task is pinned there."""
    with runtime.init(procs.address, policy=OnlyNode("cpu"), **run_options()):
        refs = [node_name.remote() for _ in range(6)]
        assert runtime.get(refs, timeout=60) == ["cpu"] * 6
        assert runtime.get(add.remote(add.remote(1, 2), 3), timeout=60) == 6
        ready, rest = runtime.wait([nap.remote(0.01), nap.remote(30)], num_returns=1, timeout=30)
        assert len(ready) == 1 and len(rest) == 1
        runtime.cancel(rest[0])
        assert runtime.current_backend().describe()["policy"] == "only"


def test_policy_fifo_by_name_and_decisions_are_checked(procs):
    """A built-in policy by name works; an invalid decision fails the task naming the policy."""
    with runtime.init(procs.address, policy="fifo", **run_options()):
        assert runtime.get([add.remote(i, 1) for i in range(4)], timeout=60) == [1, 2, 3, 4]
        assert isinstance(runtime.current_backend().control.policy, FirstFit)
    with runtime.init(procs.address, policy=BadPolicy(), **run_options()):
        with pytest.raises(runtime.PolicyError, match="'bad'.*unknown node 'nowhere'"):
            runtime.get(add.remote(1), timeout=60)


def test_bad_init_options_name_the_argument(procs):
    """Options the dask backend does not take fail at init, naming them."""
    with pytest.raises(TypeError, match="num_cpus"):
        runtime.init(procs.address, num_cpus=2)
    with pytest.raises(TypeError, match="bogus"):
        runtime.init(procs.address, bogus=1)
    with pytest.raises(TypeError, match="autoscaler= needs a dask cluster manager"):
        runtime.init(procs.address, autoscaler="demand", node_types=[{"name": "x"}])
    assert not runtime.is_initialized()


def test_connect_with_an_existing_client(procs):
    """init(distributed.Client) uses that client and leaves it open at shutdown."""
    import distributed

    with distributed.Client(procs.address, set_as_default=False) as client:
        with runtime.init(client, **run_options()):
            assert runtime.get(add.remote(2, 3), timeout=60) == 5
        assert client.status == "running"


def test_two_sessions_on_one_scheduler_do_not_share_keys(procs):
    """Two drivers on one scheduler both number tasks from 1; keys carry a session token,
    so the second session never gets the first one's result for the same id."""
    from runtime.backends.base import TaskSpec
    from runtime.backends.dask import make_backend
    from runtime.resources import Resources

    with runtime.init(procs.address, **run_options()):
        first = add.remote(1, 2)
        assert runtime.get(first, timeout=60) == 3
        other = make_backend(procs.address, **run_options())
        try:
            spec = TaskSpec(_plus, (20, 22), {}, "add", {}, Resources({"CPU": 1}))
            ref = other.submit(spec)
            assert ref.id == first.id
            assert other.get([ref], 60) == [42]
        finally:
            other.shutdown()
        assert runtime.get(first, timeout=60) == 3


def _plus(a, b):
    return a + b
