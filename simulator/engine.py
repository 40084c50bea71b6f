"""The simulation engine: a small simpy core with tasks as plain scheduled callbacks.

:class:`Core` (:mod:`simulator.core`) is simpy's ``Environment`` plus bare
callbacks on the same heap (no process, no event object); task arrivals, starts
and finishes use them, so a task costs a few heap operations, not a simpy process.
Plug-ins (failures, spot preemption, availability windows, the autoscaler; see
:mod:`simulator.failures` and :mod:`simulator.autoscale`) sit on top and may use
ordinary simpy processes.

:class:`Simulation` owns the cluster state, the pending queues (grouped by request
shape, in submission order; see :mod:`simulator.pending`), the trace and the raw
metrics. Each instant at which something changed ends with one *scheduling round*:
the policy gets the pending tasks that could possibly start (see ``window``) and its
decisions are validated
(:func:`runtime.policies.base.check_placement`) before they are applied.
"""

from __future__ import annotations

import gc
import math
from array import array
from collections.abc import Iterable, Iterator
from heapq import heappush
from itertools import islice
from operator import attrgetter
from typing import Any

from runtime.autoscaling import get_autoscaler
from runtime.errors import InfeasibleRequestError, PolicyError, WorkerCrashedError
from runtime.events import EventBus
from runtime.policies import get_policy
from runtime.policies.base import Place, Preempt, TaskInfo, check_placement, infeasible_message
from simulator.cluster import ClusterConfig
from simulator.core import Core
from simulator.pending import PendingGroup as _Pending
from simulator.pending import fifo_insert as _fifo_insert
from simulator.pending import greedy_by_shape as _by_shape
from simulator.pending import preempts as _preempts
from simulator.state import SimClusterState, SimNode, _fits
from simulator.trace import K, Trace
from simulator.workloads.base import SimTask, Workload

__all__ = ["Core", "Simulation"]

_by_id = attrgetter("id")


class _Run:
    """A running attempt."""

    __slots__ = ("node", "vec", "attempt", "start", "speed", "acct")

    def __init__(self, node: SimNode, vec: Any, attempt: int, start: float, speed: float) -> None:
        self.node, self.vec, self.attempt, self.start, self.speed = node, vec, attempt, start, speed
        self.acct = start  # busy time is accounted from here (moves when books close mid-run)


class Simulation:
    """One simulated run: ``Simulation(cluster, workload, policy=..., seed=...).run()``.

    ``policy`` / ``autoscaler`` are names or objects (the runtime's registries).
    ``window`` bounds how many tasks of each pending group the policy sees per
    round (``None``: every pending task, every round, exact but O(queue) per
    round). ``stall_limit``: with tasks pending and only background clocks left,
    stop after that many virtual seconds without progress. ``failures`` turns on
    node failures / spot preemption / availability windows from the cluster's
    specs. ``events`` is an optional :class:`runtime.events.EventBus` that
    receives every event live; ``plugins`` are extra plug-ins (``attach(sim)``).
    ``pause_gc`` turns Python's cyclic garbage collector off while :meth:`run` runs
    (the engine makes no reference cycles; with a million live tasks the collector's
    full passes cost a quarter of the run); it is restored afterwards.
    """

    def __init__(self, cluster: ClusterConfig, workload: Workload | Iterable[SimTask], *,
                 policy: Any = "fifo", autoscaler: Any = "none", seed: int = 0,
                 window: int | None = 64, failures: bool = True,
                 autoscale_interval: float = 10.0, events: EventBus | None = None,
                 plugins: Iterable[Any] = (), stall_limit: float = 1e6,
                 pause_gc: bool = True) -> None:
        if not isinstance(cluster, ClusterConfig):
            raise TypeError(f"Simulation: cluster must be a ClusterConfig, got {cluster!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Simulation: seed must be an int, got {seed!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise ValueError(f"Simulation: window must be an int >= 1 or None, got {window!r}")
        if not (0 < autoscale_interval < math.inf):
            raise ValueError(f"Simulation: autoscale_interval must be a finite number > 0, "
                             f"got {autoscale_interval!r}")
        self.cluster = cluster
        self.seed = seed
        self.policy = get_policy(policy)
        self.autoscaler = get_autoscaler(autoscaler)
        self.policy_name = policy if isinstance(policy, str) else str(
            getattr(self.policy, "name", type(self.policy).__name__))
        self.autoscaler_name = autoscaler if isinstance(autoscaler, str) else str(
            getattr(self.autoscaler, "name", type(self.autoscaler).__name__))
        self.window = window
        if not isinstance(pause_gc, bool):
            raise TypeError(f"Simulation: pause_gc must be True or False, got {pause_gc!r}")
        self.pause_gc = pause_gc
        self.stall_limit = float(stall_limit)
        self._progress_at = 0.0
        self._exact = window is None or _preempts(self.policy)
        # a policy that is greedy by shape (see _by_shape) lets tenants share one queue per shape
        self._by_shape = not self._exact and _by_shape(self.policy)
        self.env = Core()
        self.state = SimClusterState(list(cluster.node_specs))
        self.trace = Trace()
        self.events = events if events is not None else EventBus()
        if isinstance(workload, Iterable) and not callable(getattr(workload, "tasks", None)):
            self.workload_name = "tasks"
            self._feed: Iterator[SimTask] = iter(workload)
        elif callable(getattr(workload, "tasks", None)):
            self.workload_name = str(getattr(workload, "name", type(workload).__name__))
            self._feed = iter(workload.tasks(seed))
        else:
            raise TypeError(f"Simulation: workload must be a workload (with tasks(seed)) or an "
                            f"iterable of SimTask, got {workload!r}")
        # tasks
        self._tasks: dict[int, SimTask] = {}
        self._infos: dict[int, TaskInfo] = {}
        self._seen = 0
        self._ready_t: dict[int, float] = {}
        self._waiting: dict[int, int] = {}
        self._dependants: dict[int, list[int]] = {}
        self._attempts: dict[int, int] = {}
        self._first_start: dict[int, float] = {}
        self._run: dict[int, _Run] = {}
        self._done_status: dict[int, int] = {}  # finished tasks whose dependants may still come
        self._prune_at = 200_000
        self.errors: dict[int, BaseException] = {}
        self._groups: dict[tuple[Any, ...], _Pending] = {}
        self._group_of: dict[int, _Pending] = {}  # pending task id -> its group
        self._ready: dict[_Pending, _Pending] = {}  # keyed by the group itself (fast hash)
        self._blocked_by_type: dict[str, dict[_Pending, tuple[_Pending, Any]]] = {
            name: {} for name in self.state.groups}
        self._feasible: dict[tuple[Any, ...], str | None] = {}
        self._round_due = False
        self._feed_done = False
        self._last_submit = 0.0
        self.in_system = 0
        self.pending_count = 0
        self.done = False
        self.end_time = 0.0
        # records (columns, appended when a task leaves the system)
        self.rec_id = array("q")
        self.rec_job = array("q")
        self.rec_tenant = array("l")
        self.rec_submit = array("d")
        self.rec_ready = array("d")
        self.rec_start = array("d")
        self.rec_end = array("d")
        self.rec_service = array("d")  # run time of the successful attempt
        self.rec_deadline = array("d")  # inf when none
        self.rec_ok = array("b")
        self.tenants: list[str] = []
        self._tenant_ix: dict[str, int] = {}
        self.retries = 0
        self.preemptions = 0
        self.scale_ups = 0
        self.scale_downs = 0
        self.cost = 0.0
        self._node_seq: dict[str, int] = dict.fromkeys(self.state.groups, 0)
        self._node_ix: dict[str, int] = {}
        self.policy_calls = 0
        for spec in cluster.initial_nodes():
            self.add_node(spec.name, "up", scale=False)
        self.env.call_in(0.0, self._pull)
        from simulator.autoscale import AutoscalerDriver
        from simulator.failures import default_plugins

        self.plugins: list[Any] = list(plugins)
        if failures:
            self.plugins.extend(default_plugins(self))
        if type(self.autoscaler).__name__ != "NoAutoscaling":
            self.plugins.append(AutoscalerDriver(autoscale_interval))
        for p in self.plugins:
            p.attach(self)

    # -- public -------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Current virtual time."""
        return self.env._now

    def run(self, until: float | None = None) -> Simulation:
        """Run until every task left the system (or ``until``); returns self."""
        if until is not None:
            if isinstance(until, bool) or not isinstance(until, (int, float)) or \
                    math.isnan(until) or until <= self.now:
                raise ValueError(f"Simulation.run: until must be a number after the current "
                                 f"time {self.now:g}, got {until!r}")
        paused = self.pause_gc and gc.isenabled()
        if paused:
            gc.disable()
        try:
            self.env.run_while(math.inf if until is None else float(until), self._active)
        finally:
            if paused:
                gc.enable()
        if not self.done:
            self.end_time = self.now
        self._close_books()
        return self

    def metrics(self, check: bool = False) -> dict[str, Any]:
        """The run's metrics (see :mod:`simulator.metrics`); ``check=True`` first runs
        :func:`simulator.metrics.check_invariants` (books, Little's law), which raises."""
        from simulator.metrics import check_invariants, compute

        if check:
            check_invariants(self)
        return compute(self)

    def digest(self) -> str:
        """sha256 of the event trace."""
        return self.trace.digest()

    # -- nodes --------------------------------------------------------------------
    def add_node(self, type_name: str, state: str = "up", *, scale: bool = True) -> SimNode:
        """Add a node of ``type_name`` in ``state`` (``booting`` nodes come up after boot latency)."""
        spec = self.state.groups[type_name].spec
        seq = self._node_seq[type_name]
        self._node_seq[type_name] = seq + 1
        nid = f"{type_name}-{seq:06d}"
        n = self.state.add_node(nid, spec, state, self.now)  # type: ignore[arg-type]
        ix = self.trace.add_node(nid)
        self._node_ix[nid] = ix
        n.ix = ix
        self._emit(K.NODE_ADDED, -1, ix, self.trace.note(
            {"node_type": type_name, "total": spec.resources.to_dict(), "labels": spec.labels,
             "state": state}))
        if scale:
            self.scale_ups += 1
        if state == "up":
            self._node_up(n)
        for p in getattr(self, "plugins", ()):
            hook = getattr(p, "node_added", None)
            if hook is not None:
                hook(n)
        return n

    def set_node_state(self, n: SimNode, state: str, reason: str = "") -> None:
        """Change a node's state, emitting ``node_state`` (a node coming up unblocks the queue)."""
        if n.state == state:
            return
        self.state.set_state(n, state, self.now)  # type: ignore[arg-type]
        data = {"state": state, "reason": reason} if reason else {"state": state}
        self._emit(K.NODE_STATE, -1, self._node_ix[n.id], self.trace.note(data))
        if state == "up":
            self._node_up(n)

    def remove_node(self, n: SimNode, reason: str, *, scale: bool = True) -> None:
        """Remove an idle node (its running tasks must have been stopped)."""
        self.cost += n.group.cost * (self.now - n.added_at) / 3600.0
        self.state.remove_node(n, self.now)
        self._emit(K.NODE_REMOVED, -1, self._node_ix[n.id], self.trace.note({"reason": reason}))
        if scale:
            self.scale_downs += 1

    def stop_node_tasks(self, n: SimNode, reason: str, *, count_attempt: bool = True) -> None:
        """Stop every task on ``n``: retried (up to ``max_retries``) or failed with
        :class:`WorkerCrashedError`; with ``count_attempt=False`` they are preempted instead."""
        for tid in sorted(n.tasks):
            run = self._stop(tid)
            task = self._tasks[tid]
            if not count_attempt:
                self.preemptions += 1
                self._emit(K.PREEMPTED, tid, self._node_ix[n.id], run.attempt)
                self._requeue(tid)
            elif run.attempt <= task.max_retries:
                self.retries += 1
                self._emit(K.RETRIED, tid, self._node_ix[n.id], run.attempt)
                self._requeue(tid)
            else:
                err = WorkerCrashedError(task.name, tid, run.attempt, n.id, reason)
                self._fail(tid, err, reason)
        self._kick()

    # -- internals: arrivals ---------------------------------------------------------
    def _active(self) -> bool:
        if self.done:
            return False
        env = self.env
        if len(env._queue) > env.bg:
            return True
        # only background clocks left: go on while pending work might still start
        return self.pending_count > 0 and env._now - self._progress_at < self.stall_limit

    def _emit(self, kind: int, task: int = -1, node: int = -1, aux: int = 0) -> None:
        tr = self.trace
        tr.time.append(self.env._now)
        tr.kind.append(kind)
        tr.task.append(task)
        tr.node.append(node)
        tr.aux.append(aux)
        if self.events._subs:
            self.events.publish(tr.event(len(tr.time) - 1))

    def _pull(self, ev: Any = None) -> None:
        """Admit every task due now, then schedule the next arrival."""
        now = self.env._now
        feed = self._feed
        while True:
            t = next(feed, None)
            if t is None:
                self._feed_done = True
                self._check_done()
                return
            if not isinstance(t, SimTask):
                raise TypeError(f"workload {self.workload_name!r} yielded {t!r}, not a SimTask")
            if t.submit < self._last_submit:
                raise ValueError(f"workload {self.workload_name!r}: task {t.id} has submit "
                                 f"{t.submit:g} before the previous task's {self._last_submit:g}; "
                                 f"tasks must come in arrival order")
            self._last_submit = t.submit
            if t.submit > now:
                env = self.env
                heappush(env._queue, (t.submit, 1, next(env._eid), self._arrive_then_pull, (t,)))
                return
            self._arrive(t)

    def _arrive_then_pull(self, t: SimTask) -> None:
        self._arrive(t)
        self._pull()

    def _arrive(self, t: SimTask) -> None:
        tid = t.id
        if tid in self._tasks or tid in self._done_status:
            raise ValueError(f"workload {self.workload_name!r}: task id {tid} used twice")
        self._tasks[tid] = t
        self._seen += 1
        self.in_system += 1
        ti = self._tenant_ix.get(t.tenant)
        if ti is None:
            ti = self._tenant_ix[t.tenant] = len(self.tenants)
            self.tenants.append(t.tenant)
        info = TaskInfo(tid, t.name, t.request, t.kind, t.accelerator_type, t.tenant,
                        t.priority, self.env._now, t.duration)
        self._infos[tid] = info
        self._emit(K.SUBMITTED, tid, -1, self.trace.meta(t.name, t.kind, t.tenant, t.request))
        if not t.deps:
            self._enqueue(tid)
            return
        waiting = 0
        for d in t.deps:
            st = self._done_status.get(d)
            if st is None:
                if d not in self._tasks:
                    raise ValueError(f"workload {self.workload_name!r}: task {tid} depends on "
                                     f"unknown task {d} (deps must come before dependants)")
                self._dependants.setdefault(d, []).append(tid)
                waiting += 1
            elif st == 0:
                self._fail(tid, self.errors.get(d) or RuntimeError(f"dependency {d} failed"),
                           f"dependency {d} failed")
                return
        if waiting:
            self._waiting[tid] = waiting
        else:
            self._enqueue(tid)

    def _enqueue(self, tid: int) -> None:
        info = self._infos[tid]
        self._ready_t[tid] = self.env._now
        key = self._key(info)
        g = self._groups.get(key)
        if g is None:  # a new group: is its shape feasible at all? (cached per shape)
            fkey = key[:3]
            why = self._feasible.get(fkey, "?")
            if why == "?":
                why = self._feasible[fkey] = self._infeasible(info)
            if why is not None:
                self._fail(tid, InfeasibleRequestError(why), why)
                return
            g = self._groups[key] = _Pending(key, self.state.eligible(info))
        self._group_of[tid] = g
        _fifo_insert(g.queue, info)
        self.pending_count += 1
        if not g.blocked:
            self._ready[g] = g
            self._kick()

    def _key(self, info: TaskInfo) -> tuple[Any, ...]:
        """The pending group of a task: its shape (plus tenant and priority unless the
        policy is greedy by shape)."""
        key = (info.request, info.accelerator_type, info.task_kind)
        return key if self._by_shape else key + (info.tenant, info.priority)

    def _infeasible(self, info: TaskInfo) -> str | None:
        shapes = [(s.name, s.resources, s.labels) for s in self.cluster.node_specs
                  if s.count > 0 or (s.max_count or 0) > 0]
        why = infeasible_message(info.request, info.accelerator_type, shapes,
                                 what=f"cluster {self.cluster.name!r}", task_name=info.name)
        if why is None and not self.state.eligible(info):
            why = (f"task {info.name!r} of kind {info.task_kind!r} runs at speed 0 on every "
                   f"device model of cluster {self.cluster.name!r} that fits its request")
        return why

    # -- internals: scheduling rounds ------------------------------------------------
    def _kick(self) -> None:
        if not self._round_due:
            self._round_due = True
            env = self.env
            heappush(env._queue, (env._now, 2, next(env._eid), self._round, ()))

    def _round(self) -> None:
        self._round_due = False
        st = self.state
        st._now = self.env._now
        room = st.room_in
        window: list[TaskInfo] = []
        groups: list[_Pending] = []
        exact, cap = self._exact, self.window
        for g in list(self._ready):
            q = g.queue
            if not q:
                del self._ready[g]
                continue
            if exact:
                k = len(q) if cap is None else min(cap, len(q))
            else:
                k = room(g.elig, cap)  # type: ignore[arg-type]
                if k <= 0:
                    self._block(g)
                    continue
            if k < len(q):
                window.extend(islice(q, k))
            else:
                k = len(q)
                window.extend(q)
            g.shown = k
            groups.append(g)
        if not window:
            return
        if len(groups) > 1:
            window.sort(key=_by_id)
        self.policy_calls += 1
        try:
            decisions = list(self.policy.schedule(window, st))
        finally:
            if st._undo is not None:  # a policy that held without a Ledger: undo its holds
                st._rollback()
        placed = preempted = 0
        if decisions:
            ids = {t.id: t for t in window}
            for d in decisions:
                if type(d) is Place:
                    self._place(d, ids).shown -= 1
                    placed += 1
                elif type(d) is Preempt:
                    self._preempt(d)
                    preempted += 1
                else:
                    raise PolicyError(f"policy {self.policy_name!r} returned {d!r}, "
                                      f"expected Place or Preempt decisions")
        if exact:  # every pending task is shown every round: nothing is parked
            if placed or preempted:
                self._kick()
            return
        again = False
        for g in groups:
            if g.queue:
                if g.shown > 0 or room(g.elig, 1) <= 0:  # type: ignore[arg-type]
                    self._block(g)  # (some of) what it was shown stayed pending, or no room left
                else:
                    again = True  # everything shown was placed, more waits and might fit
        if again:
            self._kick()

    def _block(self, g: _Pending) -> None:
        if g.blocked:
            return
        g.blocked = True
        self._ready.pop(g, None)
        for grp, vec, _ in g.elig:
            self._blocked_by_type[grp.spec.name][g] = (g, vec)

    def _unblock(self, g: _Pending) -> None:
        if not g.blocked:
            return
        g.blocked = False
        for d in self._blocked_by_type.values():
            d.pop(g, None)
        if g.queue:
            self._ready[g] = g
            self._kick()

    def _node_up(self, n: SimNode) -> None:
        for g, _ in list(self._blocked_by_type[n.spec.name].values()):
            self._unblock(g)
        if self._ready:
            self._kick()

    def _place(self, d: Place, ids: dict[int, TaskInfo]) -> _Pending:
        info = ids.pop(d.task, None)
        if info is None:
            what = "already placed in this round" if d.task in self._run else \
                "not among the pending tasks it was given"
            raise PolicyError(f"policy {self.policy_name!r} placed task id {d.task} which is "
                              f"{what}")
        g = self._group_of[info.id]
        n = self.state._nodes.get(d.node)
        elig = None
        if n is not None and n.state == "up":
            for grp, vec, sp in g.elig:
                if grp is n.group:
                    elig = (vec, sp)
                    break
        if elig is None or not _fits(n.free, elig[0]):  # type: ignore[union-attr]
            check_placement(self.policy, info, d.node, self.state)  # raises with the reason
            raise PolicyError(f"policy {self.policy_name!r} placed task {info.name!r} "
                              f"(id {info.id}) of kind {info.task_kind!r} on node {d.node!r} "
                              f"whose device runs it at speed 0")
        del self._group_of[info.id]
        q = g.queue
        if q[0] is info:
            q.popleft()
        else:
            q.remove(info)
        self.pending_count -= 1
        self._start(info, n, elig[0], elig[1])  # type: ignore[arg-type]
        return g

    def _start(self, info: TaskInfo, n: SimNode, vec: Any, speed: float) -> None:
        tid = info.id
        now = self.env._now
        self.state.allocate(info, n, vec)
        attempt = self._attempts.get(tid, 0) + 1
        self._attempts[tid] = attempt
        if tid not in self._first_start:
            self._first_start[tid] = now
        self._run[tid] = _Run(n, vec, attempt, now, speed)
        self._progress_at = now
        tr = self.trace  # _emit(K.STARTED, ...), inlined
        tr.time.append(now)
        tr.kind.append(K.STARTED)
        tr.task.append(tid)
        tr.node.append(n.ix)
        tr.aux.append(attempt)
        if self.events._subs:
            self.events.publish(tr.event(len(tr.time) - 1))
        t = self._tasks[tid]
        dur = t.duration
        if t.shots:
            acc = n.spec.accelerator
            dur += t.shots * (acc.shot_time if acc is not None else 0.0)
        env = self.env
        heappush(env._queue, (now + dur / speed, 1, next(env._eid), self._finish, (tid, attempt)))

    def _stop(self, tid: int) -> _Run:
        run = self._run.pop(tid)
        n = run.node
        dt = self.env._now - run.acct
        busy = n.group.busy
        for i, a in run.vec:
            busy[i] += a * dt
        self.state.release(tid, n, run.vec)
        self._release_unblock(n)
        return run

    def _release_unblock(self, n: SimNode) -> None:
        blocked = self._blocked_by_type[n.spec.name]
        if blocked:
            free = n.free
            for g, vec in list(blocked.values()):
                if _fits(free, vec):
                    self._unblock(g)

    def _finish(self, tid: int, attempt: int) -> None:
        run = self._run.get(tid)
        if run is None or run.attempt != attempt:
            return  # a stale finish of an attempt that was stopped
        self._stop(tid)
        n = run.node
        tr = self.trace  # _emit(K.FINISHED, ...), inlined
        tr.time.append(self.env._now)
        tr.kind.append(K.FINISHED)
        tr.task.append(tid)
        tr.node.append(n.ix)
        tr.aux.append(attempt)
        if self.events._subs:
            self.events.publish(tr.event(len(tr.time) - 1))
        self._leave(tid, True, self.env._now - run.start)
        if n.draining_to_remove and not n.tasks:
            self.remove_node(n, "scaled down")
        if self._ready:
            self._kick()

    def _preempt(self, d: Preempt) -> None:
        if d.task not in self._run:
            raise PolicyError(f"policy {self.policy_name!r} preempted task id {d.task} which is "
                              f"not running")
        run = self._stop(d.task)
        self.preemptions += 1
        self._emit(K.PREEMPTED, d.task, self._node_ix[run.node.id], run.attempt)
        self._requeue(d.task)

    def _requeue(self, tid: int) -> None:
        info = self._infos[tid]
        g = self._groups[self._key(info)]
        self._group_of[tid] = g
        _fifo_insert(g.queue, info)
        self.pending_count += 1
        if g.blocked:
            return
        self._ready[g] = g
        self._kick()

    def _fail(self, tid: int, err: BaseException, reason: str) -> None:
        self.errors[tid] = err
        self._emit(K.FAILED, tid, -1, self.trace.note({"error": type(err).__name__,
                                                        "reason": reason}))
        self._leave(tid, False, 0.0)

    def _leave(self, tid: int, ok: bool, service: float) -> None:
        t = self._tasks.pop(tid)
        self._infos.pop(tid, None)
        self.in_system -= 1
        now = self.env._now
        self.rec_id.append(tid)
        self.rec_job.append(t.job)
        self.rec_tenant.append(self._tenant_ix[t.tenant])
        self.rec_submit.append(t.submit)
        self.rec_ready.append(self._ready_t.pop(tid, now))
        self.rec_start.append(self._first_start.pop(tid, now))
        self.rec_end.append(now)
        self.rec_service.append(service)
        self.rec_deadline.append(t.deadline if t.deadline is not None else math.inf)
        self.rec_ok.append(1 if ok else 0)
        self._attempts.pop(tid, None)
        deps = self._dependants.pop(tid, None)
        self._done_status[tid] = 1 if ok else 0
        if deps:
            for d in deps:
                if d not in self._tasks:
                    continue
                if ok:
                    left = self._waiting[d] - 1
                    if left:
                        self._waiting[d] = left
                    else:
                        del self._waiting[d]
                        self._enqueue(d)
                else:
                    self._waiting.pop(d, None)
                    self._fail(d, self.errors[tid], f"dependency {tid} failed")
        if len(self._done_status) > self._prune_at:
            self._prune_done()
        self._check_done()

    def _prune_done(self) -> None:
        """Forget old finished ids nobody can depend on any more (bounded memory)."""
        live_deps = {d for t in self._tasks.values() for d in t.deps}
        self._done_status = {k: v for k, v in self._done_status.items()
                             if k in live_deps or v == 0}
        self._prune_at = max(200_000, 2 * len(self._done_status))

    def _check_done(self) -> None:
        if self._feed_done and self.in_system == 0 and not self.done:
            self.done = True
            self.end_time = self.env._now

    def _close_books(self) -> None:
        now = self.end_time
        for n in list(self.state.all_nodes().values()):
            self.cost += n.group.cost * (now - n.added_at) / 3600.0
            n.added_at = now
            if n.up_since is not None:
                n.group.uptime += now - n.up_since
                n.up_since = now
        for run in self._run.values():
            busy = run.node.group.busy
            for i, a in run.vec:
                busy[i] += a * (now - run.acct)
            run.acct = now
