"""A misbehaving policy or autoscaler has the same outcome on every backend (the one
control plane validates every decision): the tasks it broke fail with a ``PolicyError``
naming it, a decision that names nothing is published as ``policy_error``, and the
runtime goes on running tasks. Runs on local worker processes, the sim backend and a
real dask scheduler with workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import runtime
from runtime.cluster import Place, Preempt, ScaleDecision
from runtime.events import EventKind as K
from runtime.policies import FirstFit
from tests.dask.cluster import conformance_session

pytestmark = pytest.mark.timeout(240)

NODES = [
    {"name": "cpu", "resources": {"CPU": 2}},
    {"name": "gpu", "resources": {"CPU": 2, "GPU": 2}, "accelerator_type": "A100"},
]


class Moody:
    """``fifo`` unless told otherwise: ``mode`` picks the way it misbehaves next."""

    name = "moody"

    def __init__(self) -> None:
        self.mode = "ok"
        self.inner = FirstFit()

    def schedule(self, pending: list[Any], cluster: Any) -> list[Any]:
        """Raise, place on a node that does not exist, or add a bogus decision."""
        if self.mode == "raise":
            raise ZeroDivisionError("moody is in a mood")
        if self.mode == "nowhere":
            return [Place(t.id, "nowhere") for t in pending]
        out = list(self.inner.schedule(pending, cluster))
        if self.mode == "bogus":
            out += [Preempt(987654), Place(123456, "cpu"), "garbage"]
        return out


def add(x: int, y: int) -> int:
    """A task body."""
    return x + y


@contextlib.contextmanager
def _start(backend: str, policy: Moody, **options: Any) -> Iterator[None]:
    if runtime.is_initialized():
        runtime.shutdown()
    if backend == "dask":
        with conformance_session(policy=policy, **options):
            yield
        return
    if backend == "sim":
        runtime.init("sim", nodes=NODES, seed=0, policy=policy, **options)
    else:
        runtime.init(nodes=NODES, policy=policy, **options)
    try:
        yield
    finally:
        runtime.shutdown()


BACKENDS = ["local", "sim", pytest.param("dask", marks=[pytest.mark.dask, pytest.mark.slow])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_misbehaving_policy_fails_what_it_broke_and_the_runtime_goes_on(backend):
    """raise -> the tasks it saw fail (the error named); a Place on an unknown node -> that task
    fails; decisions naming no task of the round -> ``policy_error`` events, tasks still
    run; and once the policy behaves, everything runs again."""
    policy = Moody()
    f = runtime.remote(add)
    with _start(backend, policy):
        events: list = []
        runtime.subscribe(events.append)
        assert runtime.get(f.remote(1, 2), timeout=60) == 3

        policy.mode = "raise"
        ref = f.remote(2, 2)
        with pytest.raises(runtime.PolicyError, match=r"'moody' raised while placing task "
                           r"'add'.*ZeroDivisionError: moody is in a mood"):
            runtime.get(ref, timeout=60)

        policy.mode = "nowhere"
        with pytest.raises(runtime.PolicyError, match=r"'moody'.*'add'.*'nowhere'"):
            runtime.get(f.remote(3, 3), timeout=60)

        policy.mode = "bogus"
        assert runtime.get([f.remote(i, 1) for i in range(4)], timeout=60) == [1, 2, 3, 4]
        errors = [e.data["error"] for e in events if e.kind == K.POLICY_ERROR]
        assert any("preempted task id 987654 which is not a running task" in e for e in errors)
        assert any("placed task id 123456 which is not among the pending" in e for e in errors)
        assert any("returned 'garbage' (str); expected Place" in e for e in errors)

        policy.mode = "ok"
        g = runtime.remote(num_gpus=1)(add)
        assert runtime.get([f.remote(5, 5), g.remote(6, 6)], timeout=60) == [10, 12]


class Grumpy:
    """An autoscaler that raises whenever it is asked."""

    name = "grumpy"

    def decide(self, unmet: list[Any], cluster: Any, node_types: Any) -> ScaleDecision:
        """Always raise."""
        raise RuntimeError("grumpy says no")


@pytest.mark.parametrize("backend", ["local", "sim"])
def test_a_raising_autoscaler_fails_only_what_a_new_node_would_host(backend):
    """The task only a new node could host fails with a PolicyError naming the autoscaler;
    tasks present nodes can host still run."""
    types = [{"name": "qpu", "resources": {"CPU": 1, "QPU": 1}, "count": 0, "max_count": 1}]
    with _start(backend, Moody(), autoscaler=Grumpy(), node_types=types):
        f = runtime.remote(add)
        q = runtime.remote(resources={"QPU": 1})(add)
        stuck = q.remote(1, 1)
        with pytest.raises(runtime.PolicyError, match=r"autoscaler 'grumpy' raised while "
                           r"deciding for task 'add'.*grumpy says no"):
            runtime.get(stuck, timeout=60)
        assert runtime.get([f.remote(i, i) for i in range(3)], timeout=60) == [0, 2, 4]
        assert {n["NodeType"] for n in runtime.nodes()} <= {"cpu", "gpu"}
