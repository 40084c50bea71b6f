"""Scaling the local backend by hand: ``backend.scale(node_type, count)``."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

import runtime
from tests.runtime.conftest import _alive

pytestmark = [pytest.mark.timeout(60)]

TWO_TYPES = [{"name": "cpu", "resources": {"CPU": 1}, "count": 1},
             {"name": "tpu", "resources": {"CPU": 1, "TPU": 1}, "count": 1}]


def wait_for(cond: Any, timeout: float = 15.0) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def node_states(b: Any) -> dict[str, str]:
    """``{node id: state}`` of the backend's nodes."""
    return {n.id: n.state for n in b.nodes()}


def pids_on(b: Any, node: str) -> set[int]:
    """Pids of the live workers of one node."""
    with b._lock:
        return {w.pid for w in b._workers.values() if w.node == node}


@runtime.remote
def where() -> int:
    """A trivial task (where it ran is read from the cluster log)."""
    return os.getpid()


def ran_on(b: Any, refs: list[Any]) -> set[str]:
    """Wait for ``refs``; the nodes they ran on, from the cluster log."""
    runtime.get(refs, timeout=30)
    return {b.log.tasks[r.id].node for r in refs}


@runtime.remote(resources={"TPU": 1})
def hold(path: str) -> int:
    """Run until ``path`` exists; return the worker's pid."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def test_scale_up_and_down_idle_nodes(local):
    """Up: new nodes with workers that run tasks. Down: idle nodes and their workers go,
    with node_added / node_removed / scale_decision events."""
    b = local(nodes=TWO_TYPES)
    seen: list[Any] = []
    b.events.subscribe(seen.append)
    b.scale("cpu", 3)
    assert node_states(b) == {"cpu-0": "up", "cpu-1": "up", "cpu-2": "up", "tpu-0": "up"}
    assert runtime.cluster_resources()["CPU"] == 4
    assert [e.node for e in seen if e.kind == "node_added"] == ["cpu-1", "cpu-2"]
    added_pids = pids_on(b, "cpu-1") | pids_on(b, "cpu-2")
    assert len(added_pids) == 2
    ran = ran_on(b, [where.remote() for _ in range(8)])
    assert ran <= set(node_states(b))
    b.scale("cpu", 1)
    assert node_states(b) == {"cpu-0": "up", "tpu-0": "up"}
    assert sorted(e.node for e in seen if e.kind == "node_removed") == ["cpu-1", "cpu-2"]
    decisions = [e.data for e in seen if e.kind == "scale_decision"]
    assert decisions[0]["add"] == {"cpu": 2} and decisions[0]["reason"] == "scale by hand"
    assert sorted(decisions[1]["remove"]) == ["cpu-1", "cpu-2"] and not decisions[1]["drain"]
    assert wait_for(lambda: not any(_alive(p) for p in added_pids))
    assert ran_on(b, [where.remote()]) <= {"cpu-0", "tpu-0"}
    assert runtime.cluster_resources()["CPU"] == 2


def test_busy_node_drains_then_goes(local, tmp_path):
    """A node running a task is drained: no new task lands there; it is removed (and its
    worker exits) when the task ends; the task's result is intact."""
    b = local(nodes=[{"name": "cpu", "resources": {"CPU": 1}, "count": 1},
                     {"name": "tpu", "resources": {"CPU": 2, "TPU": 1}, "count": 1}])
    go = tmp_path / "go"
    ref = hold.remote(str(go))
    assert wait_for(lambda: b.nodes()[1].free.get("TPU") == 0)
    tpu_pids = pids_on(b, "tpu-0")
    b.scale("tpu", 0)
    assert node_states(b) == {"cpu-0": "up", "tpu-0": "draining"}
    ev = b.log.scale_events[-1].data
    assert ev["drain"] == ["tpu-0"] and ev["remove"] == ["tpu-0"]
    # tpu-0 has a free CPU, but new tasks go to cpu-0 only
    assert ran_on(b, [where.remote() for _ in range(6)]) == {"cpu-0"}
    # a TPU task submitted while the only TPU node drains fails once it is gone (no hang)
    late = hold.remote(str(go))
    go.write_text("go")
    assert runtime.get(ref, timeout=30) in tpu_pids
    assert wait_for(lambda: "tpu-0" not in node_states(b))
    assert wait_for(lambda: not any(_alive(p) for p in tpu_pids))
    with pytest.raises(runtime.InfeasibleRequestError, match="removed by scale"):
        runtime.get(late, timeout=30)
    with pytest.raises(runtime.InfeasibleRequestError, match="TPU"):
        hold.remote(str(go))  # no TPU node any more: refused at submit
    b.scale("tpu", 1)  # the type is still known: a fresh node comes back
    assert node_states(b) == {"cpu-0": "up", "tpu-1": "up"}
    assert runtime.get(hold.remote(str(go)), timeout=30) in pids_on(b, "tpu-1")


def test_scale_up_revives_a_draining_node(local, tmp_path):
    """Scaling back up while a node drains makes it up again instead of adding one."""
    b = local(nodes=TWO_TYPES)
    go = tmp_path / "go"
    ref = hold.remote(str(go))
    assert wait_for(lambda: b.nodes()[1].free.get("TPU") == 0)
    b.scale("tpu", 0)
    assert node_states(b)["tpu-0"] == "draining"
    b.scale("tpu", 1)
    assert node_states(b) == {"cpu-0": "up", "tpu-0": "up"}
    assert b.log.scale_events[-1].data["revive"] == ["tpu-0"]
    go.write_text("go")
    runtime.get(ref, timeout=30)
    time.sleep(0.2)  # a removal would come within the next scheduling pass
    assert node_states(b) == {"cpu-0": "up", "tpu-0": "up"}


def test_node_type_without_nodes_and_single_type_default(local):
    """A type known only from node_types= can be scaled from 0; with one type, the name
    may be left out."""
    b = local(num_cpus=1, node_types=[{"name": "big", "resources": {"CPU": 2, "GPU": 1},
                                       "accelerator_type": "A100", "count": 0}])
    b.scale("big", 1)
    assert node_states(b) == {"big-0": "up", "local-0": "up"}
    assert b.nodes()[0].labels["accelerator_type"] == "A100"
    assert ran_on(b, [where.options(num_gpus=1, accelerator_type="A100").remote()]) == \
        {"big-0"}
    runtime.shutdown()
    b = local(num_cpus=1)
    b.scale(None, 2)
    assert node_states(b) == {"local-0": "up", "local-1": "up"}


def test_bad_scale_requests_name_the_problem(local, tmp_path):
    """Unknown type, bad count, over max_count, and a scale-down that would strand a
    queued task are ValueErrors naming the argument; nothing changes."""
    b = local(nodes=[*TWO_TYPES, {"name": "capped", "resources": {"CPU": 1}, "count": 1,
                                  "max_count": 2}])
    before = node_states(b)
    with pytest.raises(ValueError, match=r"node_type='gpu'.*known: 'capped', 'cpu', 'tpu'"):
        b.scale("gpu", 1)
    with pytest.raises(ValueError, match=r"node_type=None: name one of"):
        b.scale(None, 1)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"count=.*expected an int >= 0"):
            b.scale("cpu", bad)
    with pytest.raises(ValueError, match=r"count=3: .*'capped'.*max_count=2"):
        b.scale("capped", 3)
    go = tmp_path / "go"
    first = hold.remote(str(go))
    assert wait_for(lambda: b.nodes()[2].free.get("TPU") == 0)
    # waits for the one TPU (another shape, so it is not sent ahead to the busy worker)
    queued = hold.options(num_cpus=0.5).remote(str(go))
    assert wait_for(lambda: b.log.tasks.get(queued.id) is not None)
    with pytest.raises(ValueError, match=r"node_type='tpu'.*'hold'.*queued.*TPU"):
        b.scale("tpu", 0)
    assert node_states(b) == before
    go.write_text("go")
    assert len(set(runtime.get([first, queued], timeout=30))) >= 1


@runtime.remote(resources={"TPU": 1})
class Counter:
    """An actor that holds the TPU while it lives."""

    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        """Count one more call."""
        self.n += 1
        return self.n


def test_node_with_an_actor_drains_until_the_actor_is_killed(local):
    """An actor keeps its draining node (and keeps answering); killing it lets the node go."""
    b = local(nodes=TWO_TYPES)
    c = Counter.remote()
    assert runtime.get(c.add.remote(), timeout=30) == 1
    actor_pids = pids_on(b, "tpu-0")
    b.scale("tpu", 0)
    assert node_states(b)["tpu-0"] == "draining"
    assert runtime.get([c.add.remote() for _ in range(3)], timeout=30) == [2, 3, 4]
    assert node_states(b)["tpu-0"] == "draining"
    runtime.kill(c)
    assert wait_for(lambda: "tpu-0" not in node_states(b))
    assert wait_for(lambda: not any(_alive(p) for p in actor_pids))


def test_scale_to_the_current_count_changes_nothing(local):
    """Asking for the count there already is publishes no decision and starts nothing."""
    b = local(nodes=TWO_TYPES)
    pids = b.worker_pids()
    b.scale("cpu", 1)
    assert b.log.scale_events == [] and b.worker_pids() == pids
    assert node_states(b) == {"cpu-0": "up", "tpu-0": "up"}
