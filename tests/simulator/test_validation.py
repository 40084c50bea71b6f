"""Bad configuration fails at construction, naming the field and the value (RELIABILITY 22)."""

from __future__ import annotations

import math
import re

import pytest

from runtime.cluster import Place
from runtime.errors import PolicyError
from simulator.cluster import ClusterConfig
from simulator.devices import DeviceType, Window
from simulator.engine import Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.base import SimTask
from simulator.workloads.dags import Dag

from .conftest import small_cluster

pytestmark = pytest.mark.timeout(30)


def test_negative_capacity_names_field():
    """A node type with negative CPUs is refused with the field and the value."""
    with pytest.raises(ValueError, match=r"cpus.*-4"):
        NodeSpec("bad", cpus=-4)


def test_negative_extra_resource_names_resource():
    """A negative custom resource amount is refused naming the resource."""
    with pytest.raises(ValueError, match=r"'FPGA'.*-1"):
        NodeSpec("bad", extra={"FPGA": -1})


@pytest.mark.parametrize("dur", [math.nan, -1.0, math.inf])
def test_bad_duration_names_value(dur):
    """NaN, negative or infinite task durations are refused."""
    with pytest.raises(ValueError, match="duration"):
        SimTask(0, 0.0, dur, {"CPU": 1})


def test_dag_cycle_is_named():
    """A cycle in a DAG is reported with its steps when the DAG is ordered."""
    dag = Dag("loop").add("a", 1, deps=["c"]).add("b", 1, deps=["a"]).add("c", 1, deps=["b"])
    with pytest.raises(ValueError, match=r"cycle: .*a.*b.*c"):
        dag.order()


def test_until_in_the_past_is_refused(cluster):
    """run(until=...) before the current time names the value."""
    sim = Simulation(cluster, [SimTask(0, 0.0, 5.0, {"CPU": 1})])
    sim.run(until=2.0)
    with pytest.raises(ValueError, match=r"until.*1\.0"):
        sim.run(until=1.0)


def test_unknown_policy_name_lists_choices(cluster):
    """An unknown policy name fails at construction and lists the known ones."""
    with pytest.raises(ValueError, match=r"'nope'.*fifo"):
        Simulation(cluster, [], policy="nope")


def test_unknown_autoscaler_name(cluster):
    """An unknown autoscaler name fails at construction."""
    with pytest.raises(ValueError, match=r"'grow'"):
        Simulation(cluster, [], autoscaler="grow")


def test_device_and_window_validation():
    """Device speeds and windows are checked when built."""
    with pytest.raises(ValueError, match=r"speed\['train'\].*-2"):
        DeviceType("GPU", "X", speed={"train": -2})
    with pytest.raises(ValueError, match="duration"):
        Window(0.0, 0.0)
    with pytest.raises(ValueError, match="period"):
        Window(0.0, 10.0, period=5.0)


def test_cluster_duplicate_names():
    """Two node types with one name are refused."""
    with pytest.raises(ValueError, match="cpu"):
        ClusterConfig([NodeSpec("cpu"), NodeSpec("cpu")])


def test_workload_out_of_order_and_unknown_dep(cluster):
    """Tasks must come in arrival order; deps must name earlier tasks."""
    with pytest.raises(ValueError, match="arrival order"):
        Simulation(cluster, [SimTask(0, 5.0, 1, {"CPU": 1}), SimTask(1, 1.0, 1, {"CPU": 1})]).run()
    with pytest.raises(ValueError, match="unknown task 7"):
        Simulation(cluster, [SimTask(0, 0.0, 1, {"CPU": 1}, deps=[7])]).run()


class _BadPolicy:
    """Places every task on whatever node it was told to."""

    name = "bad"

    def __init__(self, node: str) -> None:
        self.node = node

    def schedule(self, pending, cluster):
        return [Place(t.id, self.node) for t in pending]


@pytest.mark.parametrize("node,what", [
    ("nowhere-1", "unknown node"),
    ("cpu-000000", "accelerator|GPU"),
])
def test_bad_placements_fail_the_task_with_a_policy_error(node, what):
    """A policy that places on an unknown node or one lacking the GPU fails that task with a
    PolicyError naming the policy, the task and the reason; the run ends cleanly."""
    sim = Simulation(small_cluster(), [SimTask(0, 0.0, 1.0, {"CPU": 1, "GPU": 1}, name="trainer",
                                               accelerator_type="V100")],
                     policy=_BadPolicy(node)).run()
    err = sim.errors[0]
    assert isinstance(err, PolicyError)
    assert re.search(rf"'bad' placed task 'trainer' \(id 0\).*({what})", str(err)), str(err)
    assert sim.metrics()["failed"] == 1 and sim.policy_errors == [err]


def test_over_capacity_placement_fails_that_task():
    """Placing more than a node has fails that task with a PolicyError naming policy and task;
    the one that fitted runs; nothing went negative."""
    tasks = [SimTask(i, 0.0, 10.0, {"CPU": 3}, name=f"big{i}") for i in range(2)]
    sim = Simulation(small_cluster(), tasks, policy=_BadPolicy("cpu-000000"))
    sim.run(until=5.0)
    node = sim.state.node("cpu-000000")
    assert node.free["CPU"] == 1.0
    assert list(sim.errors) == [1]
    assert re.search(r"'bad' placed task 'big1' \(id 1\).*over capacity", str(sim.errors[1]))
    sim.run()
    assert sim.metrics()["finished"] == 1 and sim.metrics()["failed"] == 1


def test_infeasible_request_fails_task_fast(cluster):
    """A QPU request on a cluster without QPUs fails that task with InfeasibleRequestError."""
    sim = Simulation(cluster, [SimTask(0, 0.0, 1.0, {"QPU": 1}, name="circ"),
                               SimTask(1, 0.0, 1.0, {"CPU": 1})]).run()
    assert sim.done
    assert type(sim.errors[0]).__name__ == "InfeasibleRequestError"
    assert "QPU" in str(sim.errors[0])
    assert sim.metrics()["finished"] == 1
