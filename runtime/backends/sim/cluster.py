"""Nodes and scheduling on the sim backend: the control plane decides, this module acts.

Mixed into :class:`~runtime.backends.sim.backend.SimBackend`. The backend is the
:class:`~runtime.control.Actuator` of its :class:`~runtime.control.ControlPlane`:
one decision round runs at the end of every virtual instant in which something
changed (after every other event of that instant, as in the simulator's engine),
blocked tasks take their CPU back first, and the plane's decisions come back here
as :meth:`start`, :meth:`preempt`, :meth:`launch`, :meth:`retire`...
"""

from __future__ import annotations

import itertools
from heapq import heappush
from typing import TYPE_CHECKING, Any

from runtime.cluster import NodeType
from runtime.errors import WorkerCrashedError
from runtime.events import EventKind as E

if TYPE_CHECKING:  # pragma: no cover
    from runtime.backends.sim.core import Task
    from runtime.control import ControlPlane

__all__ = ["ClusterMixin"]

_INF = float("inf")
_RUNNING = ("running", "blocked")


class ClusterMixin:
    """Node management and the actuator (mixed into :class:`SimBackend`)."""

    plane: ControlPlane

    # ------------------------------------------------------------------ nodes
    def _add_node(self, nt: NodeType, state: str) -> str:
        seq = self._node_seq.setdefault(nt.name, itertools.count())
        node_id = f"{nt.name}-{next(seq)}"
        self.plane.add_node(node_id, nt, state)  # type: ignore[arg-type]
        return node_id

    def _node_up(self, node_id: str, _ev: Any = None) -> None:
        if node_id in self.index and not self._closed:
            self._booting -= 1
            self.plane.set_node_state(node_id, "up", "booted")

    def fail_node(self, node_id: str, reason: str = "node failed") -> None:
        """Simulate the loss of a node: its tasks are retried (``max_retries``) or fail
        with ``WorkerCrashedError``; its actors die (or restart elsewhere)."""
        self._require_driver_or_task("fail_node")
        if node_id not in self.index:
            raise ValueError(f"node_id={node_id!r}: no such node; nodes: "
                             f"{', '.join(n.id for n in self.index.nodes())}")
        for t in sorted((t for t in self._tasks.values()
                         if t.node == node_id and t.state in _RUNNING
                         and t.actor is None and t.init_of is None), key=lambda t: t.id):
            self._abort(t)
            if t.max_retries == -1 or t.attempt <= t.max_retries:
                self._requeue(t, E.TASK_RETRIED, attempt=t.attempt, reason=reason)
            else:
                self._fail(t, WorkerCrashedError(t.name, t.id, t.attempt, node_id, reason), reason)
        self._actors_on_failed_node(node_id, reason)
        self.plane.remove_node(node_id, reason)

    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Set the number of nodes of ``node_type`` to ``count``: new ones boot for the
        type's ``boot_latency``; idle ones go at once, busy ones drain first."""
        self._require_driver_or_task("scale")
        self.plane.scale(node_type, count)

    # ------------------------------------------------------------------ the actuator
    def start(self, task_id: int, node_id: str) -> None:
        """Start a placed task's body on ``node_id`` (its resources are held there)."""
        t = self._tasks.get(task_id)
        if t is None:
            return
        t.node = node_id
        self._start(t)

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """Not used: virtual time has no round trip to hide."""

    def preempt(self, task_id: int, reason: str) -> None:
        """Stop a running task at once (its body unwinds); it queues again."""
        t = self._tasks.get(task_id)
        if t is None or t.state not in _RUNNING:
            return
        self._abort(t)
        self._requeue(t, E.TASK_READY)

    def resume(self, task_id: int) -> None:
        """A blocked task has its CPU back: it goes on (in this instant)."""
        t = self._tasks.get(task_id)
        if t is not None and t.stage == "resuming":
            token = t.token
            self.env.timeout(0).callbacks.append(lambda e: self._resume(t, token, t.wake))

    def fail(self, task_id: int, error: BaseException) -> None:
        """Fail a task the plane gave up on (it already published ``task_failed``)."""
        t = self._tasks.get(task_id)
        if t is not None:
            self._fail(t, error, str(error).split("\n", 1)[0], publish=False)

    def launch(self, node_type: NodeType, count: int) -> None:
        """Add ``count`` nodes (booting for the type's ``boot_latency``)."""
        for _ in range(count):
            if node_type.boot_latency > 0:
                node_id = self._add_node(node_type, "booting")
                self._booting += 1
                ev = self.env.timeout(node_type.boot_latency)
                ev.callbacks.append(lambda e, n=node_id: self._node_up(n))
            else:
                self._add_node(node_type, "up")

    def retire(self, node_id: str) -> None:
        """Remove an idle node."""
        if node_id in self.index:
            if self.index.record(node_id).state == "booting":
                self._booting -= 1
            self.plane.remove_node(node_id, "scaled down")

    # ------------------------------------------------------------------ rounds
    def _kick(self) -> None:
        """A round is due: at the end of this instant, after every other event of it."""
        if not self._pass_scheduled and not self._closed:
            self._pass_scheduled = True
            env = self.env
            heappush(env._queue, (env._now, 2, next(env._eid), self._pass, ()))

    def _pass(self) -> None:
        """One decision round (the plane's), then the autoscaler while work waits."""
        self._pass_scheduled = False
        if self._closed:
            return
        plane = self.plane
        plane.schedule()
        if plane.autoscaler is not None:
            if plane.queue.count or self._booting:
                plane.autoscale()
            if not self._scale_tick and self._busy():
                self._arm_scale_tick()

    def _requeue(self, t: Task, kind: str | None, **data: Any) -> None:
        """``t`` queues again (a retry, a preemption): the plane publishes ``kind``."""
        t.state, t.stage = "pending", "queued"
        t.node = None
        self.plane.requeue(t.id, kind, **data)

    def _busy(self) -> bool:
        """Whether something runs, boots, or the driver sleeps: the autoscaler keeps ticking
        only then (never on stale timers), so an idle sim still ends in SimDeadlock."""
        horizon = self._horizon
        if self._booting or (horizon is not None and horizon > self.env.now):
            return True
        return any(t.state in _RUNNING for t in self._tasks.values())

    def _arm_scale_tick(self) -> None:
        """Call the autoscaler every ``autoscale_interval`` while anything else happens
        (or the driver sleeps), so idle nodes are removed; never keeps an idle sim alive."""
        if not self._scale_tick and not self._closed:
            self._scale_tick = True
            self.env.timeout(self.autoscale_interval).callbacks.append(self._scale_tick_cb)

    def _scale_tick_cb(self, _ev: Any) -> None:
        self._scale_tick = False
        if self._closed or self.autoscaler is None:
            return
        active = self._busy()
        if self.plane.queue.count:
            self._kick()  # the pass asks the autoscaler, with the unmet demand
        else:
            self.plane.autoscale([])  # nothing waits: only idle nodes may go
        if active:
            self._arm_scale_tick()
