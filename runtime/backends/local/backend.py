"""The local backend's driver: scheduling, the object table, and the one reader thread.

Who does what:
- the *submitting thread* (user code) registers a task and, when a slot is free,
  places and sends it at once (no hop through another thread);
- the *reader thread* waits on every worker connection with
  ``multiprocessing.connection.wait``, folds results in, answers nested requests,
  notices a dead worker at once (its pipe closes) and dispatches the next tasks;
- both mutate state only under ``self._lock``.
Deciding is the control plane's (:class:`runtime.control.ControlPlane`): the index,
the pending queue, the decision round and the scale planner; this backend is its
:class:`~runtime.control.Actuator` (it starts tasks on workers, kills preempted
ones, adds and removes virtual nodes) and reports what happens back to it.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import cloudpickle

from runtime import refs as _refs
from runtime.backends.base import ActorSpec, Backend, TaskSpec
from runtime.backends.local import store
from runtime.backends.local.actors import ActorsMixin
from runtime.backends.local.capped import CappedPoolMixin
from runtime.backends.local.nested import NestedMixin
from runtime.backends.local.objects import _ERR, _OK, _PENDING, ObjectsMixin, _Obj
from runtime.backends.local.pool import WorkerProc, spawn_worker
from runtime.backends.local.protocol import error_from_record, sys_error_record
from runtime.backends.local.reader import ReaderMixin
from runtime.backends.local.records import ON_WORKER, OVER, _Task
from runtime.backends.local.scaling import ScalingMixin
from runtime.cluster import NodeInfo, NodeType, TaskInfo, node_types_by_name, parse_nodes
from runtime.control import ControlPlane
from runtime.errors import (
    InfeasibleRequestError,
    ObjectLostError,
    RuntimeShutdownError,
)
from runtime.events import EventKind as K
from runtime.refs import ObjectRef
from runtime.resources import EPSILON
from runtime.serialization import check_call_args

__all__ = ["LocalBackend"]

_EMPTY_ARGS = store.serialize(((), {}), 0)
_WINDOW_CAP = 256  # most tasks of one pending group shown to the policy per round


class LocalBackend(ReaderMixin, ObjectsMixin, NestedMixin, ActorsMixin, ScalingMixin,
                   CappedPoolMixin, Backend):
    """Worker processes on this machine, one or several virtual nodes, no server."""

    kind = "local"

    def __init__(self, *, num_cpus: float | None = None, num_gpus: float | None = None,
                 resources: Any = None, nodes: Any = None, policy: Any = None,
                 autoscaler: Any = None, node_types: Any = None, speeds: Any = None,
                 prefetch: bool = True, shm_dir: str | None = None, shm_size: Any = None,
                 spill_dir: str | None = None, max_workers: int | None = None) -> None:
        super().__init__()
        self._init_pool(max_workers)  # checked first: a bad value starts nothing
        groups = parse_nodes(nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)
        self._init_objects(shm_dir, shm_size, spill_dir)  # object store; sweeps crashed drivers
        self._node_types = node_types_by_name(groups, node_types or ())
        self._t0 = time.monotonic()
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._again = False
        #: the control plane: index, queue, decision rounds, scale planner
        self.plane = ControlPlane(
            "fifo" if policy is None else policy, autoscaler, actuator=self,
            node_types=self._node_types.values(),
            speeds=speeds, emit=self._publish, clock=self.now, window=_WINDOW_CAP,
            send_ahead=(lambda shape: 1) if prefetch else None, wake=self._round_due)
        self.policy = self.plane.policy
        self.autoscaler = self.plane.autoscaler
        self.index = self.plane.index
        self._closed = False
        self._objs: dict[int, _Obj] = {}
        self._tasks: dict[int, _Task] = {}  # not yet done (any state)
        self._idle: dict[str, list[WorkerProc]] = {}
        self._workers: dict[Any, WorkerProc] = {}  # by connection
        self._fn_by_obj: dict[int, tuple[Any, int, bytes]] = {}
        self._fn_bytes: dict[int, bytes] = {}
        self._fn_by_bytes: dict[bytes, int] = {}
        self._fn_ids = itertools.count(1)
        self._rc_q: collections.deque[int] = collections.deque()
        self._node_seq: dict[str, int] = {}
        self._segments: set[str] = set()
        self._children: dict[int, list[int]] = {}  # nested submits, by parent task id
        self._dirty = False  # the reader schedules once per wake-up when set
        #: Internal errors the reader thread survived (for debugging; should stay empty).
        self.errors: list[BaseException] = []
        self._init_actors()
        self._init_scaling()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        for g in groups:
            for _ in range(g.count):
                self._add_node(g)
        self._reader = threading.Thread(target=self._read_loop, name="nbcluster-local-reader",
                                        daemon=True)
        self._reader.start()
        _refs._pickle_hook = self._escaped

    # ------------------------------------------------------------------ nodes
    def _publish(self, kind: str, task: int | None, node: str | None, **data: Any) -> None:
        """Where the control plane's events go: this backend's bus, stamped now."""
        self.events.emit(self.plane.index.now, kind, task, node, **data)

    def _round_due(self) -> None:
        self._again = True

    def _add_node(self, nt: NodeType) -> str:
        i = self._node_seq.get(nt.name, 0)
        self._node_seq[nt.name] = i + 1
        nid = f"{nt.name}-{i}"
        self._idle[nid] = []
        self.plane.add_node(nid, nt, "up")
        for _ in range(self._base_workers(nid)):
            self._idle[nid].append(self._spawn(nid))
        return nid

    def _base_workers(self, nid: str) -> int:
        return max(1, math.ceil(self.index.node(nid).total.get("CPU", 0.0) - EPSILON))

    def _spawn(self, nid: str) -> WorkerProc:
        w = spawn_worker(nid, self._t0)
        w.on_backlog = self._wake
        self._workers[w.conn] = w
        self._wake()
        return w

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def nodes(self) -> list[NodeInfo]:
        """Every virtual node, in id order."""
        with self._lock:
            return self.index.nodes()

    def now(self) -> float:
        """Seconds since ``init``."""
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> None:
        """Real sleep."""
        time.sleep(seconds)

    def describe(self) -> dict[str, Any]:
        """Backend, node and worker counts (and the cap on task workers), policy."""
        return {"backend": "local", "nodes": len(self.index), "workers": len(self._workers),
                "worker_limit": self.worker_limit, "policy": self.plane.policy_name}

    # ------------------------------------------------------------------ tasks
    def _fn_id(self, fn: Any) -> int:
        entry = self._fn_by_obj.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1]
        data = cloudpickle.dumps(fn, protocol=5)
        fid = self._register_fn(data)
        self._fn_by_obj[id(fn)] = (fn, fid, data)
        return fid

    def _register_fn(self, data: bytes) -> int:
        fid = self._fn_by_bytes.get(data)
        if fid is None:
            fid = next(self._fn_ids)
            self._fn_by_bytes[data] = fid
            self._fn_bytes[fid] = data
        return fid

    def _pack(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[int]]:
        if not args and not kwargs:
            return _EMPTY_ARGS, []
        refs = [a for a in args if type(a) is ObjectRef]
        if kwargs:
            refs += [a for a in kwargs.values() if type(a) is ObjectRef]
        for r in refs:
            if r._backend is not None and r._backend is not self:
                raise ValueError(f"argument {r!r} of {name}() belongs to another runtime "
                                 f"session (shut down or replaced); its value is gone")
        deps = [r.id for r in refs]
        objs = self._objs
        was = [(o, o.escaped) for d in deps if (o := objs.get(d)) is not None]
        try:
            blob = store.serialize((args, kwargs), self._pid)
        except Exception:
            check_call_args(name, args, kwargs)
            raise
        for o, esc in was:  # top-level refs are resolved, not kept by the task
            o.escaped = esc
        return blob, deps

    def _feasible_check(self, info: TaskInfo) -> None:
        why = self.plane.infeasible(info)
        if why is not None:
            raise InfeasibleRequestError(why)

    def submit(self, spec: TaskSpec) -> ObjectRef:
        """Queue a task; infeasible requests and unpicklable arguments raise here."""
        self._check_open()
        fid = self._fn_id(spec.func)
        blob, deps = self._pack(spec.name, spec.args, spec.kwargs)
        with self._lock:
            self._check_open()
            tid = self.next_id()
            info = spec.info(tid, self.now())
            self._feasible_check(info)
            t = _Task(tid, spec.name, fid, blob, deps, info, spec.max_retries,
                      spec.retry_exceptions)
            self._register(t)
        return ObjectRef(tid, self, spec.name)

    def _submit_remote(self, fn_id: int, fn_bytes: bytes | None, blob: Any, deps: list[int],
                       meta: bytes) -> tuple[int, int]:
        """A task submitted from inside a worker (under the lock)."""
        name, options, request, max_retries, retry_exc = cloudpickle.loads(meta)
        if fn_bytes is not None:
            fn_id = self._register_fn(fn_bytes)
        tid = self.next_id()
        spec = TaskSpec(None, (), {}, name, options, request)  # type: ignore[arg-type]
        info = spec.info(tid, self.now())
        self._feasible_check(info)
        t = _Task(tid, name, fn_id, self._track(blob), deps, info, max_retries, retry_exc)
        self._register(t)
        self._objs[tid].escaped = True  # its refs live in a worker
        return tid, fn_id

    def _register(self, t: _Task) -> None:
        tid = t.id
        self._objs[tid] = _Obj()
        self._tasks[tid] = t
        actor = t.method == "__actor__"
        free = not t.deps
        if free:
            t.stage = "queued"
        self.plane.submit(t.info, ready=free, preemptible=not actor,
                          **({"actor": tid} if actor else {}))
        if t.args[2] is not None:
            self._segments.add(t.args[2][0])
        if free:
            self._schedule()
        else:
            self._resolve_deps(t)

    def _resolve_deps(self, t: _Task) -> None:
        failed = None
        for d in t.deps:
            o = self._objs.get(d)
            if o is None:
                failed = ("lost", d)
                continue
            o.pins += 1
            if o.state == _PENDING:
                t.missing += 1
                if o.dependents is None:
                    o.dependents = [t]
                else:
                    o.dependents.append(t)
            elif o.state == _ERR and failed is None:
                failed = o.blob
        if failed is not None:
            self._fail_without_running(t, failed)
        elif t.missing == 0:
            self._make_ready(t)

    def _fail_without_running(self, t: _Task, why: Any) -> None:
        if isinstance(why, tuple) and why and why[0] == "lost":
            blob = sys_error_record(ObjectLostError(f"object {why[1]} (an argument of "
                                                    f"{t.name!r}) is gone"), self._pid)
        else:
            blob = why
        self._settle(t, K.TASK_FAILED, _ERR, (blob[0], blob[1], None), error="dependency",
                     reason="a dependency failed")

    def _dep_done(self, t: _Task, o: _Obj) -> None:
        if t.stage != "inputs":
            return
        if o.state == _ERR:
            t.stage = "failing"
            self._fail_without_running(t, o.blob)
            return
        t.missing -= 1
        if t.missing == 0:
            if t.actor is not None:
                self._actor_flush(t.actor)
            else:
                self._make_ready(t)

    def _make_ready(self, t: _Task) -> None:
        """A task's inputs are ready: it joins the control plane's queue."""
        if t.actor is not None:
            return
        t.stage = "queued"
        self.plane.ready(t.id)
        self._schedule()

    def _retry(self, t: _Task, reason: str) -> None:
        """A task stopped (its worker died, or it raised and is retried): run it again."""
        t.state, t.stage, t.worker = "pending", "queued", None
        self.plane.requeue(t.id, K.TASK_RETRIED, t.node, attempt=t.attempt, reason=reason)
        self._schedule()

    def _recall(self, u: _Task) -> None:
        """A task sent ahead to a worker that will not run it: back to the queue."""
        u.state, u.stage, u.worker = "pending", "queued", None
        if u.cancelled:
            self._cancelled(u)
            return
        self.plane.recall(u.id)

    def _settle(self, t: _Task, kind: str, state: int, blob: Any, **data: Any) -> None:
        """A task is over: publish ``kind`` through the plane (which forgets it), settle it."""
        if t.method == "__actor__" and state == _OK:
            self.plane.end(t.id, kind, t.node, keep=True, name=t.name, **data)
        else:
            self.plane.end(t.id, kind, t.node, name=t.name, **data)
        self._finish(t, state, blob)

    def _finish(self, t: _Task, state: int, blob: Any) -> None:
        """A task is over: unpin its deps, drop its argument segment, settle its object."""
        t.state = "finished" if state == _OK else "cancelled" if t.cancelled else "failed"
        t.stage = ""
        if state == _ERR and t.method == "__actor__":
            a = self._actors.get(t.id)
            if a is not None and a.state == "pending":
                self._actor_dead(a, f"it could not be created: {error_from_record(blob)}")
        for d in t.deps:
            o = self._objs.get(d)
            if o is not None:
                o.pins -= 1
                if o.pins <= 0 and o.refs <= 0:
                    self._maybe_free(d, o)
        if t.args[2] is not None and t.method != "__actor__":
            self._segments.discard(t.args[2][0])
            store.unlink(t.args[2][0])
        self._complete(t.id, state, blob)

    # ------------------------------------------------------------- scheduling
    def _schedule(self) -> None:
        """One decision round of the control plane (more while it asks for them), and the
        autoscaler when tasks wait (under the lock)."""
        if self._closed:
            return
        plane = self.plane
        if plane.planner.removing:  # nodes scaled away by hand go once idle
            plane.planner.fail_stranded()
        self._rounds()
        if self._scaling and plane.queue.count:
            self._maybe_autoscale()
            if self._again:  # it added nodes: place on them now
                self._rounds()

    def _rounds(self) -> None:
        for _ in range(8):
            self._again = False
            self.plane.schedule()
            if not self._again:
                return

    def _unready(self, t: _Task) -> None:
        """Nothing to do: the plane drops a task from its queue when it ends."""

    # the actuator: what the control plane asks of this backend ---------------------
    def start(self, task_id: int, node_id: str) -> None:
        """Start a placed task on a worker of ``node_id`` (its resources are held there)."""
        t = self._tasks.get(task_id)
        if t is None:
            return
        if t.actor is not None or t.method == "__actor__":
            self._start_actor(t, node_id)
            return
        w = self._worker_for(node_id) or self._no_worker(t, node_id)
        if w is None:  # at the cap: it starts when a worker of its node frees
            t.stage, t.node = "parked", node_id
            return
        self._run_on(w, t, node_id)

    def _run_on(self, w: WorkerProc, t: _Task, node_id: str) -> None:
        """Start ``t`` on ``w`` (inside the wait of the blocked task ``w`` runs, when a
        frame was just saved for it)."""
        inline = bool(w.frames) and w.task is w.frames[-1][0]
        t.state, t.stage, t.worker, t.node = "running", "", w, node_id
        t.attempt += 1
        w.task = t
        self.events.emit(self.now(), K.TASK_STARTED, t.id, node_id, attempt=t.attempt,
                         name=t.name, pid=w.pid, **({"inside": True} if inline else {}))
        self._send_run(w, t, "inline" if inline else "run")

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """Queue a task in the pipe of the worker running ``behind``: it starts the moment
        that one ends (as ProcessPoolExecutor queues one extra call)."""
        u = self._tasks.get(task_id)
        r = self._tasks.get(behind)
        w = r.worker if r is not None else None
        if u is None or w is None or w.dead or w.queued is not None or w.task is not r \
                or w.frames:
            self._recall(u) if u is not None else None
            return
        u.stage, u.worker, u.node = "ahead", w, node_id
        w.queued = u
        self._send_run(w, u)

    def preempt(self, task_id: int, reason: str) -> None:
        """Kill the worker running the task; its death requeues it (without using a retry)."""
        t = self._tasks.get(task_id)
        if t is None or t.state not in ON_WORKER or t.worker is None or t.cancelled \
                or t.worker.dead:
            return
        t.attempt -= 1  # a preemption does not use up a retry
        t.max_retries = max(t.max_retries, t.attempt + 1) if t.max_retries != -1 else -1
        t.worker.kill()

    def resume(self, task_id: int) -> None:
        """A task blocked in get/wait has its CPU back: send it its reply."""
        t = self._tasks.get(task_id)
        if t is not None:
            self._resume(t)

    def fail(self, task_id: int, error: BaseException) -> None:
        """Fail a task the plane gave up on (it already published ``task_failed``)."""
        t = self._tasks.get(task_id)
        if t is None:
            return
        if t.method == "__actor__":
            a = self._actors.get(t.id)
            if a is not None and a.state == "pending":
                self._actor_dead(a, f"it could not be placed: {error}")
        self._finish(t, _ERR, sys_error_record(error, self._pid))

    def launch(self, node_type: NodeType, count: int) -> None:
        """Add ``count`` virtual nodes of ``node_type``, each with its worker processes."""
        for _ in range(count):
            self._add_node(node_type)

    def retire(self, node_id: str) -> None:
        """Remove an idle node and its idle workers."""
        self._remove_node(node_id, "scaled down")

    def _send_run(self, w: WorkerProc, t: _Task, kind: str = "run") -> None:
        fn_bytes = None
        if t.fn_id not in w.fns:
            fn_bytes = self._fn_bytes[t.fn_id]
            w.fns.add(t.fn_id)
        deps = {d: self._objs[d].blob for d in t.deps} if t.deps else None
        if not w.send((kind, t.id, t.fn_id, fn_bytes, t.args, deps, t.name)):
            self._on_death(w, "its connection was closed")

    def _release(self, t: _Task) -> int | None:
        """Give back what a task holds; returns a task sent ahead that took its slot."""
        t.lent = None
        self._pending_reply.pop(t.id, None)
        self._deferred.pop(t.id, None)
        return self.plane.stop(t.id)

    def _task_over(self, w: WorkerProc, t: _Task) -> _Task | None:
        """``t`` ended on ``w``: release it; a task sent ahead takes its slot at once.

        Returns that task: the caller publishes its start after ``t``'s end."""
        promoted = self._release(t)
        if self._pop_frame(w, t):  # it ran inside a blocked task's wait: back to that one
            return None
        u = w.queued
        if u is None or w.dead:
            self._idle_worker(w)
            return None
        w.queued = None
        if promoted != u.id:  # the books must show what the worker runs next
            self.errors.append(AssertionError(f"task {u.id} ran ahead of {t.id} unbooked"))
            self.plane.observe_start(u.info, w.node)
        u.state, u.stage = "running", ""
        u.attempt += 1
        w.task = u
        return u

    def _started_ahead(self, u: _Task | None) -> None:
        if u is not None:
            self.events.emit(self.now(), K.TASK_STARTED, u.id, u.node, attempt=u.attempt,
                             name=u.name, pid=u.worker.pid if u.worker else None)

    def _idle_worker(self, w: WorkerProc) -> None:
        w.task = None
        if w.dead or (self._parked and self._unpark(w.node, w)):
            return
        idle = self._idle.get(w.node)
        if idle is None or len(idle) >= 2 * self._base_workers(w.node) + 2:
            # its node was removed (scaled down while it ran), or enough wait already
            w.retiring = True
            w.send(("exit",))
            return
        idle.append(w)

    # ---------------------------------------------------------------- cancel
    def cancel(self, ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
        """Pending: never runs. Running: SIGINT (``force``: SIGKILL the worker)."""
        with self._lock:
            return self._cancel_locked(ref.id, force, recursive)

    def _cancel_locked(self, tid: int, force: bool, recursive: bool = True) -> bool:
        if recursive:  # the tasks it submitted first (Ray's recursive cancel)
            for child in self._children.pop(tid, ()):
                self._cancel_locked(child, force, True)
        t = self._tasks.get(tid)
        if t is None or t.state in OVER:
            return False
        if t.actor is not None:
            return self._cancel_call(t)
        if t.state == "pending" and t.stage != "ahead":
            self._unready(t)
            self._cancelled(t)
            return True
        t.cancelled = True
        if t.stage == "ahead":  # sent ahead: the worker skips it
            t.worker.interrupt(tid)
            return True
        w = t.worker
        if w is not None:
            if force:
                w.kill(signal.SIGKILL)
            else:
                w.interrupt(tid)
        return True

    # ----------------------------------------------------------------- output
    def on_output(self, task_id: int | None, stream: str, text: str) -> None:
        """Where a task's ``print`` goes: replace to route it (e.g. to a notebook cell).

        The default writes each line to the driver's stdout/stderr prefixed like
        Ray does: ``(name pid=123) text``.
        """
        t = self._tasks.get(task_id) if task_id is not None else None
        name = t.name if t is not None else "worker"
        pid = t.worker.pid if t is not None and t.worker is not None else "?"
        if t is not None and t.actor is not None:
            pid = t.actor.worker.pid if t.actor.worker is not None else "?"
        prefix = f"({name} pid={pid}) "
        out = sys.stderr if stream == "stderr" else sys.stdout
        lines = text.splitlines(keepends=True)
        out.write("".join(prefix + ln if ln.endswith("\n") else prefix + ln + "\n"
                          for ln in lines))
        try:
            out.flush()
        except Exception:  # noqa: BLE001
            pass

    # -------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Kill every worker (checked by pid), fail pending refs, unlink shared memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if _refs._pickle_hook == self._escaped:
                _refs._pickle_hook = None
            workers = list(self._workers.values())
            self._workers.clear()
            err = RuntimeShutdownError("the local cluster was shut down while this was pending")
            for tid in list(self._tasks):
                self._fail(tid, err)
            self._tasks.clear()
        self._wake()
        for w in workers:
            w.send(("exit",))
        deadline = time.monotonic() + 0.5
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - TimeoutExpired: killed below
                w.kill()
        for w in workers:
            w.reap(2.0)
        self._reader.join(2.0)
        with self._lock:
            for name in list(self._segments):
                store.unlink(name)
            self._segments.clear()
            for o in self._objs.values():
                o.blob = None if o.state == _OK else o.blob
        store.sweep(self._pid)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (tasks and actors)."""
        with self._lock:
            return sorted(w.pid for w in self._workers.values())

    # ------------------------------------------------------------------ actors
    def create_actor(self, spec: ActorSpec) -> int:
        """Place the actor through the policy, then start its dedicated process."""
        self._check_open()
        blob, deps = self._pack(spec.name, spec.args, spec.kwargs)
        cls_bytes = cloudpickle.dumps(spec.cls, protocol=5)
        with self._lock:
            self._check_open()
            return self._new_actor(spec, cls_bytes, blob, deps)
