"""The one control plane: the books, the decision round, and the only call of ``schedule()``.

Backends and the simulator's engine report what happens through the *input*
methods (:meth:`~ControlPlane.submit`, :meth:`~ControlPlane.ready`,
:meth:`~ControlPlane.end`, :meth:`~ControlPlane.add_node`...); the plane keeps the
one index and the one pending queue, runs decision rounds, validates every decision
and hands it to the backend's :class:`~runtime.control.actuator.Actuator`. Every
input and every decision is published as an event (decisions carry
``decided=True``), so a recorded event stream fed into a fresh plane with the same
policy reproduces every decision (:mod:`runtime.control.replay`).

The same outcome everywhere when a policy misbehaves: if ``schedule`` raises, the
tasks it was shown fail with a :class:`PolicyError` naming the policy and the task;
a decision that names a task it was not shown, a node that cannot take the task, or
a task that is not running (for ``Preempt``) is rejected with a PolicyError (the
task it places, if any, fails; otherwise the error is published as
``policy_error``); the plane stays usable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from runtime.cluster.checks import check_placement, infeasible_message, policy_name
from runtime.cluster.nodetypes import NodeType
from runtime.cluster.types import NodeState, Place, Preempt, TaskInfo
from runtime.control.actuator import Actuator, NullActuator
from runtime.control.ahead import SendAhead
from runtime.control.index import ClusterIndex, IndexNode, SpeedTable, _fits
from runtime.control.queue import PendingQueue
from runtime.control.scale import ScalePlanner
from runtime.errors import PolicyError
from runtime.events import EventKind as K

__all__ = ["ControlPlane", "Emit", "greedy_by_shape", "preemptive"]

Emit = Callable[..., None]
"""``emit(kind, task, node, **data)``: publish one event (the backend's bus)."""


def greedy_by_shape(policy: Any) -> bool:
    """Whether ``policy`` declares ``greedy_by_shape = True``: it places the tasks it is
    given greedily in ``(submitted_at, id)`` order and where a task goes depends only on
    its shape and the placements before it, so tasks may queue by shape across tenants,
    a round may show only what could fit, and a task may be sent ahead to a busy node."""
    return getattr(policy, "greedy_by_shape", False) is True


def preemptive(policy: Any) -> bool:
    """Whether ``policy`` declares ``preemptive = True`` (it may return ``Preempt``: it is
    then shown every pending task, up to the window, every round)."""
    return getattr(policy, "preemptive", False) is True


def _usable(nt: NodeType, info: TaskInfo) -> bool:
    """Whether a node of type ``nt`` could ever run ``info`` (room, accelerator, speed)."""
    if info.accelerator_type is not None and nt.accelerator_type != info.accelerator_type:
        return False
    if not info.request.fits(nt.resources):
        return False
    sp = nt.speed_for(info.task_kind, info.request)
    return sp is None or sp > 0


_NO_NODES: set[str] = set()


class ControlPlane:
    """The books (index, queue, tasks), the decision round and the scale planner.

    ``window``: most tasks of one pending group a round shows the policy (None: all).
    ``send_ahead``: a function ``shape -> depth`` (tasks queued behind each running task
    of that shape; 0 turns it off), used for ``greedy_by_shape`` policies, and with
    ``lookahead`` for ``lookahead_safe`` ones (see :mod:`runtime.control.ahead`).
    ``emit`` publishes events (None: nothing is published, as in the simulator's engine,
    which keeps its own trace). ``clock`` gives ``now`` for every input and round.
    """

    def __init__(self, policy: Any = None, autoscaler: Any = None, *,
                 actuator: Actuator | None = None, node_types: Iterable[NodeType] = (),
                 speeds: SpeedTable | None = None, emit: Emit | None = None,
                 clock: Callable[[], float] | None = None, window: int | None = 256,
                 send_ahead: Callable[[Any], int] | None = None, lookahead: bool = False,
                 grace: float = 0.0,
                 max_unmet: int = 10_000, wake: Callable[[], None] | None = None) -> None:
        from runtime.autoscaling import get_autoscaler
        from runtime.policies import get_policy

        self.policy = get_policy(policy) if policy is not None else None
        self.autoscaler = None if autoscaler is None else get_autoscaler(autoscaler)
        if type(self.autoscaler).__name__ == "NoAutoscaling":
            self.autoscaler = None
        self.policy_name = policy_name(self.policy) if self.policy is not None else "none"
        self.actuator: Actuator = actuator or NullActuator()
        self.index = ClusterIndex(speeds)
        self.node_types: dict[str, NodeType] = {}
        for nt in node_types:
            self.node_types[nt.name] = nt
            self.index.register_type(nt)
        if window is None or preemptive(self.policy):
            self.mode = "all"
        elif greedy_by_shape(self.policy):
            self.mode = "room"
        else:
            self.mode = "head"
        self.window = window
        self.queue = PendingQueue(self.index, by_shape=self.mode == "room")
        self._emit = emit
        self._emits: frozenset[str] | None = None
        self._ev_placed = self._ev_round = self._ev_submitted = emit is not None
        self._clock = clock
        self._wake = wake
        self.grace = grace
        self.max_unmet = max_unmet
        #: tasks the plane knows (submitted, not ended): their info
        self.tasks: dict[int, TaskInfo] = {}
        self._ready_at: dict[int, float] = {}
        self._fixed: set[int] = set()  # not preemptible (actors' resources)
        self._preempting: set[int] = set()
        self._lent: dict[int, dict[str, float]] = {}
        self._reacq: deque[int] = deque()
        self._feasible: dict[tuple[Any, ...], tuple[int, str | None]] = {}
        self._nodes_version = 0
        if send_ahead is not None and self.mode == "room":
            self.ahead: SendAhead | None = SendAhead(self, send_ahead)
        elif send_ahead is not None and lookahead and self.mode != "all":
            self.ahead = SendAhead(self, send_ahead, lookahead=True)
        else:
            self.ahead = None
        self.planner = ScalePlanner(self)
        #: PolicyErrors of this run (policy or autoscaler), oldest first
        self.errors: list[PolicyError] = []
        self.rounds = 0
        #: tasks sent ahead to the node the last :meth:`remove_node` removed (requeued)
        self.recalled: list[int] = []

    # ------------------------------------------------------------------ plumbing
    def now(self) -> float:
        """The time of the current input or round (the clock's, read once per call)."""
        return self.index.now

    def _tick(self) -> float:
        if self._clock is not None:
            self.index.now = self._clock()
        return self.index.now

    def emit(self, kind: str, task: int | None = None, node: str | None = None,
             **data: Any) -> None:
        """Publish one event at the plane's ``now`` (nothing when no sink was given)."""
        if self._emit is not None and (self._emits is None or kind in self._emits):
            self._emit(kind, task, node, **data)

    def _emitting(self, kind: str) -> bool:
        return self._emit is not None and (self._emits is None or kind in self._emits)

    @property
    def emits(self) -> frozenset[str] | None:
        """The event kinds published (None: all); the simulator's engine takes only a few."""
        return self._emits

    @emits.setter
    def emits(self, kinds: frozenset[str] | None) -> None:
        self._emits = kinds
        self._ev_placed = self._emitting(K.TASK_PLACED)
        self._ev_round = self._emitting(K.DECISION_ROUND)
        self._ev_submitted = self._emitting(K.TASK_SUBMITTED)

    def wake(self) -> None:
        """Ask the owner for a round soon (something changed that a round may use)."""
        if self._wake is not None:
            self._wake()

    # ------------------------------------------------------------------ nodes
    def add_node(self, node_id: str, node_type: NodeType | str, state: NodeState = "up", *,
                 total: Mapping[str, float] | None = None,
                 labels: Mapping[str, str] | None = None, cost_per_hour: float | None = None,
                 reason: str = "") -> IndexNode:
        """A node joined (or is booting); returns the index's record of it."""
        self._tick()
        idx = self.index
        if isinstance(node_type, str) and node_type in self.node_types and total is None:
            node_type = self.node_types[node_type]
        groups = len(idx._group_list)
        n = idx.add_node(node_id, node_type, total, labels, state, cost_per_hour)
        self._nodes_version += 1
        g = n.group
        data: dict[str, Any] = {"node_type": g.name, "total": g.total_res.to_dict(),
                                "labels": dict(g.labels), "state": state}
        if g.cost:
            data["cost_per_hour"] = g.cost
        if reason:
            data["reason"] = reason
        self.emit(K.NODE_ADDED, None, node_id, **data)
        if len(idx._group_list) != groups:
            self.queue.reset_eligibility()  # a new shape of node: every group may use it
            self.wake()
        elif state == "up" and (self.queue.node_up(n) or self.queue.ready):
            self.wake()
        return n

    def set_node_state(self, node_id: str, state: NodeState, reason: str = "", *,
                       decided: bool = False) -> None:
        """A node changed state (booted, draining, down for repair, back up)."""
        self._tick()
        n = self.index.record(node_id)
        if n.state == state:
            return
        self.index.set_state(node_id, state)
        data: dict[str, Any] = {"state": state}
        if reason:
            data["reason"] = reason
        if decided:
            data["decided"] = True
        self.emit(K.NODE_STATE, None, node_id, **data)
        if state == "up":
            n.removing = False
            self.planner.removing.discard(node_id)
            if self.queue.node_up(n) or self.queue.ready:
                self.wake()

    def remove_node(self, node_id: str, reason: str = "") -> list[int]:
        """A node left: returns the tasks that held resources there (now released; retry or
        fail them with :meth:`requeue` / :meth:`end`). Tasks sent ahead there go back to
        the queue; their ids are in :attr:`recalled` until the next removal."""
        self._tick()
        self.recalled = []
        if node_id not in self.index:
            return []
        lost = self.index.remove_node(node_id)
        self._nodes_version += 1
        if self.ahead is not None:
            self.recalled = self.ahead.node_gone(lost)
            for tid in self.recalled:
                self._enqueue(tid)
        self._reacq = deque(t for t in self._reacq if t not in lost)
        for tid in lost:
            self._lent.pop(tid, None)
            self._preempting.discard(tid)
        self.emit(K.NODE_REMOVED, None, node_id, **({"reason": reason} if reason else {}))
        self.planner.node_gone(node_id)
        return lost

    # ------------------------------------------------------------------ tasks in
    def infeasible(self, info: TaskInfo, *, shapes: Iterable[Any] | None = None,
                   what: str = "the cluster") -> str | None:
        """Why no node (nor a node type the autoscaler can add) could ever run ``info``, or
        None; cached per shape until the nodes change. ``shapes`` replaces the index's
        ``(id, total, labels)`` list (the simulator passes its node types)."""
        key = (info.request, info.accelerator_type, info.task_kind, what)
        got = self._feasible.get(key)
        if got is not None and got[0] == self._nodes_version:
            return got[1]
        have = list(self.index.shapes() if shapes is None else shapes)
        msg = infeasible_message(info.request, info.accelerator_type, have, what=what,
                                 task_name=info.name)
        types = [nt.shape() for nt in self.node_types.values() if nt.max_count > 0] \
            if self.autoscaler is not None else []
        if msg is not None and types:
            if infeasible_message(info.request, info.accelerator_type, types) is None:
                msg = None
            else:
                msg += ", and no node type the autoscaler can add fits it either"
        if msg is None and not self.index.eligible(info) and not any(
                _usable(nt, info) for nt in self.node_types.values()
                if nt.max_count > 0 and (self.autoscaler is not None or nt.count > 0)):
            msg = (f"task {info.name!r} of kind {info.task_kind!r} runs at speed 0 on every "
                   f"device model of {what} that fits its request")
        self._feasible[key] = (self._nodes_version, msg)
        return msg

    def submit(self, info: TaskInfo, *, ready: bool = True, preemptible: bool = True,
               **data: Any) -> None:
        """A task was submitted (``ready``: its inputs are ready, so it queues at once). A
        task the plane knows already (submitted again: its result was lost) starts over."""
        if self._clock is not None:
            self.index.now = self._clock()
        tasks = self.tasks
        if info.id in tasks:
            self.end(info.id, None)
        tasks[info.id] = info
        if not preemptible:
            self._fixed.add(info.id)
        if self._ev_submitted:
            ev: dict[str, Any] = {"name": info.name, "resources": info.request.to_dict()}
            if info.kind and info.kind != info.name:
                ev["task_kind"] = info.kind
            if info.accelerator_type is not None:
                ev["accelerator_type"] = info.accelerator_type
            if info.tenant != "default":
                ev["tenant"] = info.tenant
            if info.priority:
                ev["priority"] = info.priority
            if info.duration_hint is not None:
                ev["duration_hint"] = info.duration_hint
            if ready:
                ev["ready"] = True
            if not preemptible:
                ev["preemptible"] = False
            ev.update(data)
            self._emit(K.TASK_SUBMITTED, info.id, None, **ev)  # type: ignore[misc]
        if ready and self.policy is not None:
            if self.grace:
                self._ready_at[info.id] = self.index.now
            if self.queue.add(info) and self._wake is not None:
                self._wake()

    def ready(self, task_id: int) -> None:
        """A submitted task's inputs are ready: it joins the pending queue."""
        self._tick()
        self.emit(K.TASK_READY, task_id)
        self._enqueue(task_id)

    def _enqueue(self, task_id: int) -> None:
        info = self.tasks.get(task_id)
        if info is None or self.policy is None or task_id in self.queue.group_of:
            return
        if self.grace:  # only the autoscaler's grace period needs when it became ready
            self._ready_at[task_id] = self.index.now
        if self.queue.add(info):
            self.wake()

    def recall(self, task_id: int) -> None:
        """A task sent ahead that did not start goes back to the queue (its worker blocked
        or died)."""
        self._tick()
        if self.ahead is not None and self.ahead.forget(task_id):
            self.emit(K.TASK_READY, task_id, recall=True)
            self._enqueue(task_id)

    def requeue(self, task_id: int, kind: str | None = K.TASK_RETRIED, node: str | None = None,
                **data: Any) -> int | None:
        """A task stopped (its worker died, it raised and is retried, it was preempted): it
        gives back what it held and queues again. Publishes ``kind`` (``task_retried``; a
        preempted task: ``task_ready``). Returns a task sent ahead that took its slot."""
        self._tick()
        promoted = self._let_go(task_id)
        if kind is not None:
            self.emit(kind, task_id, node, **data)
        self._enqueue(task_id)
        return promoted

    def end(self, task_id: int, kind: str | None, node: str | None = None, *,
            keep: bool = False, **data: Any) -> int | None:
        """A task is over (``task_finished`` / ``task_failed`` / ``task_cancelled``; None
        publishes nothing): it leaves the queue and gives back what it holds (unless
        ``keep``: an actor keeps its resources until :meth:`release`). Returns a task sent
        ahead that took its slot."""
        if self._clock is not None:
            self.index.now = self._clock()
        if kind is not None and self._emit is not None and (self._emits is None
                                                            or kind in self._emits):
            self._emit(kind, task_id, node, **({"keep": True, **data} if keep else data))
        if task_id in self.queue.group_of:
            self.queue.remove(task_id)
            self._ready_at.pop(task_id, None)
        promoted = None if keep else self._let_go(task_id)
        if self.ahead is not None:
            self.ahead.forget(task_id)
        known = self.tasks.pop(task_id, None)
        if not keep and known is not None and self._fixed:
            self._fixed.discard(task_id)
        return promoted

    def stop(self, task_id: int) -> int | None:
        """A running task gave its resources back (its end or retry is published next, by
        :meth:`end` / :meth:`requeue` or by the backend); returns a task sent ahead that
        took its slot. Publishes nothing."""
        self._tick()
        return self._let_go(task_id)

    def release(self, task_id: int, node: str | None = None) -> None:
        """What an ended task kept (an actor's resources) is given back."""
        self._tick()
        if self.index.placement_of(task_id) is None:
            return
        self.emit(K.TASK_RELEASED, task_id, node)
        self._let_go(task_id)
        self._fixed.discard(task_id)

    def _let_go(self, task_id: int) -> int | None:
        """Release what a task holds (waking groups that now fit); promote a task sent
        ahead behind it."""
        idx = self.index
        if self._preempting:
            self._preempting.discard(task_id)
        if self._lent and self._lent.pop(task_id, None) is not None and task_id in self._reacq:
            self._reacq.remove(task_id)
        n = idx._release(task_id)
        if n is None:
            return None
        promoted = self.ahead.ended(task_id, n) if self.ahead is not None else None
        queue = self.queue
        if (queue.released(n) or queue.ready or self._reacq) and self._wake is not None:
            self._wake()
        if n.removing and not n.tasks:
            self.planner.idle(n)
        return promoted

    # ------------------------------------------------------------------ lending
    def lend(self, task_id: int, amount: Mapping[str, float]) -> None:
        """A running task blocks (in ``get``/``wait``) and lends ``amount`` meanwhile."""
        self._tick()
        nid = self.index.placement_of(task_id)
        amount = {k: v for k, v in amount.items() if v > 0}
        self.emit(K.TASK_BLOCKED, task_id, nid, lent=dict(amount))
        if nid is None or not amount:
            return
        self._lent[task_id] = amount
        self.index.release(task_id, amount, keep_running=True)
        if self.queue.released(self.index.record(nid)) or self.queue.ready:
            self.wake()

    def want_back(self, task_id: int) -> bool:
        """A blocked task's wait is over; True when it has what it lent back now, else it
        waits, ahead of new starts, and the actuator's ``resume`` says when."""
        self._tick()
        self.emit(K.TASK_READY, task_id, resume=True)
        amount = self._lent.get(task_id)
        if amount is None:
            self.emit(K.TASK_UNBLOCKED, task_id, self.index.placement_of(task_id), decided=True)
            return True
        if not self._reacq and self._fits_back(task_id, amount):
            self._take_back(task_id, amount)
            return True
        self._reacq.append(task_id)
        self.wake()
        return False

    def reacquire(self, task_id: int) -> None:
        """A blocked task took what it lent back without asking (dask's threads rejoin the
        pool): it holds again what is free of it (never more than the node has)."""
        self._tick()
        amount = self._lent.pop(task_id, None)
        if task_id in self._reacq:
            self._reacq.remove(task_id)
        nid = self.index.placement_of(task_id)
        self.emit(K.TASK_UNBLOCKED, task_id, nid)
        if amount is not None and nid is not None:
            free = self.index.node(nid).free  # what another task took meanwhile stays its
            back = {k: min(v, free.get(k, 0.0)) for k, v in amount.items()}
            if any(v > 0 for v in back.values()):
                self.index.reacquire(task_id, back)

    def _fits_back(self, task_id: int, amount: Mapping[str, float]) -> bool:
        nid = self.index.placement_of(task_id)
        if nid is None:
            return True
        n = self.index.record(nid)
        return _fits(n.free, n.group.vec_of(amount))

    def _take_back(self, task_id: int, amount: Mapping[str, float]) -> None:
        del self._lent[task_id]
        nid = self.index.placement_of(task_id)
        if nid is not None:
            self.index.reacquire(task_id, amount)
        self.emit(K.TASK_UNBLOCKED, task_id, nid, decided=True)

    def _serve_lenders(self) -> tuple[list[int], set[str]]:
        """Blocked tasks take back what they lent, in order, before new starts; when the
        first cannot, the nodes of all still waiting take no new task this round."""
        served: list[int] = []
        while self._reacq:
            tid = self._reacq[0]
            amount = self._lent.get(tid)
            if amount is not None and not self._fits_back(tid, amount):
                held = {self.index.placement_of(t) for t in self._reacq}
                return served, {n for n in held if n is not None}
            self._reacq.popleft()
            if amount is not None:
                self._take_back(tid, amount)
            served.append(tid)
        return served, set()

    # ------------------------------------------------------------------ observing (no policy)
    def observe_start(self, info: TaskInfo, node_id: str) -> None:
        """A task someone else placed (dask's scheduler, with no policy) started on a node:
        the index holds its request there until :meth:`end`."""
        self._tick()
        if node_id in self.index and self.index.placement_of(info.id) is None:
            self.tasks.setdefault(info.id, info)
            self.index.allocate(info, node_id, {k: v for k, v in info.request.items()
                                                if k in self.index.record(node_id).group.index})

    # ------------------------------------------------------------------ the round
    def schedule(self, tasks: list[TaskInfo] | None = None) -> list[tuple[int, str]]:
        """One decision round: lenders first, then the policy on the window (or on
        ``tasks``), every decision validated, then the actuator starts what was placed.
        Returns ``(task id, node id)`` of the placements."""
        policy = self.policy
        if policy is None:
            return []
        idx = self.index
        if self._clock is not None:
            idx.now = self._clock()
        blocked: set[str] = _NO_NODES
        served: list[int] = []
        if self._reacq:
            served, blocked = self._serve_lenders()
            for tid in served:
                self.actuator.resume(tid)
        queue = self.queue
        if tasks is None:
            window, groups = queue.window(self.mode, self.window) if queue.ready else ([], [])
            if not window:
                if served and self._ev_round:  # a round that only gave lenders back
                    self._emit(K.DECISION_ROUND, None, None, what="schedule", shown=0)  # type: ignore[misc]
                if self.ahead is not None and queue.count:
                    self.fill_ahead()  # nothing fits now: what can wait on a busy node?
                return []
        else:
            window, groups = tasks, []
        self.rounds += 1
        if self._ev_round:
            data: dict[str, Any] = {"what": "schedule", "shown": len(window)}
            if tasks is not None:
                data["tasks"] = [t.id for t in tasks]
            self._emit(K.DECISION_ROUND, None, None, **data)  # type: ignore[misc]
        try:
            out = policy.schedule(window, idx)
            decisions = out if type(out) is list else list(out or ())
        except Exception as exc:  # noqa: BLE001 - a broken policy fails the tasks it saw
            if idx.holding:
                idx.rollback()
            for info in window:
                self._give_up(info.id, PolicyError(
                    f"policy {self.policy_name!r} raised while placing task {info.name!r} "
                    f"(id {info.id}): {type(exc).__name__}: {exc}"), cause=exc)
            return []
        if idx._undo is not None:  # a policy that held without a Ledger: undo its holds
            idx.rollback()
        placed: list[tuple[int, str]] = []
        stops: list[tuple[int, str]] = []
        if decisions:
            ids = {t.id: t for t in window} if len(window) > 1 else {window[0].id: window[0]}
            for d in decisions:
                tp = type(d)
                if tp is Place:
                    info = ids.pop(d.task, None)
                    if info is None:
                        self._bad_task(d, placed)
                    elif self._place(info, d.node, blocked):
                        placed.append((info.id, d.node))
                elif tp is Preempt:
                    if self._preempt(d):
                        stops.append((d.task, d.reason))
                else:
                    self._reject(PolicyError(
                        f"policy {self.policy_name!r} returned {d!r} ({type(d).__name__}); "
                        f"expected Place(task_id, node_id) or Preempt(task_id)"))
        again = queue.settle(groups, self.mode) if tasks is None else False
        if self.mode == "all" and (placed or stops):
            again = True
        act = self.actuator
        for tid, reason in stops:
            act.preempt(tid, reason)
        start = act.start
        for tid, nid in placed:
            start(tid, nid)
        if self.ahead is not None and queue.count and tasks is None:
            self.ahead.fill()
        if again:
            self.wake()
        return placed

    def fill_ahead(self) -> None:
        """A send-ahead pass outside a round (announced as ``decision_round`` of
        ``what="ahead"`` when it sends anything)."""
        if self.ahead is not None:
            self._tick()
            self.ahead.fill(announce=True)

    def _place(self, info: TaskInfo, node_id: str, blocked: set[str]) -> bool:
        queue = self.queue
        g = queue.group_of.get(info.id)
        n = self.index._nodes.get(node_id)
        vec = None
        if n is not None and n.state == "up":
            elig = g.elig if g is not None else self.index.eligible(info)
            for grp, v, _ in elig:
                if grp is n.group:
                    vec = v
                    break
        if vec is None or not _fits(n.free, vec):  # type: ignore[union-attr]
            try:
                check_placement(self.policy, info, node_id, self.index)
                err = PolicyError(f"policy {self.policy_name!r} placed task {info.name!r} "
                                  f"(id {info.id}) of kind {info.task_kind!r} on node "
                                  f"{node_id!r} whose device runs it at speed 0")
            except PolicyError as exc:
                err = exc
            self._give_up(info.id, err)
            return False
        if blocked and node_id in blocked:
            return False  # a task that lent resources there takes them back first
        if g is not None:  # out of its queue (usually its head)
            del queue.group_of[info.id]
            q = g.queue
            if q[0] is info:
                q.popleft()
            else:
                q.remove(info)
            queue.count -= 1
            g.shown -= 1
        if self.grace:
            self._ready_at.pop(info.id, None)
        self.index.allocate_vec(info, n, vec)  # type: ignore[arg-type]
        if self._ev_placed:
            self._emit(K.TASK_PLACED, info.id, node_id, decided=True)  # type: ignore[misc]
        return True

    def _bad_task(self, d: Place, placed: list[tuple[int, str]]) -> None:
        if any(t == d.task for t, _ in placed):
            what = "already placed in this round"
        else:
            what = "not among the pending tasks it was given"
        self._reject(PolicyError(f"policy {self.policy_name!r} placed task id {d.task} which "
                                 f"is {what}"), task=d.task)

    def _preempt(self, d: Preempt) -> bool:
        tid = d.task
        nid = self.index.placement_of(tid)
        if nid is None or tid in self._fixed or tid not in self.tasks:
            what = "an actor's (actors are not preempted)" if tid in self._fixed else \
                "not a running task"
            self._reject(PolicyError(f"policy {self.policy_name!r} preempted task id {tid} "
                                     f"which is {what}"), task=tid)
            return False
        if tid in self._preempting:
            return False
        self._preempting.add(tid)
        self.emit(K.TASK_PREEMPTED, tid, nid, reason=d.reason, decided=True)
        return True

    def _reject(self, err: PolicyError, task: int | None = None) -> None:
        """A decision that cannot be carried out and fails no task: publish the error."""
        self.errors.append(err)
        self.emit(K.POLICY_ERROR, task, None, error=str(err), decided=True)

    def _give_up(self, task_id: int, err: BaseException, cause: BaseException | None = None
                 ) -> None:
        """Fail a task the plane cannot place (its policy or autoscaler failed, or no node
        can ever take it)."""
        if cause is not None:
            err.__cause__ = cause
        if isinstance(err, PolicyError):
            self.errors.append(err)
        info = self.tasks.get(task_id)
        self.emit(K.TASK_FAILED, task_id, None, name=info.name if info else "?",
                  error=type(err).__name__, reason=str(err).split("\n", 1)[0], decided=True)
        self.queue.remove(task_id)
        self._ready_at.pop(task_id, None)
        self._let_go(task_id)
        self.tasks.pop(task_id, None)
        self.actuator.fail(task_id, err)

    # ------------------------------------------------------------------ autoscaling
    def unmet(self) -> list[TaskInfo]:
        """Queued tasks an autoscaler is asked about: waiting at least ``grace`` seconds,
        in id order, at most ``max_unmet``."""
        now = self.index.now
        grace = self.grace
        ra = self._ready_at
        out = [t for t in self.queue.pending()
               if not grace or now - ra.get(t.id, now) >= grace - 1e-12]
        return out[: self.max_unmet]

    def autoscale(self, unmet: list[TaskInfo] | None = None) -> None:
        """Ask the autoscaler (the only call of ``decide()``) and carry out its decision."""
        if self.autoscaler is None:
            return
        self._tick()
        self.planner.autoscale(self.unmet() if unmet is None else unmet)

    def scale(self, node_type: str | None, count: int | None) -> None:
        """Set the number of nodes of ``node_type`` to ``count`` by hand."""
        self._tick()
        self.planner.scale(node_type, count)

    # ------------------------------------------------------------------ views
    def describe(self) -> dict[str, Any]:
        """Policy, autoscaler and queue figures for status views."""
        d: dict[str, Any] = {"policy": self.policy_name, "pending": self.queue.count,
                             "rounds": self.rounds}
        if self.autoscaler is not None:
            d["autoscaler"] = policy_name(self.autoscaler)
        return d

