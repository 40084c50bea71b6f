"""The simulation engine: a small simpy core that *does* what the control plane decides.

:class:`Core` (:mod:`simulator.core`) is simpy's ``Environment`` plus bare
callbacks on the same heap (no process, no event object); task arrivals, starts
and finishes use them, so a task costs a few heap operations, not a simpy process.
Plug-ins (failures, spot preemption, availability windows; see
:mod:`simulator.failures`) sit on top and may use ordinary simpy processes.

:class:`Simulation` owns the trace and the raw metrics and is the
:class:`~runtime.control.Actuator` of one :class:`~runtime.control.ControlPlane`,
the same plane every backend uses: the plane keeps the index and the pending
queue, runs one decision round at the end of each instant in which something
changed (and asks the autoscaler every ``autoscale_interval``), validates every
decision and calls back here to start, preempt or fail tasks and to add or
remove nodes.
"""

from __future__ import annotations

import gc
import math
from array import array
from collections.abc import Iterable, Iterator
from heapq import heappush
from typing import Any

from runtime.cluster import NodeType, TaskInfo, policy_name
from runtime.control import ControlPlane, IndexNode
from runtime.control.index import RUN_VEC
from runtime.errors import InfeasibleRequestError, WorkerCrashedError
from runtime.events import EventBus
from runtime.events import EventKind as E
from simulator.cluster import ClusterConfig
from simulator.core import Core
from simulator.trace import K, Trace
from simulator.workloads.base import SimTask, Workload

__all__ = ["Core", "Simulation"]


class _Run:
    """A running attempt."""

    __slots__ = ("node", "vec", "attempt", "start", "speed", "acct")

    def __init__(self, node: IndexNode, vec: Any, attempt: int, start: float,
                 speed: float) -> None:
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
        if not isinstance(pause_gc, bool):
            raise TypeError(f"Simulation: pause_gc must be True or False, got {pause_gc!r}")
        self.cluster = cluster
        self.seed = seed
        self.env = Core()
        self.plane = ControlPlane(
            policy if policy is not None else "fifo", autoscaler, actuator=self,
            node_types=cluster.node_specs, clock=self._clock, window=window,
            emit=self._plane_event, wake=self._kick)
        self.plane.emits = frozenset({E.SCALE_DECISION, E.NODE_STATE})
        #: the cluster the policies see: the control plane's index
        self.state = self.plane.index
        self.policy = self.plane.policy
        self.autoscaler = self.plane.autoscaler
        self.policy_name = policy if isinstance(policy, str) else policy_name(self.policy)
        self.autoscaler_name = autoscaler if isinstance(autoscaler, str) else policy_name(
            self.autoscaler) if self.autoscaler is not None else "none"
        self.window = window
        self.pause_gc = pause_gc
        self.stall_limit = float(stall_limit)
        self._progress_at = 0.0
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
        self._shapes = [(s.name, s.resources, s.labels) for s in cluster.node_specs
                        if s.count > 0 or s.max_count > 0]
        self._what = f"cluster {cluster.name!r}"
        self._round_due = False
        self._feed_done = False
        self._last_submit = 0.0
        self.in_system = 0
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
        self._node_seq: dict[str, int] = {s.name: 0 for s in cluster.node_specs}
        self._node_ix: dict[str, int] = {}
        self._interval = autoscale_interval
        self._feasible: dict[Any, tuple[Any, str | None]] = {}
        self._speeds: dict[Any, tuple[Any, float]] = {}
        self.plugins: list[Any] = []
        for spec in cluster.initial_nodes():
            self.add_node(spec.name, "up", scale=False)
        self.env.call_in(0.0, self._pull)
        from simulator.failures import default_plugins

        self.plugins = list(plugins)
        if failures:
            self.plugins.extend(default_plugins(self))
        if self.autoscaler is not None:
            self.env.call_in(0.0, self._autoscale_tick, priority=3, background=True)
        for p in self.plugins:
            p.attach(self)

    # -- public -------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Current virtual time."""
        return self.env._now

    def _clock(self) -> float:
        return self.env._now

    @property
    def policy_calls(self) -> int:
        """Decision rounds that asked the policy."""
        return self.plane.rounds

    @property
    def policy_errors(self) -> list[Any]:
        """PolicyErrors of the run (a policy or autoscaler that raised or decided wrongly)."""
        return list(self.plane.errors)

    @property
    def pending_count(self) -> int:
        """Tasks in the pending queue now."""
        return self.plane.queue.count

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
    def add_node(self, type_name: str, state: str = "up", *, scale: bool = True) -> IndexNode:
        """Add a node of ``type_name`` in ``state`` (``booting`` nodes come up after boot latency)."""
        spec = self.cluster.spec(type_name)
        seq = self._node_seq[type_name]
        self._node_seq[type_name] = seq + 1
        nid = f"{type_name}-{seq:06d}"
        n = self.plane.add_node(nid, spec, state)  # type: ignore[arg-type]
        ix = self.trace.add_node(nid)
        self._node_ix[nid] = ix
        n.ix = ix
        self._emit(K.NODE_ADDED, -1, ix, self.trace.note(
            {"node_type": type_name, "total": spec.resources.to_dict(), "labels": spec.labels,
             "state": state}))
        if scale:
            self.scale_ups += 1
        for p in self.plugins:
            hook = getattr(p, "node_added", None)
            if hook is not None:
                hook(n)
        return n

    def set_node_state(self, n: IndexNode, state: str, reason: str = "") -> None:
        """Change a node's state (a node coming up unblocks the queue)."""
        self.plane.set_node_state(n.id, state, reason)  # type: ignore[arg-type]

    def remove_node(self, n: IndexNode, reason: str, *, scale: bool = True) -> None:
        """Remove an idle node (its running tasks must have been stopped)."""
        self.cost += n.group.cost * (self.now - n.added_at) / 3600.0
        self.plane.remove_node(n.id, reason)
        self._emit(K.NODE_REMOVED, -1, self._node_ix[n.id], self.trace.note({"reason": reason}))
        if scale:
            self.scale_downs += 1

    def stop_node_tasks(self, n: IndexNode, reason: str, *, count_attempt: bool = True) -> None:
        """Stop every task on ``n``: retried (up to ``max_retries``) or failed with
        :class:`WorkerCrashedError`; with ``count_attempt=False`` they are preempted instead."""
        plane = self.plane
        for tid in sorted(n.tasks):
            run = self._stop(tid)
            task = self._tasks[tid]
            if not count_attempt:
                self.preemptions += 1
                self._emit(K.PREEMPTED, tid, self._node_ix[n.id], run.attempt)
                plane.requeue(tid, E.TASK_READY)
            elif run.attempt <= task.max_retries:
                self.retries += 1
                self._emit(K.RETRIED, tid, self._node_ix[n.id], run.attempt)
                plane.requeue(tid)
            else:
                err = WorkerCrashedError(task.name, tid, run.attempt, n.id, reason)
                self._fail(tid, err, reason)

    # -- the actuator (what the control plane asks for) ----------------------------------
    def start(self, task_id: int, node_id: str) -> None:
        """Start a placed task: its finish is due after ``duration / speed``."""
        info = self._infos[task_id]
        state = self.state
        n = state._nodes[node_id]
        vec = state._running[task_id][RUN_VEC]
        req = info.request
        sk = (id(req), info.kind or info.name, id(n.group))  # ints and a str: cheap to hash
        c = self._speeds.get(sk)
        if c is None or c[0] is not req:
            c = self._speeds[sk] = (req, state._group_speed(info, n.group))  # holds req
        speed = c[1]
        now = self.env._now
        attempt = self._attempts.get(task_id, 0) + 1
        self._attempts[task_id] = attempt
        if task_id not in self._first_start:
            self._first_start[task_id] = now
        self._run[task_id] = _Run(n, vec, attempt, now, speed)
        self._progress_at = now
        tr = self.trace  # _emit(K.STARTED, ...), inlined
        tr.time.append(now)
        tr.kind.append(K.STARTED)
        tr.task.append(task_id)
        tr.node.append(n.ix)
        tr.aux.append(attempt)
        if self.events._subs:
            self.events.publish(tr.event(len(tr.time) - 1))
        t = self._tasks[task_id]
        dur = t.duration
        if t.shots:
            acc = n.group.spec.accelerator
            dur += t.shots * (acc.shot_time if acc is not None else 0.0)
        env = self.env
        heappush(env._queue, (now + dur / speed, 1, next(env._eid), self._finish,
                              (task_id, attempt)))

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """Not used: the engine has no round trip to hide."""

    def preempt(self, task_id: int, reason: str) -> None:
        """Stop a running task at once; it queues again."""
        run = self._stop(task_id)
        self.preemptions += 1
        self._emit(K.PREEMPTED, task_id, self._node_ix[run.node.id], run.attempt)
        self.plane.requeue(task_id, E.TASK_READY)

    def resume(self, task_id: int) -> None:
        """Not used: simulated tasks never block."""

    def fail(self, task_id: int, error: BaseException) -> None:
        """A task the plane gave up on (its policy failed, or nothing can run it)."""
        self._fail(task_id, error, str(error).split("\n", 1)[0], plane=False)

    def launch(self, node_type: NodeType, count: int) -> None:
        """Add ``count`` nodes (booting for the type's boot latency, cost running from now)."""
        for _ in range(count):
            node = self.add_node(node_type.name,
                                 "booting" if node_type.boot_latency > 0 else "up")
            if node_type.boot_latency > 0:
                self.env.call_in(node_type.boot_latency, self._booted, node)

    def retire(self, node_id: str) -> None:
        """Remove an idle node the planner scaled down."""
        n = self.state._nodes.get(node_id)
        if n is not None:
            self.remove_node(n, "scaled down")

    def _booted(self, ev: Any) -> None:
        node = ev.args[0]
        if node.id in self.state and node.state == "booting":
            self.set_node_state(node, "up", "booted")

    def _plane_event(self, kind: str, task: int | None, node: str | None, **data: Any) -> None:
        """The decisions and node changes the plane publishes, into the trace."""
        if kind == E.NODE_STATE:
            self._emit(K.NODE_STATE, -1, self._node_ix[node], self.trace.note(  # type: ignore[index]
                {"state": data["state"], "reason": data["reason"]} if data.get("reason")
                else {"state": data["state"]}))
        elif kind == E.SCALE_DECISION:
            self._emit(K.SCALE, -1, -1, self.trace.note(
                {"add": data["add"], "remove": data["remove"],
                 "infeasible": data["infeasible"], "reason": data["reason"]}))

    def _autoscale_tick(self, ev: Any) -> None:
        if self.done:
            return
        self.plane.autoscale()
        self.env.call_in(self._interval, self._autoscale_tick, priority=3, background=True)

    # -- internals: arrivals ---------------------------------------------------------
    def _active(self) -> bool:
        if self.done:
            return False
        env = self.env
        if len(env._queue) > env.bg:
            return True
        # only background clocks left: go on while pending work might still start
        return self.plane.queue.count > 0 and env._now - self._progress_at < self.stall_limit

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
        if t.gang > 1:
            raise NotImplementedError(
                f"workload {self.workload_name!r}: task {tid} is a gang job of {t.gang} members "
                f"(all-or-nothing over several nodes), which the engine cannot place yet; read "
                f"the trace with gangs='split' to run each member as a task of its own")
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
            self._submit(info, True)
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
                self._submit(info, False)
                self._fail(tid, self.errors.get(d) or RuntimeError(f"dependency {d} failed"),
                           f"dependency {d} failed")
                return
        self._submit(info, not waiting)
        if waiting:
            self._waiting[tid] = waiting

    def _why_not(self, info: TaskInfo) -> str | None:
        """Why no node type of the cluster could ever run ``info``, or None (a shape some
        present node group runs is feasible; others are asked once per shape)."""
        req = info.request
        key = (id(req), info.accelerator_type, info.kind or info.name)  # cheap to hash
        c = self._feasible.get(key)
        if c is None or c[0] is not req:
            c = self._feasible[key] = (req, self.plane.infeasible(
                info, shapes=self._shapes, what=self._what))  # holds req: its id stays
        return c[1]

    def _submit(self, info: TaskInfo, ready: bool) -> None:
        """Hand a task to the plane; one whose shape no node can ever host fails at once."""
        if ready:
            why = self._why_not(info)
            if why is not None:
                self.plane.submit(info, ready=False)
                self._ready_t[info.id] = self.env._now
                self._fail(info.id, InfeasibleRequestError(why), why)
                return
            self._ready_t[info.id] = self.env._now
        self.plane.submit(info, ready=ready)

    def _enqueue(self, tid: int) -> None:
        info = self._infos[tid]
        why = self._why_not(info)
        self._ready_t[tid] = self.env._now
        if why is not None:
            self._fail(tid, InfeasibleRequestError(why), why)
            return
        self.plane.ready(tid)

    # -- internals: rounds -------------------------------------------------------------
    def _kick(self) -> None:
        if not self._round_due:
            self._round_due = True
            env = self.env
            heappush(env._queue, (env._now, 2, next(env._eid), self._round, ()))

    def _round(self) -> None:
        self._round_due = False
        self.plane.schedule()

    def _stop(self, tid: int) -> _Run:
        """Close a running attempt's books (its resources are given back by the plane)."""
        run = self._run.pop(tid)
        dt = self.env._now - run.acct
        busy = run.node.group.busy
        for i, a in run.vec:
            busy[i] += a * dt
        return run

    def _finish(self, tid: int, attempt: int) -> None:
        run = self._run.get(tid)
        if run is None or run.attempt != attempt:
            return  # a stale finish of an attempt that was stopped
        self._stop(tid)
        tr = self.trace  # _emit(K.FINISHED, ...), inlined
        tr.time.append(self.env._now)
        tr.kind.append(K.FINISHED)
        tr.task.append(tid)
        tr.node.append(run.node.ix)
        tr.aux.append(attempt)
        if self.events._subs:
            self.events.publish(tr.event(len(tr.time) - 1))
        self.plane.end(tid, E.TASK_FINISHED)
        self._leave(tid, True, self.env._now - run.start)

    def _fail(self, tid: int, err: BaseException, reason: str, *, plane: bool = True) -> None:
        self.errors[tid] = err
        if tid in self._run:
            self._stop(tid)
        self._emit(K.FAILED, tid, -1, self.trace.note({"error": type(err).__name__,
                                                        "reason": reason}))
        if plane:
            self.plane.end(tid, E.TASK_FAILED)
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
        for n in list(self.state.records().values()):
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
