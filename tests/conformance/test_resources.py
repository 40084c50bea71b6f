"""Resources on every backend: placement by resources and accelerator, fractions, infeasible."""

from __future__ import annotations

import time

import pytest

import runtime


@runtime.remote
def hold(seconds=0.05):
    time.sleep(seconds)
    return "ok"


def _started_nodes(events, refs):
    ids = {r.id for r in refs}
    return {e.task: e.node for e in events if e.kind == "task_started" and e.task in ids}


def test_cluster_description(cluster):
    """nodes(), cluster_resources() and available_resources() describe the standard cluster."""
    nodes = runtime.nodes()
    assert len(nodes) == 2
    assert all(n["Alive"] for n in nodes)
    gpu = cluster.node_with("GPU")
    assert gpu["Labels"].get("accelerator_type") == "A100"
    assert gpu["Resources"] == {"CPU": 2.0, "GPU": 2.0}
    assert runtime.cluster_resources() == {"CPU": 4.0, "GPU": 2.0}
    free = runtime.available_resources()
    assert free["CPU"] <= 4.0 and free.get("GPU", 0.0) <= 2.0


def test_gpu_and_accelerator_tasks_land_on_the_gpu_node(cluster):
    """num_gpus and accelerator_type requests run on the node that has them."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        refs = [hold.options(num_gpus=1).remote(0.01),
                hold.options(num_gpus=0.5, accelerator_type="A100").remote(0.01)]
        assert runtime.get(refs, timeout=60) == ["ok", "ok"]
    finally:
        unsub()
    gpu = cluster.node_with("GPU")["NodeID"]
    assert set(_started_nodes(events, refs).values()) == {gpu}


def test_tasks_start_only_when_resources_fit(cluster):
    """GPU tasks never run more than the GPUs allow at once (judged from event order)."""
    events = []
    unsub = runtime.subscribe(events.append)
    try:
        refs = [hold.options(num_gpus=1, num_cpus=0).remote(0.05) for _ in range(5)]
        halves = [hold.options(num_gpus=0.5, num_cpus=0).remote(0.05) for _ in range(5)]
        assert runtime.get(refs + halves, timeout=120) == ["ok"] * 10
    finally:
        unsub()
    need = {r.id: 1.0 for r in refs} | {r.id: 0.5 for r in halves}
    used = peak = 0.0
    for e in events:
        if e.task in need and e.kind == "task_started":
            used += need[e.task]
            peak = max(peak, used)
        elif e.task in need and e.kind in ("task_finished", "task_failed"):
            used -= need[e.task]
    assert 0 < peak <= 2.0 + 1e-9


def test_fractional_gpus_share_a_device(cluster):
    """Four 0.5-GPU tasks fit on two GPUs at once: all run while holding their share."""
    refs = [hold.options(num_gpus=0.5, num_cpus=0).remote(0.02) for _ in range(4)]
    assert runtime.get(refs, timeout=60) == ["ok"] * 4


def test_zero_cpu_tasks_get_workers(cluster):
    """Tasks asking for 0 CPUs still run (more workers start as needed)."""
    refs = [hold.options(num_cpus=0).remote(0.01) for _ in range(8)]
    assert runtime.get(refs, timeout=60) == ["ok"] * 8


@pytest.mark.parametrize(("options", "needle", "has"), [
    ({"resources": {"QPU": 1}}, "QPU", "GPU=2"),
    ({"num_gpus": 3}, "GPU", "GPU=2"),
    ({"num_cpus": 5}, "CPU", "CPU=2"),
    ({"accelerator_type": "V100"}, "V100", "A100"),
])
def test_infeasible_requests_fail_at_submit(cluster, options, needle, has):
    """RELIABILITY 8: a request no node can satisfy fails at once, naming the resource
    and what the cluster has."""
    with pytest.raises(runtime.InfeasibleRequestError) as info:
        hold.options(**options).remote()
    msg = str(info.value)
    assert needle in msg
    assert has in msg, msg
    assert isinstance(info.value, ValueError)


def test_resources_are_given_back(cluster):
    """After tasks finish, available resources return to the totals."""
    runtime.get([hold.options(num_gpus=1).remote(0.01) for _ in range(3)], timeout=60)
    deadline = time.monotonic() + 10
    while runtime.available_resources() != runtime.cluster_resources():
        assert time.monotonic() < deadline, runtime.available_resources()
        time.sleep(0.01)
