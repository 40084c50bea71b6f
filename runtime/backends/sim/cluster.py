"""Nodes and scheduling on the sim backend: the policy places, the autoscaler adds nodes.

Mixed into :class:`~runtime.backends.sim.backend.SimBackend`. One scheduling
pass runs per virtual instant in which something changed (a submit, a release):
blocked tasks take their CPU back first, then the policy sees, per demand shape,
as many pending tasks as could start now (at least the head of each shape),
so a long queue costs O(shapes) per pass, not O(tasks).
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime.autoscaling.base import NodeType
from runtime.backends.sim.core import Task
from runtime.errors import PolicyError, WorkerCrashedError
from runtime.events import EventKind as E
from runtime.policies import Place, Preempt, check_placement
from runtime.policies.base import TaskInfo
from runtime.resources import EPSILON, Resources

if TYPE_CHECKING:  # pragma: no cover
    from runtime.backends.sim.backend import SimBackend as _Base
else:
    _Base = object

__all__ = ["ClusterMixin"]

_INF = float("inf")
_RUNNING = ("running", "blocked", "unblocking")


class ClusterMixin(_Base):
    """Node management and the scheduling pass (mixed into :class:`SimBackend`)."""

    # ------------------------------------------------------------------ nodes
    def _add_node(self, nt: NodeType, state: str) -> str:
        seq = self._node_seq.setdefault(nt.name, itertools.count())
        node_id = f"{nt.name}-{next(seq)}"
        self.index.add_node(node_id, nt.name, nt.resources, nt.labels, state,  # type: ignore[arg-type]
                            nt.cost_per_hour)
        self._nodes_version += 1
        self._emit(E.NODE_ADDED, node=node_id, node_type=nt.name, total=nt.resources.to_dict(),
                   labels=dict(nt.labels), state=state)
        return node_id

    def _node_up(self, node_id: str, _ev: Any = None) -> None:
        if node_id in self.index and not self._closed:
            self._booting -= 1
            self.index.set_state(node_id, "up")
            self._emit(E.NODE_STATE, node=node_id, state="up")
            self._kick()

    def fail_node(self, node_id: str, reason: str = "node failed") -> None:
        """Simulate the loss of a node: its tasks are retried (``max_retries``) or fail
        with ``WorkerCrashedError``; its actors die (or restart elsewhere)."""
        self._require_driver_or_task("fail_node")
        if node_id not in self.index:
            raise ValueError(f"node_id={node_id!r}: no such node; nodes: "
                             f"{', '.join(n.id for n in self.index.nodes())}")
        for t in sorted((t for t in self._tasks.values()
                         if t.node == node_id and t.state in ("running", "blocked", "unblocking")
                         and t.actor is None and t.init_of is None), key=lambda t: t.id):
            self._abort(t)
            if t.max_retries == -1 or t.attempt <= t.max_retries:
                self._emit(E.TASK_RETRIED, t.id, node_id, attempt=t.attempt, reason=reason)
                self._enqueue(t)
            else:
                self._fail(t, WorkerCrashedError(t.name, t.id, t.attempt, node_id, reason), reason)
        self._actors_on_failed_node(node_id, reason)
        self.index.remove_node(node_id)
        self._nodes_version += 1
        self._emit(E.NODE_REMOVED, node=node_id, reason=reason)
        self._kick()

    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Add nodes of ``node_type`` (booting for its ``boot_latency``) or remove idle ones
        until there are ``count`` of them."""
        self._require_driver_or_task("scale")
        if node_type not in self.node_types:
            raise ValueError(f"node_type={node_type!r}: expected one of "
                             f"{', '.join(map(repr, self.node_types))}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r}: expected an int >= 0")
        nt = self.node_types[node_type]
        have = [n for n in self.index.nodes() if n.node_type == node_type]
        for _ in range(count - len(have)):
            self._launch(nt)
        extra = len(have) - count
        for n in reversed(have):
            if extra <= 0:
                break
            if self._node_busy(n.id):
                continue
            self._remove_node(n.id, "scaled down")
            extra -= 1

    def _node_busy(self, node_id: str) -> bool:
        return any(self.index.placement_of(t.id) == node_id for t in self.index.running())

    def _launch(self, nt: NodeType) -> str:
        if nt.boot_latency > 0:
            node_id = self._add_node(nt, "booting")
            self._booting += 1
            ev = self.env.timeout(nt.boot_latency)
            ev.callbacks.append(lambda e, n=node_id: self._node_up(n))
        else:
            node_id = self._add_node(nt, "up")
            self._kick()
        return node_id

    def _remove_node(self, node_id: str, reason: str) -> None:
        self.index.remove_node(node_id)
        self._nodes_version += 1
        self._emit(E.NODE_REMOVED, node=node_id, reason=reason)

    # ------------------------------------------------------------------ scheduling
    def _kick(self) -> None:
        if not self._pass_scheduled and not self._closed:
            self._pass_scheduled = True
            self.env.timeout(0).callbacks.append(self._pass)

    def _fit_count(self, info: TaskInfo, cap: int) -> int:
        req = info.request
        if not req:
            return cap
        n = 0
        for node in self.index.fitting(info):
            free = node.free
            n += int(min((free.get(k, 0.0) + EPSILON) / v for k, v in req.items()))
            if n >= cap:
                return cap
        return n

    def _pass(self, _ev: Any = None) -> None:
        """One scheduling round: blocked tasks take their CPU back first, then the policy
        places what fits (it sees, per demand shape, as many tasks as could start now)."""
        self._pass_scheduled = False
        if self._closed:
            return
        resume: list[Task] = []
        if self._reacq:
            keep: deque[Task] = deque()
            for t in self._reacq:
                node = self.index.node(t.node) if t.node in self.index else None
                if node is not None and Resources._trusted(t.lent or {}).fits(node.free):
                    self.index.reacquire(t.id, t.lent or {})
                    t.lent = None
                    resume.append(t)
                else:
                    keep.append(t)
            self._reacq = keep
        started: list[Task] = []
        unmet: list[TaskInfo] = []
        if self._groups:
            window: dict[int, Task] = {}
            for dq in self._groups.values():
                k = self._fit_count(dq[0].info, len(dq))
                for t in itertools.islice(dq, max(k, 1)):
                    window[t.id] = t
            infos = [t.info for t in window.values()]
            if len(self._groups) > 1:
                infos.sort(key=lambda i: i.id)
            decisions = list(self.policy.schedule(infos, self.index))  # holds end here
            # preemptions first: a placement in the same round may count on their room
            decisions.sort(key=lambda d: not isinstance(d, Preempt))
            for d in decisions:
                if isinstance(d, Place):
                    t = window.pop(d.task, None)
                    if t is None:
                        raise PolicyError(
                            f"policy {getattr(self.policy, 'name', self.policy)!r} placed task "
                            f"id {d.task!r}, which is not among the pending tasks it was given")
                    check_placement(self.policy, t.info, d.node, self.index)
                    self.index.allocate(t.info, d.node)
                    t.node = d.node
                    self._dequeue(t)
                    started.append(t)
                elif isinstance(d, Preempt):
                    self._preempt(d)
                else:
                    raise PolicyError(f"policy {getattr(self.policy, 'name', self.policy)!r} "
                                      f"returned {d!r}: expected Place or Preempt decisions")
            unmet = [t.info for t in window.values()]
        if self.autoscaler is not None:
            if unmet or self._booting:
                self._autoscale(unmet)
            if not self._scale_tick and self._busy():
                self._arm_scale_tick()
        for t in resume:
            self._resume(t, t.token, t.wake)
        for t in started:
            if t.state == "running":
                self._start(t)

    def _dequeue(self, t: Task) -> None:
        i = t.info
        key = (i.request, i.accelerator_type, i.tenant, i.priority, i.task_kind)
        dq = self._groups[key]
        if dq[0] is t:
            dq.popleft()
        else:
            dq.remove(t)
        if not dq:
            del self._groups[key]
        t.state = "running"

    def _preempt(self, d: Preempt) -> None:
        t = self._tasks.get(d.task)
        if any(a.alloc_id == d.task for a in self._actors.values()) or (
                t is not None and t.init_of is not None):
            return  # an actor's resources: actors are not preempted (as in Ray)
        if t is None or t.state not in ("running", "blocked", "unblocking") or t.actor is not None \
                or t.init_of is not None:
            raise PolicyError(f"policy {getattr(self.policy, 'name', self.policy)!r} preempted "
                              f"task id {d.task!r}, which is not a running task")
        node = t.node
        self._abort(t)
        self._emit(E.TASK_PREEMPTED, t.id, node, reason=d.reason)
        self._enqueue(t)

    def _autoscale(self, unmet: list[TaskInfo]) -> None:
        assert self.autoscaler is not None
        decision = self.autoscaler.decide(unmet, self.index, self.node_types)
        if decision.empty and not decision.infeasible:
            return
        self._emit(E.SCALE_DECISION, add=dict(decision.add), remove=list(decision.remove),
                   infeasible=list(decision.infeasible), reason=decision.reason)
        for name, count in sorted(decision.add.items()):
            nt = self.node_types.get(name)
            if nt is None:
                raise PolicyError(f"autoscaler {getattr(self.autoscaler, 'name', '?')!r} added "
                                  f"unknown node type {name!r}")
            live = sum(1 for n in self.index.nodes() if n.node_type == name)
            for _ in range(max(0, min(count, nt.max_count - live))):
                self._launch(nt)
        for node_id in decision.remove:
            if node_id in self.index and not self._node_busy(node_id):
                self._remove_node(node_id, "autoscaler")

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
        if self._groups:
            self._kick()  # the pass asks the autoscaler, with the unmet demand
        else:
            self._autoscale([])  # nothing waits: only idle nodes may go
        if active:
            self._arm_scale_tick()
