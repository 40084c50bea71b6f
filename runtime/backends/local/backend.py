"""The local backend's driver: scheduling, the object table, and the one reader thread.

Who does what:
- the *submitting thread* (user code) registers a task and, when a slot is free,
  places and sends it at once (no hop through another thread);
- the *reader thread* waits on every worker connection with
  ``multiprocessing.connection.wait``, folds results in, answers nested requests,
  notices a dead worker at once (its pipe closes) and dispatches the next tasks;
- both mutate state only under ``self._lock``.
Placement goes through the scheduling policy on a :class:`NodeIndex`; every
decision is checked with ``check_placement`` before it is acted on.
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
from runtime.autoscaling import get_autoscaler
from runtime.backends.base import ActorSpec, Backend, TaskSpec
from runtime.backends.local import store
from runtime.backends.local.actors import ActorsMixin
from runtime.backends.local.nested import NestedMixin
from runtime.backends.local.objects import _ERR, _OK, _PENDING, ObjectsMixin, _Obj
from runtime.backends.local.pool import WorkerProc, spawn_worker
from runtime.backends.local.protocol import error_from_record, sys_error_record
from runtime.backends.local.reader import ReaderMixin
from runtime.backends.local.scaling import ScalingMixin
from runtime.cluster_spec import node_types_by_name, parse_nodes
from runtime.errors import (
    ObjectLostError,
    PolicyError,
    RuntimeShutdownError,
)
from runtime.events import EventKind as K
from runtime.policies import FirstFit, NodeIndex, Place, Preempt, get_policy
from runtime.policies.base import NodeInfo, TaskInfo, check_feasible, check_placement
from runtime.refs import ObjectRef
from runtime.resources import EPSILON, Resources
from runtime.serialization import check_call_args

__all__ = ["LocalBackend"]

_EMPTY_ARGS = store.serialize(((), {}), 0)
_WINDOW_CAP = 256  # most tasks of one shape shown to the policy per pass


class _Task:
    __slots__ = ("id", "name", "fn_id", "args", "deps", "missing", "info", "max_retries",
                 "retry_exceptions", "attempt", "state", "worker", "node", "cancelled", "lent",
                 "actor", "method", "shape")

    def __init__(self, tid: int, name: str, fn_id: int, args: Any, deps: list[int],
                 info: TaskInfo | None, max_retries: int, retry_exceptions: Any) -> None:
        self.id = tid
        self.name = name
        self.fn_id = fn_id
        self.args = args
        self.deps = deps
        self.missing = 0
        self.info = info
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions
        self.attempt = 0
        self.state = "waiting"  # waiting -> ready -> running -> done
        self.worker: WorkerProc | None = None
        self.node: str | None = None
        self.cancelled = False
        self.lent: Resources | None = None
        self.actor: Any = None
        self.method = ""
        self.shape: Any = None


class LocalBackend(ReaderMixin, ObjectsMixin, NestedMixin, ActorsMixin, ScalingMixin, Backend):
    """Worker processes on this machine, one or several virtual nodes, no server."""

    kind = "local"

    def __init__(self, *, num_cpus: float | None = None, num_gpus: float | None = None,
                 resources: Any = None, nodes: Any = None, policy: Any = None,
                 autoscaler: Any = None, node_types: Any = None, speeds: Any = None,
                 prefetch: bool = True) -> None:
        super().__init__()
        groups = parse_nodes(nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)
        self.policy = get_policy(policy)
        self._prefetch = bool(prefetch) and type(self.policy) is FirstFit
        self.autoscaler = get_autoscaler(autoscaler)
        self._node_types = node_types_by_name(groups, node_types or ())
        self._t0 = time.monotonic()
        self._pid = os.getpid()
        self.index = NodeIndex(speeds, clock=self.now)
        self._lock = threading.RLock()
        self._closed = False
        self._objs: dict[int, _Obj] = {}
        self._tasks: dict[int, _Task] = {}  # not yet done (any state)
        self._shapes: dict[Any, dict[int, _Task]] = {}  # ready, by (request, accelerator)
        self._unblock: collections.deque[_Task] = collections.deque()
        self._idle: dict[str, list[WorkerProc]] = {}
        self._workers: dict[Any, WorkerProc] = {}  # by connection
        self._fn_by_obj: dict[int, tuple[Any, int, bytes]] = {}
        self._fn_bytes: dict[int, bytes] = {}
        self._fn_by_bytes: dict[bytes, int] = {}
        self._fn_ids = itertools.count(1)
        self._feasible: set[Any] = set()
        self._rc_q: collections.deque[int] = collections.deque()
        self._node_seq: dict[str, int] = {}
        self._segments: set[str] = set()
        self._no_room: dict[Any, int] = {}
        self._children: dict[int, list[int]] = {}  # nested submits, by parent task id
        self._preempting: set[int] = set()
        self._dirty = False  # the reader schedules once per wake-up when set
        #: Internal errors the reader thread survived (for debugging; should stay empty).
        self.errors: list[BaseException] = []
        self._init_actors()
        self._init_scaling()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        for g in groups:
            for _ in range(g.count):
                self._add_node(g.node_type)
        self._reader = threading.Thread(target=self._read_loop, name="nbcluster-local-reader",
                                        daemon=True)
        self._reader.start()
        _refs._pickle_hook = self._escaped

    # ------------------------------------------------------------------ nodes
    def _add_node(self, nt: Any) -> str:
        i = self._node_seq.get(nt.name, 0)
        self._node_seq[nt.name] = i + 1
        nid = f"{nt.name}-{i}"
        self.index.add_node(nid, nt.name, nt.resources, nt.labels, "up", nt.cost_per_hour)
        self._idle[nid] = []
        self._feasible.clear()
        self.events.emit(self.now(), K.NODE_ADDED, None, nid, node_type=nt.name,
                         total=nt.resources.to_dict(), labels=dict(nt.labels), state="up")
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
        """Backend, node and worker counts, policy."""
        return {"backend": "local", "nodes": len(self.index), "workers": len(self._workers),
                "policy": getattr(self.policy, "name", type(self.policy).__name__)}

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
        key = (info.request, info.accelerator_type)
        if key in self._feasible:
            return
        types = [] if getattr(self.autoscaler, "name", "none") == "none" else \
            [nt.shape() for nt in self._node_types.values()]
        check_feasible(info, self.index.shapes(), types)
        self._feasible.add(key)

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
        info = t.info
        self.events.emit(info.submitted_at, K.TASK_SUBMITTED, tid, None, name=t.name,
                         resources=info.request.to_dict(), tenant=info.tenant)
        if t.args[2] is not None:
            self._segments.add(t.args[2][0])
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
        self.events.emit(self.now(), K.TASK_FAILED, t.id, None, name=t.name,
                         error="dependency", reason="a dependency failed")
        self._finish(t, _ERR, (blob[0], blob[1], None))

    def _dep_done(self, t: _Task, o: _Obj) -> None:
        if t.state != "waiting":
            return
        if o.state == _ERR:
            t.state = "failing"
            self._fail_without_running(t, o.blob)
            return
        t.missing -= 1
        if t.missing == 0:
            if t.actor is not None:
                self._actor_flush(t.actor)
            else:
                self._make_ready(t)

    def _make_ready(self, t: _Task) -> None:
        if t.actor is not None:
            return
        t.state = "ready"
        key = t.shape or (t.info.request, t.info.accelerator_type)
        t.shape = key
        group = self._shapes.get(key)
        if group is None:
            group = self._shapes[key] = {}
        group[t.id] = t
        self._schedule()

    def _finish(self, t: _Task, state: int, blob: Any) -> None:
        """A task is over: unpin its deps, drop its argument segment, settle its object."""
        t.state = "done"
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
    def _capacity(self, info: TaskInfo, blocked: set[str]) -> int:
        n = 0
        request = info.request
        for node in self.index.fitting(info):
            if node.id in blocked:
                continue
            if not request:
                return _WINDOW_CAP
            n += int(min(node.free.get(k, 0.0) / v for k, v in request.items()) + EPSILON)
            if n >= _WINDOW_CAP:
                return _WINDOW_CAP
        return n

    def _schedule(self) -> None:
        """Serve lenders waiting to unblock, then let the policy place ready tasks."""
        if self._draining:  # nodes scaled away by hand go once idle (see scaling.py)
            self._reap_drained()
        self._schedule_pass()
        if self._scaling and self._shapes:
            self._maybe_autoscale()
        if self._prefetch and self._shapes and not self._unblock and not self._closed:
            self._fill_prefetch()

    def _schedule_pass(self) -> None:
        if self._closed:
            return
        blocked: set[str] = set()
        while self._unblock:
            t = self._unblock[0]
            if t.lent is not None and not t.lent.fits(self.index.node(t.node).free):
                blocked = {x.node for x in self._unblock}
                break
            self._unblock.popleft()
            self._resume(t)
        if not self._shapes:
            return
        window: list[TaskInfo] = []
        version = self.index.version
        no_room = self._no_room
        for key, group in self._shapes.items():
            if no_room.get(key) == version and not blocked:
                continue  # nothing changed since this shape last found no room
            cap = self._capacity(next(iter(group.values())).info, blocked)
            if not cap:
                # show the head anyway (once per cluster change): a policy may preempt
                cap = 1
                if not blocked:
                    no_room[key] = version
            window.extend(t.info for t in itertools.islice(group.values(), cap))
        if not window:
            return
        window.sort(key=lambda i: i.id)
        try:
            decisions = list(self.policy.schedule(window, self.index))
        except Exception as exc:  # noqa: BLE001 - a broken policy fails the tasks it saw
            pname = getattr(self.policy, "name", type(self.policy).__name__)
            for info in window:
                t = self._tasks.get(info.id)
                if t is not None:
                    self._unready(t)
                    self._finish(t, _ERR, sys_error_record(PolicyError(
                        f"policy {pname!r} raised while placing task {info.name!r} "
                        f"(id {info.id}): {exc!r}"), self._pid))
            return
        for d in decisions:
            if isinstance(d, Place):
                t = self._tasks.get(d.task)
                if t is None or t.state != "ready":
                    continue
                try:
                    check_placement(self.policy, t.info, d.node, self.index)
                except PolicyError as exc:
                    self._unready(t)
                    self._finish(t, _ERR, sys_error_record(exc, self._pid))
                    continue
                if d.node in blocked:
                    continue
                self._unready(t)
                self._start(t, d.node)
            elif isinstance(d, Preempt):
                self._preempt(d)

    def _unready(self, t: _Task) -> None:
        group = self._shapes.get(t.shape)
        if group is not None:
            group.pop(t.id, None)
            if not group:
                del self._shapes[t.shape]

    def _worker_for(self, nid: str) -> WorkerProc:
        idle = self._idle[nid]
        while idle:
            w = idle.pop()
            if not w.dead:
                return w
        return self._spawn(nid)

    def _start(self, t: _Task, nid: str) -> None:
        if t.actor is not None or t.method == "__actor__":
            self._start_actor(t, nid)
            return
        self.index.allocate(t.info, nid)
        w = self._worker_for(nid)
        t.state, t.worker, t.node = "running", w, nid
        t.attempt += 1
        w.task = t
        self.events.emit(self.now(), K.TASK_STARTED, t.id, nid, attempt=t.attempt,
                         name=t.name, pid=w.pid)
        self._send_run(w, t)

    def _send_run(self, w: WorkerProc, t: _Task) -> None:
        fn_bytes = None
        if t.fn_id not in w.fns:
            fn_bytes = self._fn_bytes[t.fn_id]
            w.fns.add(t.fn_id)
        deps = {d: self._objs[d].blob for d in t.deps} if t.deps else None
        if not w.send(("run", t.id, t.fn_id, fn_bytes, t.args, deps, t.name)):
            self._on_death(w, "its connection was closed")

    def _preempt(self, d: Preempt) -> None:
        t = self._tasks.get(d.task)
        if t is None or t.state != "running" or t.worker is None or t.actor is not None \
                or t.cancelled or t.worker.dead or t.id in self._preempting:
            return
        self._preempting.add(t.id)
        w = t.worker
        self.events.emit(self.now(), K.TASK_PREEMPTED, t.id, t.node, reason=d.reason)
        t.attempt -= 1  # a preemption does not use up a retry
        t.max_retries = max(t.max_retries, t.attempt + 1) if t.max_retries != -1 else -1
        w.kill()

    def _release(self, t: _Task) -> None:
        if t.lent is not None:
            amount = t.info.request - t.lent
            t.lent = None
            self.index.release(t.id, amount)
        else:
            self.index.release(t.id)

    def _fill_prefetch(self) -> None:
        """Send each busy worker the next ready task of its running task's shape, to
        start the moment the running one ends (as ProcessPoolExecutor queues one
        extra call): the worker never idles waiting for a round trip. Only for
        FirstFit, where the freed slot is exactly where the policy would put it."""
        shapes = self._shapes
        for w in self._workers.values():
            t = w.task
            if t is None or w.queued is not None or w.blocked_req is not None or \
                    w.actor is not None or t.state != "running":
                continue
            group = shapes.get(t.shape)
            if not group:
                continue
            u = next(iter(group.values()))
            self._unready(u)
            u.state, u.worker, u.node = "queued", w, w.node
            w.queued = u
            self._send_run(w, u)
            if not shapes:
                return

    def _task_over(self, w: WorkerProc, t: _Task) -> _Task | None:
        """``t`` ended on ``w``: release it; a task sent ahead takes its slot at once.

        Returns that task: the caller publishes its start after ``t``'s end."""
        self._release(t)
        u = w.queued
        if u is None or w.dead:
            self._idle_worker(w)
            return None
        w.queued = None
        self.index.allocate(u.info, w.node)  # fits: the same shape was just released
        u.state = "running"
        u.attempt += 1
        w.task = u
        return u

    def _started_ahead(self, u: _Task | None) -> None:
        if u is not None:
            self.events.emit(self.now(), K.TASK_STARTED, u.id, u.node, attempt=u.attempt,
                             name=u.name, pid=u.worker.pid if u.worker else None)

    def _idle_worker(self, w: WorkerProc) -> None:
        w.task = None
        if w.dead:
            return
        idle = self._idle.get(w.node)
        if idle is None:
            return
        if len(idle) >= 2 * self._base_workers(w.node) + 2:
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
        if t is None or t.state == "done":
            return False
        if t.actor is not None:
            return self._cancel_call(t)
        if t.state in ("waiting", "ready"):
            self._unready(t)
            self._cancelled(t)
            return True
        t.cancelled = True
        if t.state == "queued":  # sent ahead: the worker skips it
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
            self._shapes.clear()
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
