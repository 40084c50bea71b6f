"""The dask backend's side of the control plane: the actuator, the control loop, recovery.

Deciding is the :class:`~runtime.control.ControlPlane`'s, as on every backend. With
no policy, dask's scheduler places tasks (the fast path) and the plane only keeps
the books (workers as nodes, what runs where) for the autoscaler and the views.
With a policy, the plane holds tasks until their top-level ref arguments are ready
(this module checks their futures), its decision rounds place them, and
:class:`Control` submits each one pinned to the chosen worker
(``workers=[addr], allow_other_workers=False``), one ``client.map`` per worker per
round. For ``greedy_by_shape`` policies tasks are also sent ahead to busy workers
(adaptive depth), for ``lookahead_safe`` ones queued behind running tasks by the
policy's own choice (see :mod:`runtime.control.ahead`). A ``Preempt`` decision
cancels the victim's attempt (its thread is interrupted) and queues it again under
a new key. The autoscaler's decisions are applied to a dask cluster manager
(:class:`~.manager.SpecClusterManager`).

What is dask's own here: a worker that leaves takes its pinned tasks and its
results with it, so placed tasks are moved (submitted again, through the policy,
under new keys), and lost results are recomputed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runtime.backends.dask.common import task_key
from runtime.backends.dask.manager import SpecClusterManager
from runtime.cluster import NodeType, TaskInfo, parse_nodes
from runtime.control import ControlPlane, greedy_by_shape
from runtime.errors import InfeasibleRequestError, TaskCancelledError, WorkerCrashedError
from runtime.events import EventKind
from runtime.policies import get_policy as _get_policy
from runtime.refs import ObjectRef
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.dask.backend import DaskBackend, _Task

__all__ = ["Control", "SpecClusterManager"]

log = logging.getLogger("runtime.backends.dask")

#: Most tasks sent ahead per running task with ``prefetch=True`` (for very short tasks).
PREFETCH_MAX = 8
#: With ``prefetch=True``, enough tasks are sent ahead to cover this many seconds of a
#: shape's mean run time: about the round trip from a task's end to its successor's
#: arrival on the worker.
PREFETCH_HORIZON = 0.03


def _shape(info: TaskInfo) -> tuple[Resources, str | None]:
    """What makes two tasks interchangeable for a slot: request and accelerator type."""
    return (info.request, info.accelerator_type)


class Control:
    """The actuator of the dask backend's control plane, its loop thread and its recovery."""

    def __init__(self, backend: DaskBackend, *, policy: Any = None, autoscaler: Any = None,
                 node_types: Any = None, interval: float = 1.0, window: int = 256,
                 prefetch: int | bool = True) -> None:
        self.b = backend
        if not isinstance(prefetch, int) or (not isinstance(prefetch, bool) and prefetch < 0):
            raise ValueError(f"prefetch={prefetch!r}: expected True (adaptive), False, or "
                             f"how many tasks to send ahead per running task (an int >= 0)")
        pol = _get_policy(policy) if policy is not None else None
        #: most tasks sent ahead per placed task (0: off); ``True`` adapts it per shape to
        #: the tasks' run time (see :meth:`depth`)
        self.depth_max = PREFETCH_MAX if prefetch is True else int(prefetch)
        self.prefetch = self.depth_max if greedy_by_shape(pol) else 0
        self.adaptive = prefetch is True
        #: other policies whose ``schedule`` has no side effects (``lookahead_safe``) choose
        #: the task queued behind each running one
        self.lookahead = bool(prefetch) and not self.prefetch and \
            bool(getattr(pol, "lookahead_safe", False))
        self._runtime: dict[Any, float] = {}  # shape -> mean run time (EWMA), seconds
        self.node_types: dict[str, NodeType] = {}
        if node_types:
            for nt in parse_nodes(list(node_types)):
                self.node_types[nt.name] = nt
        cluster = backend._cluster
        self.manager = (SpecClusterManager(cluster, self.node_types)
                        if cluster is not None and hasattr(cluster, "worker_spec") else None)
        if autoscaler is not None and self.manager is None:
            raise TypeError("autoscaler= needs a dask cluster manager: pass cluster=SpecCluster(...) "
                            "or LocalCluster(...), or init(cluster_object, ...)")
        if autoscaler is not None and not self.node_types:
            raise ValueError("autoscaler= needs node_types=[...] (the kinds of worker it may add)")
        sends = self.prefetch or self.lookahead
        #: the control plane: the index of the workers, the queue, decision rounds
        self.plane = ControlPlane(
            pol, autoscaler, actuator=self, node_types=self.node_types.values(),
            emit=backend._publish, clock=backend.now, window=window,
            send_ahead=self.depth if sends else None, lookahead=self.lookahead, grace=0.3,
            wake=self._poke)
        self.policy = self.plane.policy
        self.autoscaler = self.plane.autoscaler
        self.index = self.plane.index
        self.interval = interval
        self.dirty = False
        #: least seconds after a round that placed tasks before the next one: a burst
        #: of ends and submissions becomes one round and one message per worker
        self.gap = 0.01 if sends else 0.003
        self._sweep_until = 0.0  # sweep() looks for stuck tasks until then
        self._last_placing = 0.0  # when a round last placed (or sent ahead) a task
        self._held: dict[int, _Task] = {}  # tasks the plane holds (not yet submitted)
        self._waiting: dict[int, _Task] = {}  # held tasks whose ref arguments are not done
        self._out: list[tuple[_Task, str]] = []  # placed in this round: to submit
        self._holds: dict[int, str | None] = {}  # actor holds (negative ids) being placed
        # the backend's lock: each side calls the other while holding its own, so two
        # locks would deadlock (cancel -> dequeue against a round's submit)
        self._lock = backend._lock
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._thread: threading.Thread | None = None

    # feasibility ------------------------------------------------------------
    def check_feasible(self, info: TaskInfo) -> None:
        """Raise ``InfeasibleRequestError`` when no worker (nor addable type) fits ``info``.

        Workers seen earlier in this session that are not connected now (a nanny
        restarting a crashed worker) still count: the request waits for them.
        """
        types = [nt.shape() for nt in self.node_types.values()]

        def shapes() -> list[tuple[str, Resources, dict[str, str]]]:
            return [*self.b.node_shapes(), *self.b.seen_shapes(), *types]

        if "memory" in info.request and not any("memory" in t for _, t, _ in shapes()):
            # workers do not declare memory (dask worker --resources memory=...): not checked
            req = {k: v for k, v in info.request.items() if k != "memory"}
            info = dataclasses.replace(info, request=Resources._trusted(req))
        why = self.plane.infeasible(info, shapes=shapes())
        if why is None:
            return
        try:
            self.b.refresh_workers()  # a worker may have joined since the last poll
        except Exception:  # noqa: BLE001 - scheduler slow: judge by what we know
            log.debug("refreshing workers for a feasibility check", exc_info=True)
        why = self.plane.infeasible(info, shapes=shapes())
        if why is not None:
            raise InfeasibleRequestError(why)

    def describe(self) -> dict[str, Any]:
        """Policy and autoscaler names for status views."""
        d: dict[str, Any] = {"workers": len(self.b._workers)}
        if self.policy is not None:
            d["policy"] = self.plane.policy_name
        if self.autoscaler is not None:
            d["autoscaler"] = getattr(self.autoscaler, "name", type(self.autoscaler).__name__)
        return d

    # lifecycle --------------------------------------------------------------
    def begin(self) -> None:
        """Index the workers and start the loop thread when a policy or an autoscaler
        needs it."""
        for node_id in sorted(self.b._workers):
            self.node_added(node_id)
        if self.policy is None and self.autoscaler is None:
            return
        self._thread = threading.Thread(target=self._loop, name="nbcluster-dask-control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop thread."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        next_scale = time.monotonic()
        while True:
            with self._wake:
                if self._stop:
                    return
                self._wake.wait(0.1 if self.policy is not None else self.interval)
                if self._stop:
                    return
            try:
                if self.policy is not None:
                    wait = self._last_placing + self.gap - time.monotonic()
                    if wait > 0:  # let more ends and submissions join this round
                        time.sleep(wait)
                    self._place()
                if self.autoscaler is not None and time.monotonic() >= next_scale:
                    next_scale = time.monotonic() + self.interval
                    self._autoscale()
            except Exception:  # noqa: BLE001 - keep deciding; the error is logged
                log.exception("dask backend control loop")

    def _poke(self) -> None:
        self.dirty = True
        with self._wake:
            self._wake.notify_all()

    # tasks held by the plane ---------------------------------------------------
    def enqueue(self, task: _Task) -> None:
        """Hand a task to the plane; it is placed once its ref arguments are done."""
        with self._lock:
            self._held[task.id] = task
            waits = any(isinstance(a, ObjectRef) for a in (*task.args, *task.kwargs.values()))
            if waits:
                self._waiting[task.id] = task
            self.plane.submit(task.info, ready=not waits)
        self._poke()

    def dequeue(self, task_id: int) -> None:
        """Forget a held task (cancelled or failed), also one sent ahead."""
        with self._lock:
            self._held.pop(task_id, None)
            self._waiting.pop(task_id, None)

    def observe(self, task: _Task, seconds: float) -> None:
        """Record how long a task of this shape ran (a moving mean per shape)."""
        if (self.prefetch or self.lookahead) and self.adaptive:
            shape = _shape(task.info)
            old = self._runtime.get(shape)
            self._runtime[shape] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def depth(self, shape: Any) -> int:
        """Tasks of ``shape`` sent ahead per running one: ``prefetch``, or with
        ``prefetch=True`` as many as cover ``PREFETCH_HORIZON`` seconds of the shape's
        mean run time (1 until one ended; at least 1, at most ``PREFETCH_MAX``)."""
        if not self.adaptive or not self.depth_max:
            return self.depth_max
        mean = self._runtime.get(shape)
        if mean is None:
            return 1
        return max(1, min(PREFETCH_MAX, math.ceil(PREFETCH_HORIZON / max(mean, 1e-6))))

    def _ready_inputs(self) -> None:
        """Held tasks whose ref arguments are all done join the plane's queue; one whose
        input failed fails without running."""
        for tid, task in list(self._waiting.items()):
            state = self._inputs(task)
            if state is None:
                continue
            del self._waiting[tid]
            if state is True:
                self.plane.ready(tid)
            else:
                self._held.pop(tid, None)
                self.b._fail(tid, state)

    def _inputs(self, task: _Task) -> bool | BaseException | None:
        """True when every ref argument has its value, its error when one failed, else
        None (not yet)."""
        for a in (*task.args, *task.kwargs.values()):
            if not isinstance(a, ObjectRef):
                continue
            err = self.b._errors.get(a.id)
            if err is not None:
                return err
            f = self.b._futs.get(a.id) or self.b._orphans.get(a.id)
            if f is None:
                if a.id in self.b._tasks:
                    return None  # held by the policy, or being moved
                f = self.b._future(a)  # made elsewhere (inside a task)
            if not f.done():
                if f.status == "lost":
                    self.requeue_lost([a.id])
                return None
            if f.status != "finished":
                return f.exception() if f.status == "error" else TaskCancelledError(
                    "dependency", f.key)
        return True

    def _place(self) -> None:
        """One round: inputs that became ready join the queue, the plane decides, and what
        it placed (or sent ahead) goes to dask, one ``client.map`` per worker."""
        with self._lock:
            if self._stop:
                return
            self.dirty = False
            if self._waiting:
                self._ready_inputs()
            if not self.plane.queue.count:
                return
            self.plane.schedule()
            placed, self._out = self._out, []
            if placed:
                self._last_placing = time.monotonic()
                self.b._submit_pinned(placed)

    def place_if_dirty(self) -> None:
        """Run a placement round when resources were freed since the last one: now, or
        (when the last round was under ``gap`` seconds ago) soon, on the control thread."""
        if self.dirty and self.policy is not None:
            if time.monotonic() - self._last_placing >= self.gap:
                self._place()
            else:
                self._poke()

    # the actuator: what the plane asks of this backend ---------------------------
    def start(self, task_id: int, node_id: str) -> None:
        """A placed task goes to dask pinned to that node's worker (after the round)."""
        if task_id in self._holds:
            self._holds[task_id] = node_id
            return
        self._submit_at(task_id, node_id)

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """A task queued behind a running one goes to that worker now: dask starts it the
        moment a thread (and the resources) free, without a round trip to us."""
        self._submit_at(task_id, node_id)

    def _submit_at(self, task_id: int, node_id: str) -> None:
        task = self._held.pop(task_id, None)
        addr = self.b._addr_of.get(node_id)
        if task is None:
            return
        if addr is None:  # the worker left during the round: it queues again
            self._held[task_id] = task
            self.plane.requeue(task_id, None)
            return
        task.placed = True
        self._out.append((task, addr))

    def preempt(self, task_id: int, reason: str) -> None:
        """Cancel the victim's attempt (its thread is interrupted, its result dropped) and
        queue it again under a new key: its ref then resolves to the new attempt."""
        task = self.b._tasks.get(task_id)
        if task is None or task.actor is not None or task_id in self.b._errors:
            return
        node = self.b._running.get(task_id, (None,))[0] or task.node
        addr = self.b._addr_of.get(node) if node else None
        self._unsubmit(task)
        if addr is not None:
            threading.Thread(target=self._interrupt, args=(task_id, addr), daemon=True,
                             name="nbcluster-dask-preempt").start()
        self.b._release_running(task_id)
        if task.attempts:
            task.attempts -= 1  # a preemption does not use up a retry
        self.plane.requeue(task_id, EventKind.TASK_READY)

    def _interrupt(self, task_id: int, addr: str) -> None:
        from runtime.backends.dask import _remote

        try:
            self.b.run_on_workers(_remote.interrupt_task, task_id, workers=[addr])
        except Exception:  # noqa: BLE001 - best effort: the attempt's result is dropped anyway
            log.debug("interrupting preempted task %s", task_id, exc_info=True)

    def resume(self, task_id: int) -> None:
        """Not used: a dask task's thread comes back by itself (``reacquire``)."""

    def fail(self, task_id: int, error: BaseException) -> None:
        """Fail a task the plane gave up on (it already published ``task_failed``)."""
        self._held.pop(task_id, None)
        self._waiting.pop(task_id, None)
        if task_id in self._holds:
            return
        self.b._fail(task_id, error, publish=False)

    def launch(self, node_type: NodeType, count: int) -> None:
        """Start ``count`` workers of ``node_type``; they are booting until they join."""
        if self.manager is None:
            return
        for name in self.manager.add(node_type.name, count):
            if name not in self.index:
                self.plane.add_node(name, node_type, "booting")

    def retire(self, node_id: str) -> None:
        """Retire a worker (gracefully: its data moves first); a booting one is dropped."""
        if self.manager is not None and node_id in set(self.manager.names()):
            self.manager.remove([node_id])
        if node_id in self.index and self.index.record(node_id).state == "booting":
            self.plane.remove_node(node_id, "launch cancelled")
        elif node_id in self.b._workers and node_id in self.index:
            self.plane.set_node_state(node_id, "draining", "retiring")

    # workers --------------------------------------------------------------------
    def node_added(self, node_id: str) -> None:
        """A worker joined (or one the autoscaler launched came up)."""
        entry = self.b._workers.get(node_id)
        if entry is None:
            return
        _, ntype, total, labels, state = entry
        with self._lock:
            nt = self.node_types.get(ntype)
            if node_id in self.index:
                rec = self.index.record(node_id)
                if rec.group.total_res == total and dict(rec.group.labels) == dict(labels):
                    if rec.state != state:
                        self.plane.set_node_state(node_id, state, "joined")
                    self._poke()
                    return
                self.plane.remove_node(node_id, "replaced by the worker that joined")
            self.plane.add_node(node_id, ntype, state, total=total, labels=labels,
                                cost_per_hour=nt.cost_per_hour if nt else 0.0)
        self._poke()

    def node_removed(self, node_id: str, lost: Sequence[int]) -> None:
        """A worker left: tasks placed or sent ahead there go back to the policy.

        ``lost`` are the tasks that were running there. Pinned tasks cannot move by
        themselves (dask keeps them waiting for that worker's address), so each is
        submitted again under a new key: one that never started silently, one that
        was running as a retry (counted once, also when the scheduler's
        remove-worker report counted it first), or failed with
        ``WorkerCrashedError`` once its retries are spent.
        """
        self._sweep_until = time.monotonic() + 30.0
        with self._lock:
            placed = self.plane.remove_node(node_id, "worker left")
            for tid in self.plane.recalled:  # sent ahead there: the plane queued them again
                task = self.b._tasks.get(tid)
                if task is not None and tid not in self.b._errors:
                    self._unsubmit(task)
            if self.policy is None:
                return
            ids = set(lost) | set(placed)
            for tid in sorted(ids):
                task = self.b._tasks.get(tid)
                fut = self.b._futs.get(tid)
                if task is None or task.actor is not None or tid in self.b._errors or (
                        fut is not None and fut.done() and fut.status == "finished"):
                    continue
                retry = None
                if task.attempts:  # it ran there
                    if task.deaths < task.attempts:  # not counted by _on_worker_removed
                        task.deaths = task.attempts
                        key = task_key(task.name, tid, self.b.session)
                        self.b._death_counted.add(f"{key}-r{task.extra}" if task.extra
                                                  else key)
                    if task.max_retries >= 0 and task.deaths >= task.max_retries + 1:
                        self.b._fail(tid, WorkerCrashedError(task.name, tid, task.deaths,
                                                             node_id,
                                                             "its worker left the cluster"))
                        continue
                    retry = task.deaths + 1
                self._move(task, EventKind.TASK_RETRIED if retry else EventKind.TASK_READY,
                           **({"attempt": retry, "reason": "worker left"} if retry else {}))
            # results kept only there are lost: dask reported it before this event
            lost_results = [tid for tid, f in list(self.b._futs.items())
                            if f.status == "lost"]
        if lost_results:
            self.requeue_lost(lost_results)
        self._poke()

    def _unsubmit(self, task: _Task) -> None:
        """Take back a task dask holds (its future is cancelled first, so a waiter follows
        the next attempt, which runs under a new key)."""
        with self.b._lock:  # first: a waiter must not take the cancel as final
            fut = self.b._futs.pop(task.id, None)
        if fut is not None:
            try:
                self.b.client.cancel([fut], force=True)
            except Exception:  # noqa: BLE001 - best effort
                pass
        task.extra += 1
        task.placed = False
        self._held[task.id] = task

    def _move(self, task: _Task, kind: str, **data: Any) -> None:
        """Submit ``task`` again, through the policy, under a new key."""
        self._unsubmit(task)
        if task.id in self.plane.tasks:
            self.plane.requeue(task.id, kind, **data)
        else:  # the plane dropped it with its node: it is submitted again
            self.plane.submit(task.info, ready=True)

    def sweep(self) -> None:
        """For a while after a worker left (polled): send again, through the policy, the
        placed tasks whose result is lost or that still wait for a worker that is gone
        (a safety net under the event-driven moves of :meth:`node_removed`)."""
        if self.policy is None or time.monotonic() > self._sweep_until:
            return
        live = set(self.b._addr_of.values())
        again = []
        with self._lock:
            for tid, task in list(self.b._tasks.items()):
                fut = self.b._futs.get(tid)
                if fut is None or not task.placed or task.actor is not None or \
                        tid in self.b._errors:
                    continue
                if fut.status == "lost" or (not fut.done() and task.addr is not None
                                            and task.addr not in live
                                            and tid not in self.b._running):
                    again.append(tid)
        if again:
            self.requeue_lost(again)

    def requeue_lost(self, task_ids: Sequence[int]) -> None:
        """Run again, through the policy, placed tasks whose result was lost with their
        worker (dask cannot recompute a key pinned to a worker that is gone), and the
        tasks placed after them that wait for it (they wait on the lost key)."""
        if self.policy is None:
            return
        with self._lock:
            todo, seen = list(task_ids), set()
            while todo:
                tid = todo.pop()
                if tid in seen:
                    continue
                seen.add(tid)
                task = self.b._tasks.get(tid)
                fut = self.b._futs.get(tid)
                if task is None or task.actor is not None or not task.placed or \
                        tid in self.b._errors or fut is None or fut.status == "finished":
                    continue
                if fut.status != "lost" and tid in self.b._running:
                    continue  # already running: it has its inputs
                todo += [d.id for d in self.b._tasks.values()
                         if d.placed and d.id not in seen and any(
                             isinstance(a, ObjectRef) and a.id == tid
                             for a in (*d.args, *d.kwargs.values()))]
                if any(isinstance(a, ObjectRef) for a in (*task.args, *task.kwargs.values())):
                    self._waiting[tid] = task  # its inputs may have to be recomputed too
                log.info("task %s (%s) runs again: %s", tid, task.name,
                         "its result was lost with its worker" if fut.status == "lost"
                         else "an input was lost with its worker")
                self._unsubmit(task)  # a lost key, or one waiting on a lost key
                # it starts over in the plane (queued at once unless it waits for inputs)
                self.plane.submit(task.info, ready=tid not in self._waiting, rerun=True)
        self._poke()

    # actors ------------------------------------------------------------------------
    def place_actor(self, info: TaskInfo) -> str | None:
        """Ask the policy (through the plane) for an actor's worker now and hold its
        request there (index id ``-actor id``) until :meth:`actor_gone`; None when there
        is no policy or no room now (dask then picks the worker and nothing is held)."""
        if self.policy is None:
            return None
        # its calls are tasks on its worker: hold at least one thread (CPU) when there
        # is room, so tasks placed later cannot take every thread the calls need
        req = info.request
        wants = [req + Resources({"CPU": 1.0 - req.get("CPU", 0.0)})] \
            if req.get("CPU", 0.0) < 1.0 else []
        with self._lock:
            self.plane.release(-info.id)  # a restart: the old place is gone
            for request in [*wants, req]:
                hold = dataclasses.replace(info, id=-info.id, request=request)
                self._holds[hold.id] = None
                self.plane.submit(hold, ready=False, preemptible=False, actor=info.id)
                self.plane.schedule([hold])
                node = self._holds.pop(hold.id, None)
                if node is not None:
                    self.plane.end(hold.id, None, node, keep=True)  # held until actor_gone
                    if node in self.b._addr_of:
                        return node
                    self.plane.release(hold.id)
                    return None
                if hold.id in self.plane.tasks:
                    self.plane.end(hold.id, None)
        return None

    def actor_gone(self, actor_id: int) -> None:
        """Give back what a dead or killed actor held."""
        if self.policy is not None:
            with self._lock:
                self.plane.release(-actor_id)
            self._poke()

    # autoscaling ------------------------------------------------------------
    def _unmet(self) -> list[TaskInfo]:
        """Without a policy: tasks dask has not started that fit no up worker now."""
        snap = [n for n in self.b.nodes() if n.state == "up"]
        out = []
        for tid, task in list(self.b._tasks.items()):
            if task.attempts or tid in self.b._running or tid in self.b._errors:
                continue
            if task.actor is not None:
                continue
            fut = self.b._futs.get(tid)
            if fut is None or fut.done():
                continue
            if self.b.now() - task.info.submitted_at < self.plane.grace:
                continue
            info = task.info
            if any(info.request.fits(n.free) and (info.accelerator_type is None
                                                  or n.accelerator_type == info.accelerator_type)
                   for n in snap):
                continue
            out.append(info)
        return sorted(out, key=lambda t: t.id)

    def _autoscale(self) -> None:
        unmet = None if self.policy is not None else self._unmet()
        with self._lock:
            self.plane.autoscale(unmet)

    def scale(self, node_type: str | None, count: int | None) -> None:
        """Set the number of workers of ``node_type`` by hand."""
        if self.manager is None:
            raise NotImplementedError("scaling needs a dask cluster manager: "
                                      "init(cluster=SpecCluster(...), node_types=[...])")
        with self._lock:
            self.plane.scale(node_type, count)

