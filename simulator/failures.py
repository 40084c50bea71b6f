"""Fault plug-ins: node failures from an MTBF, spot preemption with notice, availability windows.

Each plug-in has ``attach(sim)`` and an optional ``node_added(node)`` hook; all
randomness comes from the simulation's seed (one stream per plug-in). Tasks on a
failed node are retried up to their ``max_retries`` and then fail with the
runtime's :class:`~runtime.errors.WorkerCrashedError`; spot preemption requeues
tasks without using up retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simulator.workloads.base import rng_for

if TYPE_CHECKING:
    from runtime.control import IndexNode as SimNode
    from simulator.engine import Simulation

__all__ = ["NodeFailures", "SpotPreemption", "AvailabilityWindows", "default_plugins"]


class NodeFailures:
    """Each node with an MTBF fails after an exponential time, is down ``repair_time``, then up."""

    def __init__(self) -> None:
        self.sim: Simulation | None = None
        self.failures = 0

    def attach(self, sim: Simulation) -> None:
        """Start failure clocks for the existing nodes."""
        self.sim = sim
        self.rng = rng_for(sim.seed, "node-failures")
        for n in list(sim.state.records().values()):
            self.node_added(n)

    def node_added(self, n: SimNode) -> None:
        """Start the node's failure clock."""
        mtbf = n.spec.failure_mtbf
        if mtbf is not None and self.sim is not None:
            self.sim.env.call_in(self.rng.expovariate(1.0 / mtbf), self._fail, n, background=True)

    def _fail(self, ev: Any) -> None:
        sim, n = self.sim, ev.args[0]
        assert sim is not None
        if sim.done or n.id not in sim.state.records():
            return
        if n.state in ("up", "draining"):
            self.failures += 1
            sim.stop_node_tasks(n, "node failure")
            if n.removing:  # the autoscaler was removing it anyway
                sim.remove_node(n, "failed while draining")
                return
            sim.set_node_state(n, "down", "failure")
            sim.env.call_in(n.spec.repair_time, self._repair, n, background=True)
        else:
            self.node_added(n)  # not running now; try again later

    def _repair(self, ev: Any) -> None:
        sim, n = self.sim, ev.args[0]
        assert sim is not None
        if n.id in sim.state.records() and n.state == "down":
            sim.set_node_state(n, "up", "repaired")
            self.node_added(n)


class SpotPreemption:
    """Spot nodes get a notice (draining) after Exp(spot_mtbp), and vanish ``spot_notice`` later."""

    def __init__(self) -> None:
        self.sim: Simulation | None = None
        self.preempted = 0

    def attach(self, sim: Simulation) -> None:
        """Start preemption clocks for the existing spot nodes."""
        self.sim = sim
        self.rng = rng_for(sim.seed, "spot")
        for n in list(sim.state.records().values()):
            self.node_added(n)

    def node_added(self, n: SimNode) -> None:
        """Start the clock of a spot node."""
        if n.spec.spot and self.sim is not None:
            self.sim.env.call_in(self.rng.expovariate(1.0 / n.spec.spot_mtbp), self._notice, n,
                                  background=True)

    def _notice(self, ev: Any) -> None:
        sim, n = self.sim, ev.args[0]
        assert sim is not None
        if sim.done or n.id not in sim.state.records():
            return
        sim.set_node_state(n, "draining", "spot notice")
        sim.env.call_in(n.spec.spot_notice, self._reclaim, n, background=True)

    def _reclaim(self, ev: Any) -> None:
        sim, n = self.sim, ev.args[0]
        assert sim is not None
        if n.id not in sim.state.records():
            return
        self.preempted += 1
        sim.stop_node_tasks(n, "spot preemption", count_attempt=False)
        sim.remove_node(n, "spot preempted", scale=False)


class AvailabilityWindows:
    """Devices' ``unavailable`` windows (QPU calibration...): the node drains, then comes back up."""

    def __init__(self) -> None:
        self.sim: Simulation | None = None

    def attach(self, sim: Simulation) -> None:
        """Schedule the first window of every node that has one."""
        self.sim = sim
        for n in list(sim.state.records().values()):
            self.node_added(n)

    def node_added(self, n: SimNode) -> None:
        """Schedule the node's windows (relative to now)."""
        acc = n.spec.accelerator
        if acc is None or self.sim is None:
            return
        now = self.sim.now
        for w in acc.unavailable:
            start = w.start
            while start + w.duration <= now and w.period:
                start += w.period
            if start + w.duration > now:
                self.sim.env.call_in(max(start - now, 0.0), self._begin, n, w, background=True)

    def _begin(self, ev: Any) -> None:
        sim, (n, w) = self.sim, ev.args
        assert sim is not None
        if sim.done or n.id not in sim.state.records():
            return
        if n.state == "up":
            n.in_window = True
            sim.set_node_state(n, "draining", w.reason)
        sim.env.call_in(w.duration, self._end, n, w, background=True)

    def _end(self, ev: Any) -> None:
        sim, (n, w) = self.sim, ev.args
        assert sim is not None
        if n.id not in sim.state.records():
            return
        if n.in_window and n.state == "draining":
            n.in_window = False
            sim.set_node_state(n, "up", f"{w.reason} over")
        if w.period and not sim.done:
            sim.env.call_in(w.period - w.duration, self._begin, n, w, background=True)


def default_plugins(sim: Simulation) -> list[Any]:
    """The fault plug-ins the cluster's specs call for."""
    specs = sim.cluster.node_specs
    out: list[Any] = []
    if any(s.failure_mtbf is not None for s in specs):
        out.append(NodeFailures())
    if any(s.spot for s in specs):
        out.append(SpotPreemption())
    if any(s.accelerator is not None and s.accelerator.unavailable for s in specs):
        out.append(AvailabilityWindows())
    return out
