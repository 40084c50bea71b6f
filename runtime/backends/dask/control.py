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

import dataclasses
import itertools
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from distributed import Future

from runtime.autoscaling import NodeType, ScaleDecision, get_autoscaler
from runtime.backends.dask.common import ACCELERATOR_PREFIX
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


class Control:
    """Feasibility checks, the policy placement loop and the autoscaler loop of one backend."""

    def __init__(self, backend: DaskBackend, *, policy: Any = None, autoscaler: Any = None,
                 node_types: Any = None, interval: float = 1.0, window: int = 256) -> None:
        self.b = backend
        self.policy = _get_policy(policy) if policy is not None else None
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
        self.index = NodeIndex(clock=backend.now)
        self._pending: dict[int, _Task] = {}
        self._unplaced_since: dict[int, float] = {}
        self._booting: dict[str, tuple[str, float]] = {}
        self._last_decision: tuple[Any, ...] | None = None
        self._lock = threading.RLock()
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
            self._pending[task.id] = task
        self._poke()

    def dequeue(self, task_id: int) -> None:
        """Forget a held task (cancelled)."""
        with self._lock:
            self._pending.pop(task_id, None)
            self._unplaced_since.pop(task_id, None)

    def task_ended(self, task_id: int) -> None:
        """A task finished or failed: give its resources back to the index.

        The backend's event thread calls :meth:`place_if_dirty` once it has drained
        its queue, so a burst of ends makes one placement round, without a thread hop.
        """
        if self.policy is not None:
            with self._lock:
                if self.index.release(task_id) is not None:
                    self.dirty = True

    def place_if_dirty(self) -> None:
        """Run a placement round when resources were freed since the last one."""
        if self.dirty and self.policy is not None:
            self._place()

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
        """A worker left: tasks placed there go back to the policy (or fail)."""
        if self.policy is None:
            return
        with self._lock:
            lost_ids = self.index.remove_node(node_id) if node_id in self.index else []
            for tid in lost_ids:
                task = self.b._tasks.get(tid)
                fut = self.b._futs.get(tid)
                if task is None or tid in self.b._errors or (fut is not None and fut.done()
                                                              and fut.status == "finished"):
                    continue
                attempts = max(task.attempts, 1)
                if task.max_retries >= 0 and attempts >= task.max_retries + 1:
                    self.b._fail(tid, WorkerCrashedError(task.name, tid, attempts, node_id,
                                                         "its worker left the cluster"))
                    continue
                if fut is not None:
                    try:
                        self.b.client.cancel([fut], force=True)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                with self.b._lock:
                    self.b._futs.pop(tid, None)
                task.extra += 1
                task.placed = False
                self._pending[tid] = task
                self.b.events.emit(self.b.now(), EventKind.TASK_RETRIED, tid, node_id,
                                   attempt=attempts + 1, reason="worker left")
        self._poke()

    def _ready(self, task: _Task) -> bool:
        deps = [a for a in (*task.args, *task.kwargs.values()) if isinstance(a, Future)]
        for f in deps:
            if not f.done():
                return False
            if f.status != "finished":
                err = f.exception() if f.status == "error" else TaskCancelledError(
                    "dependency", f.key)
                self.dequeue(task.id)
                self.b._fail(task.id, err)
                return False
        return True

    def _place(self) -> None:
        with self._lock:
            self.dirty = False
            if not self._pending:
                return
            ready = []
            for t in list(self._pending.values()):
                if self._ready(t):
                    ready.append(t)
                    if len(ready) >= self.window:
                        break
            if not ready:
                return
            infos = [t.info for t in ready]
            decisions = list(self.policy.schedule(infos, self.index))
            by_id = {t.id: t for t in ready}
            now = time.monotonic()
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
                self.index.allocate(task.info, d.node)
                self.dequeue(task.id)
                task.placed = True
                self.b._submit_to_dask(task, workers=[self.b._addr_of[d.node]])
            for t in by_id.values():
                self._unplaced_since.setdefault(t.id, now)

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
