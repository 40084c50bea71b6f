"""Who decides on dask: feasibility, the shared scheduling policy, and the autoscaler.

With no policy, dask's scheduler places tasks (the fast path). With a policy,
the backend holds tasks here until their top-level ref arguments are ready,
asks ``policy.schedule(pending, index)`` where the index is a
:class:`~runtime.policies.state.NodeIndex` of the workers (node = worker),
checks every decision with ``check_placement`` and submits the task pinned to
the chosen worker (``workers=[addr], allow_other_workers=False``). The
autoscaler (any ``AutoscalingPolicy``) is asked every ``interval`` seconds
about unmet demand; its decisions are applied to a dask cluster manager
(``SpecCluster`` / ``LocalCluster``) through :class:`SpecClusterManager`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runtime.autoscaling import NodeType, ScaleDecision, get_autoscaler
from runtime.backends.dask.common import ACCELERATOR_PREFIX, task_key
from runtime.cluster_spec import parse_nodes
from runtime.errors import (
    InfeasibleRequestError,
    PolicyError,
    TaskCancelledError,
    WorkerCrashedError,
)
from runtime.events import EventKind
from runtime.policies import NodeIndex, Place, Preempt, TaskInfo, check_placement
from runtime.policies import get_policy as _get_policy
from runtime.policies.base import check_feasible
from runtime.refs import ObjectRef
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.dask.backend import DaskBackend, _Task

__all__ = ["Control", "SpecClusterManager"]

log = logging.getLogger("runtime.backends.dask")


class SpecClusterManager:
    """Adds and retires workers of named node types on a dask ``SpecCluster``.

    Worker names are ``<node type>-<n>``; each worker gets ``nthreads`` = the
    type's CPU count and its other resources (and ``accelerator_type:<model>=1``)
    as dask worker resources.
    """

    def __init__(self, cluster: Any, node_types: Mapping[str, NodeType]) -> None:
        if not hasattr(cluster, "worker_spec") or not hasattr(cluster, "new_spec"):
            raise TypeError(f"cluster={cluster!r}: expected a dask SpecCluster or LocalCluster "
                            f"(an object with worker_spec and new_spec)")
        self.cluster = cluster
        self.node_types = node_types
        self._n = itertools.count(1)

    def spec_for(self, nt: NodeType, name: str) -> dict[str, Any]:
        """The dask worker spec of one node of type ``nt``."""
        base = dict(self.cluster.new_spec)
        options = dict(base.get("options") or {})
        res = {k: v for k, v in nt.resources.items() if k not in ("memory",)}
        if nt.accelerator_type:
            res[ACCELERATOR_PREFIX + nt.accelerator_type] = 1
        options.update(nthreads=max(int(nt.resources.get("CPU", 1)), 1), resources=res,
                       name=name)
        if "memory" in nt.resources:
            options["memory_limit"] = int(nt.resources["memory"])
        return {"cls": base.get("cls"), "options": options}

    def _apply(self, fn: Any) -> None:
        def run() -> Any:
            fn(self.cluster.worker_spec)
            return self.cluster._correct_state()

        self.cluster.loop.add_callback(run)

    def add(self, node_type: str, count: int) -> list[str]:
        """Start ``count`` workers of ``node_type``; returns their names."""
        nt = self.node_types[node_type]
        taken = set(map(str, self.cluster.worker_spec))  # the cluster may come with workers
        names: list[str] = []
        while len(names) < count:
            name = f"{node_type}-{next(self._n)}"
            if name not in taken:
                names.append(name)
        specs = {n: self.spec_for(nt, n) for n in names}
        self._apply(lambda ws: ws.update(specs))
        return names

    def remove(self, names: Sequence[str]) -> None:
        """Retire the named workers gracefully (their data moves first)."""
        names = list(names)
        self._apply(lambda ws: [ws.pop(n, None) for n in names])

    def names(self) -> list[str]:
        """Names of the workers the cluster should have (running or booting)."""
        return [str(n) for n in self.cluster.worker_spec]


#: Most tasks sent ahead per running task with ``prefetch=True`` (for very short tasks).
PREFETCH_MAX = 8
#: With ``prefetch=True``, enough tasks are sent ahead to cover this many seconds of a
#: shape's mean run time: about the round trip from a task's end to its successor's
#: arrival on the worker.
PREFETCH_HORIZON = 0.03


def _shape(info: TaskInfo) -> tuple[Resources, str | None]:
    """What makes two tasks interchangeable for a slot: request and accelerator type."""
    return (info.request, info.accelerator_type)


def _fifo(task: _Task) -> tuple[float, int]:
    return (task.info.submitted_at, task.id)


def _decrement(counter: collections.Counter[Any], key: Any) -> None:
    """Count one less of ``key``, dropping it at zero."""
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _unqueue(queues: dict[Any, collections.deque[_Task]], key: Any, task_id: int) -> None:
    """Remove task ``task_id`` from ``queues[key]``, dropping the queue once empty."""
    q = queues.get(key)
    if q is None:
        return
    for t in q:
        if t.id == task_id:
            q.remove(t)
            break
    if not q:
        del queues[key]


class Control:
    """Feasibility checks, the policy placement loop and the autoscaler loop of one backend."""

    def __init__(self, backend: DaskBackend, *, policy: Any = None, autoscaler: Any = None,
                 node_types: Any = None, interval: float = 1.0, window: int = 256,
                 prefetch: int | bool = True) -> None:
        self.b = backend
        self.policy = _get_policy(policy) if policy is not None else None
        if not isinstance(prefetch, int) or (not isinstance(prefetch, bool) and prefetch < 0):
            raise ValueError(f"prefetch={prefetch!r}: expected True (adaptive), False, or "
                             f"how many tasks to send ahead per running task (an int >= 0)")
        #: most tasks sent ahead per placed task (0: off); only for policies whose choice
        #: depends on shape and order alone (``greedy_by_shape``: fifo, best_fit, spread).
        #: ``True`` adapts it per shape to the tasks' run time (see :meth:`depth`).
        self.depth_max = PREFETCH_MAX if prefetch is True else int(prefetch)
        self.prefetch = self.depth_max if getattr(self.policy, "greedy_by_shape", False) else 0
        self.adaptive = prefetch is True
        #: other policies whose ``schedule`` has no side effects (``lookahead_safe``)
        #: choose one task to queue behind each running one (see :meth:`_lookahead`)
        self.lookahead = bool(prefetch) and not self.prefetch and \
            bool(getattr(self.policy, "lookahead_safe", False))
        self._behind: dict[int, collections.deque[_Task]] = {}  # running task -> queued
        self._behind_of: dict[int, int] = {}  # task queued behind -> that running task
        self._runtime: dict[Any, float] = {}  # shape -> mean run time (EWMA), seconds
        self._alloc: dict[int, tuple[str, Any]] = {}  # placed task -> (node, shape)
        self._slots: collections.Counter[tuple[str, Any]] = collections.Counter()
        self._ahead: dict[tuple[str, Any], collections.deque[_Task]] = {}
        self._ahead_of: dict[int, tuple[str, Any]] = {}  # task sent ahead -> (node, shape)
        self._greedy = bool(getattr(self.policy, "greedy_by_shape", False))
        self._shape_count: collections.Counter[tuple[Resources, str | None]] = \
            collections.Counter()  # pending tasks by shape
        self.autoscaler = get_autoscaler(autoscaler) if autoscaler is not None else None
        self.node_types: dict[str, NodeType] = {}
        if node_types:
            for g in parse_nodes(list(node_types)):
                self.node_types[g.node_type.name] = g.node_type
        cluster = backend._cluster
        self.manager = (SpecClusterManager(cluster, self.node_types)
                        if cluster is not None and hasattr(cluster, "worker_spec") else None)
        if self.autoscaler is not None and self.manager is None:
            raise TypeError("autoscaler= needs a dask cluster manager: pass cluster=SpecCluster(...) "
                            "or LocalCluster(...), or init(cluster_object, ...)")
        if self.autoscaler is not None and not self.node_types:
            raise ValueError("autoscaler= needs node_types=[...] (the kinds of worker it may add)")
        self.interval = interval
        self.window = window
        self.dirty = False
        self.grace = 0.3  # seconds a task may wait before it counts as unmet demand
        #: least seconds after a round that placed tasks before the next one: a burst
        #: of ends and submissions becomes one round and one message per worker
        self.gap = 0.01 if (self.prefetch or self.lookahead) else 0.003
        self._sweep_until = 0.0  # sweep() looks for stuck tasks until then
        self._last_placing = 0.0  # when a round last placed (or sent ahead) a task
        self.index = NodeIndex(clock=backend.now)
        self._pending: dict[int, _Task] = {}
        self._unplaced_since: dict[int, float] = {}
        self._booting: dict[str, tuple[str, float]] = {}
        self._last_decision: tuple[Any, ...] | None = None
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
        # declared node types count: a cluster manager, or a person, can add such a worker
        types = [nt.shape() for nt in self.node_types.values()]

        def shapes() -> list[tuple[str, Resources, dict[str, str]]]:
            return [*self.b.node_shapes(), *self.b.seen_shapes()]

        if "memory" in info.request and not any(
                "memory" in t for _, t, _ in [*shapes(), *types]):
            # workers do not declare memory (dask worker --resources memory=...): not checked
            req = {k: v for k, v in info.request.items() if k != "memory"}
            info = dataclasses.replace(info, request=Resources._trusted(req))
        try:
            check_feasible(info, shapes(), types)
        except InfeasibleRequestError:
            try:
                self.b.refresh_workers()  # a worker may have joined since the last poll
            except Exception:  # noqa: BLE001 - scheduler slow: judge by what we know
                log.debug("refreshing workers for a feasibility check", exc_info=True)
            check_feasible(info, shapes(), types)

    def describe(self) -> dict[str, Any]:
        """Policy and autoscaler names for status views."""
        d: dict[str, Any] = {"workers": len(self.b._workers)}
        if self.policy is not None:
            d["policy"] = getattr(self.policy, "name", type(self.policy).__name__)
        if self.autoscaler is not None:
            d["autoscaler"] = getattr(self.autoscaler, "name", type(self.autoscaler).__name__)
        return d

    # lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread when a policy or an autoscaler needs it."""
        if self.policy is None and self.autoscaler is None:
            return
        if self.policy is not None:
            for node_id in sorted(self.b._workers):
                self.node_added(node_id)
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
        with self._wake:
            self._wake.notify_all()

    # placement --------------------------------------------------------------
    def enqueue(self, task: _Task) -> None:
        """Hold a task until the policy places it."""
        with self._lock:
            self._pend(task)
        self._poke()

    def _pend(self, task: _Task) -> None:
        self._pending[task.id] = task
        self._shape_count[_shape(task.info)] += 1

    def dequeue(self, task_id: int) -> None:
        """Forget a held task (cancelled, failed, or placed), also one sent ahead."""
        with self._lock:
            task = self._pending.pop(task_id, None)
            if task is not None:
                _decrement(self._shape_count, _shape(task.info))
            self._unplaced_since.pop(task_id, None)
            run = self._behind_of.pop(task_id, None)
            if run is not None:
                _unqueue(self._behind, run, task_id)
            key = self._ahead_of.pop(task_id, None)
            if key is not None:
                _unqueue(self._ahead, key, task_id)

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

    def _allocate(self, task: _Task, node: str) -> None:
        self.index.allocate(task.info, node)
        key = (node, _shape(task.info))
        self._alloc[task.id] = key
        self._slots[key] += 1

    def task_ended(self, task_id: int) -> None:
        """A task finished or failed (or gave up its slot before it started): give its
        resources back to the index; the task queued behind it, or sent ahead to the
        same worker with the same shape, takes the freed slot at once.

        The backend's event thread calls :meth:`place_if_dirty` once it has drained
        its queue, so a burst of ends makes one placement round, without a thread hop.
        """
        if self.policy is None:
            return
        with self._lock:
            if task_id in self._ahead_of or task_id in self._behind_of:
                self.dequeue(task_id)  # ran in a slot another task's end freed
                self.dirty = True
                return
            node = self.index.release(task_id)
            if node is None:
                return
            self.dirty = True
            queue = self._behind.pop(task_id, None)
            if queue:  # the first task queued behind it takes its place, and the rest
                nxt = queue.popleft()
                del self._behind_of[nxt.id]
                if node in self.index and nxt.info.request.fits(self.index.node(node).free):
                    self._allocate(nxt, node)
                if queue:
                    self._behind[nxt.id] = queue
                    for t in queue:
                        self._behind_of[t.id] = nxt.id
            key = self._alloc.pop(task_id, None)
            if key is None:
                return
            _decrement(self._slots, key)
            q = self._ahead.get(key)
            if q:
                nxt = q.popleft()
                del self._ahead_of[nxt.id]
                self._allocate(nxt, key[0])

    def place_if_dirty(self) -> None:
        """Run a placement round when resources were freed since the last one: now, or
        (when the last round was under ``gap`` seconds ago) soon, on the control thread."""
        if self.dirty and self.policy is not None:
            if time.monotonic() - self._last_placing >= self.gap:
                self._place()
            else:
                self._poke()

    def node_added(self, node_id: str) -> None:
        """A worker joined."""
        self._booting.pop(node_id, None)
        if self.policy is None:
            return
        entry = self.b._workers.get(node_id)
        if entry is None:
            return
        _, ntype, total, labels, state = entry
        with self._lock:
            if node_id not in self.index:
                nt = self.node_types.get(ntype)
                self.index.add_node(node_id, ntype, total, labels, "up",
                                    nt.cost_per_hour if nt else 0.0)
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
        if self.policy is None:
            return
        self._sweep_until = time.monotonic() + 30.0
        with self._lock:
            ids = set(lost)
            if node_id in self.index:
                ids.update(self.index.remove_node(node_id))
            for key in [k for k in self._ahead if k[0] == node_id]:
                ids.update(t.id for t in self._ahead.pop(key))
            for key in [k for k in self._slots if k[0] == node_id]:
                del self._slots[key]
            for run in [r for r in ids if r in self._behind]:
                ids.update(t.id for t in self._behind[run])
            for tid in ids:
                self._alloc.pop(tid, None)
                self._ahead_of.pop(tid, None)
                self._behind.pop(tid, None)
                self._behind_of.pop(tid, None)
            for tid in sorted(ids):
                task = self.b._tasks.get(tid)
                fut = self.b._futs.get(tid)
                if task is None or task.actor is not None or tid in self.b._errors or (
                        fut is not None and fut.done() and fut.status == "finished"):
                    continue
                if task.attempts:  # it ran there
                    if task.deaths < task.attempts:  # not counted by _on_worker_removed
                        task.deaths = task.attempts
                        key = task_key(task.name, tid, self.b.session)
                        self.b._death_counted.add(f"{key}-r{task.extra}" if task.extra
                                                  else key)
                        if task.max_retries < 0 or task.deaths < task.max_retries + 1:
                            self.b.events.emit(self.b.now(), EventKind.TASK_RETRIED, tid,
                                               node_id, attempt=task.deaths + 1,
                                               reason="worker left")
                    if task.max_retries >= 0 and task.deaths >= task.max_retries + 1:
                        self.b._fail(tid, WorkerCrashedError(task.name, tid, task.deaths,
                                                             node_id,
                                                             "its worker left the cluster"))
                        continue
                with self.b._lock:  # first: a waiter must not take the cancel as final
                    self.b._futs.pop(tid, None)
                if fut is not None:
                    try:
                        self.b.client.cancel([fut], force=True)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                task.extra += 1
                task.placed = False
                self._pend(task)
            # results kept only there are lost: dask reported it before this event
            lost_results = [tid for tid, f in list(self.b._futs.items())
                            if f.status == "lost"]
        if lost_results:
            self.requeue_lost(lost_results)
        self._poke()

    def _ready(self, task: _Task) -> bool:
        """Whether every ref argument has its value (a failed one fails ``task``)."""
        for a in (*task.args, *task.kwargs.values()):
            if not isinstance(a, ObjectRef):
                continue
            err = self.b._errors.get(a.id)
            if err is not None:
                self.dequeue(task.id)
                self.b._fail(task.id, err)
                return False
            f = self.b._futs.get(a.id) or self.b._orphans.get(a.id)
            if f is None:
                if a.id in self.b._tasks:
                    return False  # held by the policy, or being moved
                f = self.b._future(a)  # made elsewhere (inside a task)
            if not f.done():
                if f.status == "lost":
                    self.requeue_lost([a.id])
                return False
            if f.status != "finished":
                err = f.exception() if f.status == "error" else TaskCancelledError(
                    "dependency", f.key)
                self.dequeue(task.id)
                self.b._fail(task.id, err)
                return False
        return True

    def place_actor(self, info: TaskInfo) -> str | None:
        """Ask the policy for an actor's worker now and hold its request there (index id
        ``-actor id``) until :meth:`actor_gone`; None when there is no policy or no
        room now (dask then picks the worker and nothing is held)."""
        if self.policy is None:
            return None
        # its calls are tasks on its worker: hold at least one thread (CPU) when there
        # is room, so tasks placed later cannot take every thread the calls need
        req = info.request
        wants = [req + Resources({"CPU": 1.0 - req.get("CPU", 0.0)})] \
            if req.get("CPU", 0.0) < 1.0 else []
        with self._lock:
            self.index.release(-info.id)  # a restart: the old place is gone
            for request in [*wants, req]:
                hold = dataclasses.replace(info, id=-info.id, request=request)
                try:
                    decisions = list(self.policy.schedule([hold], self.index))
                except Exception:  # noqa: BLE001 - a policy that cannot place actors
                    log.warning("policy %s failed to place actor %s", self.policy,
                                info.name, exc_info=True)
                    return None
                for d in decisions:
                    if isinstance(d, Place) and d.task == hold.id and \
                            d.node in self.b._addr_of:
                        try:
                            check_placement(self.policy, hold, d.node, self.index)
                        except PolicyError:
                            return None
                        self.index.allocate(hold, d.node)
                        return d.node
        return None

    def actor_gone(self, actor_id: int) -> None:
        """Give back what a dead or killed actor held."""
        if self.policy is not None:
            with self._lock:
                if self.index.release(-actor_id) is not None:
                    self.dirty = True
            self._poke()

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
                with self.b._lock:  # first: a waiter must not take the cancel as final
                    self.b._futs.pop(tid, None)
                if fut.status != "lost":  # waiting on the lost key: give its slot back
                    self._unplace(tid)
                    try:
                        self.b.client.cancel([fut], force=True)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                task.extra += 1
                task.placed = False
                self._pend(task)
                log.info("task %s (%s) runs again: %s", tid, task.name,
                         "its result was lost with its worker" if fut.status == "lost"
                         else "an input was lost with its worker")
        self._poke()

    def _unplace(self, task_id: int) -> None:
        """Give back the slot (or the place ahead) of a task that has not started: the
        same as its end (what is queued behind it will start in its place)."""
        self.task_ended(task_id)

    def _place(self) -> None:
        with self._lock:
            if self._stop:
                return
            self.dirty = False
            if not self._pending:
                return
            ready = self._candidates()
            if not ready:
                return
            infos = [t.info for t in ready]
            decisions = list(self.policy.schedule(infos, self.index))
            by_id = {t.id: t for t in ready}
            now = time.monotonic()
            placed: list[tuple[_Task, str]] = []
            for d in decisions:
                if isinstance(d, Preempt):
                    log.warning("policy %s asked to preempt task %s: the dask backend cannot "
                                "preempt running tasks; ignored", self.policy, d.task)
                    continue
                if not isinstance(d, Place):
                    raise PolicyError(f"policy {self.policy!r} returned {d!r}, not Place/Preempt")
                task = by_id.pop(d.task, None)
                if task is None:
                    log.warning("policy %s placed unknown or already placed task %s",
                                self.policy, d.task)
                    continue
                try:
                    check_placement(self.policy, task.info, d.node, self.index)
                except PolicyError as exc:
                    self.dequeue(task.id)
                    self.b._fail(task.id, exc)
                    continue
                self._allocate(task, d.node)
                self.dequeue(task.id)
                task.placed = True
                placed.append((task, self.b._addr_of[d.node]))
            if self.prefetch and by_id:
                self._send_ahead(sorted(by_id.values(), key=_fifo), placed)
            elif self.lookahead and by_id:
                self._lookahead(sorted(by_id.values(), key=_fifo), placed)
            if placed:
                self._last_placing = time.monotonic()
            self.b._submit_pinned(placed)
            for t in by_id.values():
                if t.id in self._pending:
                    self._unplaced_since.setdefault(t.id, now)

    def _candidates(self) -> list[_Task]:
        """The ready tasks shown to the policy this round, oldest first.

        Any policy sees at most ``window`` tasks. A ``greedy_by_shape`` policy places
        tasks of one shape in order until one does not fit, so it is shown, per shape,
        only as many as could fit in what is free (plus those that may be sent ahead):
        a round costs what it can place, not the length of the queue.
        """
        quota: dict[Any, int] | None = None
        if self._greedy:
            avail = self.index.available()
            quota = {}
            for shape in self._shape_count:
                req = shape[0]
                fit = min((int(avail.get(k, 0.0) / v + 1e-9) for k, v in req.items() if v > 0),
                          default=self.window)
                ahead = 0
                if self.prefetch:
                    slots = sum(n for (_, s), n in self._slots.items() if s == shape)
                    queued = sum(len(q) for (_, s), q in self._ahead.items() if s == shape)
                    ahead = max((slots + fit) * self.depth(shape) - queued, 0)
                quota[shape] = min(fit + ahead, self._shape_count[shape])
            left = sum(quota.values())
            if left == 0:
                return []
        ready: list[_Task] = []
        for t in list(self._pending.values()):
            if quota is not None:
                shape = _shape(t.info)
                if quota.get(shape, 0) <= 0:
                    continue
            if self._ready(t):
                ready.append(t)
                if len(ready) >= self.window:
                    break
                if quota is not None:
                    quota[shape] -= 1
                    left -= 1
                    if left <= 0:
                        break
        return ready

    def _lookahead(self, waiting: list[_Task], placed: list[tuple[_Task, str]]) -> None:
        """Ask a ``lookahead_safe`` policy which waiting task it would start where a
        running task ends, and queue that task behind it on its worker.

        The policy sees a copy of the index in which every placed task with room
        behind it (fewer queued than :meth:`depth`) has ended, with what is queued
        behind it (actors' holds stay). Each of its placements goes behind one such
        task on that node (one of the same shape, with the shortest queue, first);
        a queued task takes the slot when the task before it ends. Only policies
        whose ``schedule`` has no side effects may be asked about such a future.
        """
        def room(r: int) -> bool:
            return len(self._behind.get(r, ())) < self.depth(self._alloc[r][1])

        ends = [t for t in self._alloc if room(t)]
        if not ends:
            return
        ending = set(ends)
        virt = NodeIndex(clock=self.b.now)
        for n in self.index.nodes():
            virt.add_node(n.id, n.node_type, n.total, n.labels, n.state, n.cost_per_hour)
        for info in self.index.running():
            if info.id not in ending:
                virt.allocate(info, self.index.placement_of(info.id))
        by_id = {t.id: t for t in waiting}
        taken: set[int] = set()  # one new task behind each running task per round
        for d in self.policy.schedule([t.info for t in waiting], virt):
            task = by_id.pop(d.task, None) if isinstance(d, Place) else None
            if task is None or d.node not in self.b._addr_of:
                continue
            on_node = [r for r in ends if r not in taken and self._alloc[r][0] == d.node]
            if not on_node:
                continue
            shape = _shape(task.info)
            run = min(on_node, key=lambda r: (self._alloc[r][1] != shape,
                                              len(self._behind.get(r, ())), r))
            taken.add(run)
            self.dequeue(task.id)
            self._behind.setdefault(run, collections.deque()).append(task)
            self._behind_of[task.id] = run
            task.placed = True
            placed.append((task, self.b._addr_of[d.node]))

    def _send_ahead(self, waiting: list[_Task], placed: list[tuple[_Task, str]]) -> None:
        """Send ready tasks that found no room to a worker running tasks of their shape,
        up to ``prefetch`` per such task, oldest first (appended to ``placed``): dask
        queues them on the worker,
        which starts one the moment a thread frees, without a round trip to us.

        For a ``greedy_by_shape`` policy this is where the policy would put the task
        when that slot frees (no other node fits that shape now, or it would have been
        placed). It stops at the first task that cannot go ahead, so no task overtakes
        an older one of another shape.
        """
        for task in waiting:
            shape = _shape(task.info)
            depth = self.depth(shape)
            best: tuple[float, str] | None = None
            for (node, s), n in self._slots.items():
                if s != shape or node not in self.b._addr_of or node not in self.index:
                    continue
                if self.index.node(node).state != "up":
                    continue
                queued = len(self._ahead.get((node, s), ()))
                if queued < n * depth and (best is None or (queued / n, node) < best):
                    best = (queued / n, node)
            if best is None:
                return
            key = (best[1], shape)
            self.dequeue(task.id)
            self._ahead.setdefault(key, collections.deque()).append(task)
            self._ahead_of[task.id] = key
            task.placed = True
            placed.append((task, self.b._addr_of[best[1]]))

    # autoscaling ------------------------------------------------------------
    def _unmet(self) -> list[TaskInfo]:
        now = time.monotonic()
        if self.policy is not None:
            with self._lock:
                return [self._pending[t].info for t, since in sorted(self._unplaced_since.items())
                        if t in self._pending and now - since >= self.grace]
        snap = {n.id: n for n in self.b.nodes() if n.state == "up"}
        out = []
        for tid, task in list(self.b._tasks.items()):
            if task.attempts or tid in self.b._running or tid in self.b._errors:
                continue
            if task.actor is not None:
                continue
            fut = self.b._futs.get(tid)
            if fut is None or fut.done():
                continue
            if self.b.now() - task.info.submitted_at < self.grace:
                continue
            info = task.info
            if any(info.request.fits(n.free) and (info.accelerator_type is None
                                                  or n.accelerator_type == info.accelerator_type)
                   for n in snap.values()):
                continue
            out.append(info)
        return out

    def snapshot(self) -> NodeIndex:
        """A ClusterState of the workers now (free from running tasks) plus booting ones."""
        idx = NodeIndex(clock=self.b.now)
        for n in self.b.nodes():
            nt = self.node_types.get(n.node_type)
            idx.add_node(n.id, n.node_type, n.total, n.labels, n.state,
                         nt.cost_per_hour if nt else 0.0)
            used = {k: v - n.free.get(k, 0.0) for k, v in n.total.items()}
            if any(v > 0 for v in used.values()):
                idx.allocate(TaskInfo(-1 - len(idx), "busy", n.total), n.id, used)
        if self.manager is not None:
            for name in self.manager.names():
                if name in idx:
                    continue
                ntype = re.sub(r"-\d+$", "", name)
                nt = self.node_types.get(ntype)
                if nt is not None:
                    idx.add_node(name, ntype, nt.resources, nt.labels, "booting",
                                 nt.cost_per_hour)
        return idx

    def _autoscale(self) -> None:
        unmet = self._unmet()
        cluster = self.snapshot()
        decision = self.autoscaler.decide(unmet, cluster, self.node_types)
        if not isinstance(decision, ScaleDecision):
            raise PolicyError(f"autoscaler {self.autoscaler!r} returned {decision!r}, "
                              f"not a ScaleDecision")
        self.apply(decision)

    def apply(self, decision: ScaleDecision) -> None:
        """Enact a scale decision on the cluster manager (and publish it)."""
        for ntype in decision.add:
            if ntype not in self.node_types:
                raise PolicyError(f"autoscaler {self.autoscaler!r} asked for unknown node type "
                                  f"{ntype!r}; known: {', '.join(sorted(self.node_types))}")
        key = (tuple(sorted(decision.add.items())), tuple(decision.remove),
               tuple(decision.infeasible))
        if decision.empty and not decision.infeasible:
            self._last_decision = None
            return
        if key != self._last_decision or not decision.empty:
            self.b.events.emit(self.b.now(), EventKind.SCALE_DECISION, None, None,
                               add=dict(decision.add), remove=list(decision.remove),
                               infeasible=list(decision.infeasible), reason=decision.reason)
        self._last_decision = key
        for ntype, count in sorted(decision.add.items()):
            if count > 0:
                for name in self.manager.add(ntype, count):
                    self._booting[name] = (ntype, time.monotonic())
        if decision.remove:
            known = set(self.manager.names())
            self.manager.remove([n for n in decision.remove if n in known])
            for n in decision.remove:
                if n in self.b._workers:
                    self.b.events.emit(self.b.now(), EventKind.NODE_STATE, None, n,
                                       state="draining")

    def scale(self, node_type: str | None, count: int | None) -> None:
        """Set the number of workers of ``node_type`` by hand."""
        if self.manager is None:
            raise NotImplementedError("scaling needs a dask cluster manager: "
                                      "init(cluster=SpecCluster(...), node_types=[...])")
        if node_type is None:
            if len(self.node_types) != 1:
                raise ValueError(f"node_type=None: name one of "
                                 f"{', '.join(sorted(self.node_types)) or '(no node types)'}")
            node_type = next(iter(self.node_types))
        if node_type not in self.node_types:
            raise ValueError(f"node_type={node_type!r}: expected one of "
                             f"{', '.join(sorted(self.node_types))}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r}: expected an int >= 0")
        mine = [n for n in self.manager.names() if re.sub(r"-\d+$", "", n) == node_type]
        if count > len(mine):
            self.apply(ScaleDecision(add={node_type: count - len(mine)}, reason="scale by hand"))
        elif count < len(mine):
            drop = sorted(mine, key=lambda n: int(n.rsplit("-", 1)[1]) if n.rsplit("-", 1)[-1]
                          .isdigit() else 0)[count:]
            self.apply(ScaleDecision(remove=drop, reason="scale by hand"))
