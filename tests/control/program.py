"""A small real program for the decision-equivalence tests, the same on every backend.

Tasks of several shapes, tenants, priorities and expected durations, GPU tasks with an
accelerator type, a parent that blocks on its children (so its CPU is lent and taken
back), an actor, and tasks that depend on others. ``saturate_then_urgent`` fills the
cluster with long low-priority tasks and then submits urgent ones, so a preemptive
policy preempts.
"""

from __future__ import annotations

import time

import runtime

#: The cluster every replay test runs on (two CPU nodes, one A100 node).
NODES = [
    {"name": "cpu", "num_cpus": 2, "count": 2, "cost_per_hour": 1.0},
    {"name": "gpu", "num_cpus": 2, "num_gpus": 1, "accelerator_type": "A100",
     "cost_per_hour": 3.0},
]


@runtime.remote
def work(seconds: float, tag: object = None) -> object:
    """Sleep (for real, or in virtual time on sim) and return the tag."""
    time.sleep(seconds)
    return tag


@runtime.remote
def fan_out(n: int, seconds: float) -> int:
    """Block on ``n`` children (the parent's CPU is lent meanwhile)."""
    return len(runtime.get([work.remote(seconds, i) for i in range(n)]))


@runtime.remote
class Counter:
    """An actor holding one CPU for its life."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def mixed(seconds: float = 0.05) -> None:
    """Run a mix that exercises every input of the control plane."""
    refs = []
    counter = Counter.options(num_cpus=1).remote()
    for i in range(18):
        opts: dict = {"num_cpus": 1 + i % 2, "tenant": f"t{i % 3}", "priority": i % 3,
                      "sim_duration": seconds * (1 + i % 4),
                      "kind": "train" if i % 3 == 0 else "prep"}
        refs.append(work.options(**opts).remote(seconds * (1 + i % 4), i))
    for i in range(3):
        refs.append(work.options(num_gpus=1, accelerator_type="A100", tenant="t1",
                                 sim_duration=seconds).remote(seconds, f"g{i}"))
    refs.append(fan_out.remote(3, seconds))
    first = work.remote(seconds, "first")
    refs.append(work.remote(seconds, first))
    refs.extend(counter.add.remote(1) for _ in range(3))
    runtime.get(refs, timeout=120)
    runtime.kill(counter)


def saturate_then_urgent(seconds: float = 0.6) -> None:
    """Long low-priority tasks on every CPU, then urgent ones: a preemptive policy preempts."""
    low = [work.options(priority=0, sim_duration=seconds).remote(seconds, f"low{i}")
           for i in range(6)]
    time.sleep(seconds / 3)
    high = [work.options(priority=5, sim_duration=seconds / 4).remote(seconds / 4, f"hi{i}")
            for i in range(2)]
    runtime.get(high + low, timeout=120)
