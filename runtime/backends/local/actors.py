"""Actors on the local backend: one dedicated process each, calls in submission order.

An actor is first placed like a task (through the policy, holding its resources
for its whole life); then its process gets the constructor and every call at
once, pipelined in its connection, so calls run one at a time in order without
a round trip each. When the process dies, the call it was running fails (or is
re-run, with ``max_task_retries``), the constructor runs again in a new process
(``max_restarts``) and the queued calls follow in order; after the final death
every call raises ``ActorDiedError`` at once.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import cloudpickle

from runtime.backends.base import ActorSpec, TaskSpec
from runtime.backends.local.objects import _Obj
from runtime.backends.local.protocol import error_from_record, sys_error_record
from runtime.backends.local.records import OVER, _Task
from runtime.errors import ActorDiedError, TaskCancelledError
from runtime.events import EventKind as K
from runtime.refs import ObjectRef

if TYPE_CHECKING:
    from runtime.backends.local.pool import WorkerProc

__all__ = ["ActorsMixin"]

_OK, _ERR = 1, 2


class _Actor:
    __slots__ = ("id", "name", "cls_bytes", "task", "max_restarts", "max_task_retries",
                 "restarts", "worker", "queue", "inflight", "state", "node", "no_restart",
                 "reason")

    def __init__(self, aid: int, name: str, cls_bytes: bytes, task: Any, max_restarts: int,
                 max_task_retries: int) -> None:
        self.id = aid
        self.name = name
        self.cls_bytes = cls_bytes
        self.task = task  # the creation pseudo-task (args, deps, info)
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.restarts = 0
        self.worker: WorkerProc | None = None
        self.queue: collections.deque[Any] = collections.deque()  # not sent yet
        self.inflight: collections.deque[Any] = collections.deque()  # sent to the process
        self.state = "pending"  # pending -> starting -> alive -> (restarting) -> dead
        self.node: str | None = None
        self.no_restart = False
        self.reason = ""


class ActorsMixin:
    """The actor half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _init_actors(self) -> None:
        self._actors: dict[int, _Actor] = {}
        self._pending_reply: dict[int, Any] = {}

    def _new_actor(self, spec: ActorSpec, cls_bytes: bytes, blob: Any, deps: list[int]) -> int:
        aid = self.next_id()
        tspec = TaskSpec(None, (), {}, spec.name, spec.options, spec.request)  # type: ignore[arg-type]
        info = tspec.info(aid, self.now())
        self._feasible_check(info)
        t = _Task(aid, spec.name, 0, blob, deps, info, 0, False)
        t.method = "__actor__"
        a = _Actor(aid, spec.name, cls_bytes, t, spec.max_restarts, spec.max_task_retries)
        self._actors[aid] = a
        self._register(t)
        return aid

    def _create_actor_remote(self, payload: bytes, blob: Any, deps: list[int]) -> int:
        cls, name, options, request, max_restarts, max_task_retries, methods = \
            cloudpickle.loads(payload)
        spec = ActorSpec(cls, (), {}, name, options, request, max_restarts, max_task_retries,
                         methods)
        return self._new_actor(spec, cloudpickle.dumps(cls, protocol=5), self._track(blob), deps)

    def _start_actor(self, t: Any, nid: str) -> None:
        a = self._actors.get(t.id)
        if a is None or a.state == "dead":
            return
        t.state, t.stage, t.node = "running", "", nid
        t.attempt += 1
        a.node = nid
        self.events.emit(self.now(), K.TASK_STARTED, t.id, nid, attempt=t.attempt, name=t.name)
        self._launch(a)

    def _launch(self, a: _Actor) -> None:
        w = self._spawn(a.node)
        w.actor = a
        a.worker = w
        a.state = "starting"
        t = a.task
        deps = {d: self._objs[d].blob for d in t.deps if d in self._objs} if t.deps else None
        w.send(("actor", a.id, a.cls_bytes, t.args, deps, a.name))
        self._actor_flush(a)

    def _on_actor_ready(self, w: WorkerProc, aid: int, ok: bool, err: Any) -> None:
        a = self._actors.get(aid)
        if a is None or a.worker is not w:
            return
        if ok:
            first = a.state == "starting" and a.restarts == 0
            a.state = "alive"
            if first:
                self.events.emit(self.now(), K.ACTOR_CREATED, aid, a.node, name=a.name,
                                 pid=w.pid)
                # the actor keeps its resources after its creation "task" is over
                self.plane.end(aid, K.TASK_FINISHED, a.node, keep=True, name=a.name)
                self._complete(aid, _OK, self._none_blob())
            return
        exc = error_from_record(err)
        self._actor_dead(a, f"its constructor raised {exc}")
        if a.task.state not in OVER:
            self.plane.end(aid, K.TASK_FAILED, a.node, name=a.name,
                           error=getattr(exc, "cause_type", type(exc).__name__),
                           reason="constructor raised")
            self._complete(aid, _ERR, err)
        w.kill()

    def _none_blob(self) -> Any:
        from runtime.backends.local import store

        return store.serialize(None, self._pid)

    def call_actor(self, actor_id: int, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a call; it is sent at once when the actor is up and its arguments are ready."""
        self._check_open()
        blob, deps = self._pack(method, args, kwargs)
        with self._lock:
            self._check_open()
            tid = self._call_actor_locked(actor_id, method, blob, deps)
        return ObjectRef(tid, self, method)

    def _call_actor_locked(self, aid: int, method: str, blob: Any, deps: list[int],
                           escaped: bool = False) -> int:
        a = self._actors.get(aid)
        if a is None:
            raise ValueError(f"actor id {aid} is not known to this cluster")
        tid = self.next_id()
        name = f"{a.name}.{method}"
        t = _Task(tid, name, 0, blob, deps, None, a.max_task_retries, False)
        t.actor, t.method = a, method
        o = self._objs[tid] = _Obj()
        o.escaped = escaped
        self._tasks[tid] = t
        if self.events.has_subscribers:
            self.events.emit(self.now(), K.TASK_SUBMITTED, tid, None, name=name, resources={},
                             actor=aid)
        if blob[2] is not None:
            self._segments.add(blob[2][0])
        if a.state == "dead":
            self._finish(t, _ERR, sys_error_record(ActorDiedError(self._actor_label(a), a.reason),
                                                   self._pid))
            return tid
        a.queue.append(t)
        if deps:
            self._resolve_deps(t)
        self._actor_flush(a)
        return tid

    def _actor_label(self, a: _Actor) -> str:
        return f"{a.name} (id {a.id})"

    def _actor_flush(self, a: _Actor) -> None:
        if a.state not in ("starting", "alive") or a.worker is None:
            return
        q = a.queue
        out = []
        w = a.worker
        objs = self._objs
        emit = self.events.emit if self.events.has_subscribers else None
        while q:
            t = q[0]
            if t.state in OVER:
                q.popleft()
                continue
            if t.missing > 0:
                break
            q.popleft()
            t.state, t.stage, t.worker, t.node = "running", "", w, a.node
            t.attempt += 1
            deps = {d: objs[d].blob for d in t.deps if d in objs} if t.deps else None
            out.append(("call", t.id, t.method, t.args, deps, t.name))
            a.inflight.append(t)
            if emit is not None:
                emit(self.now(), K.TASK_STARTED, t.id, a.node, attempt=t.attempt, name=t.name)
        if out and not w.send(out[0] if len(out) == 1 else ("batch", out)):
            self._on_death(w, "its connection was closed")

    def _on_call_done(self, w: WorkerProc, t: Any, ok: bool, blob: Any) -> None:
        a = t.actor
        if a.worker is not w:
            self._drop_blob(blob)
            return
        if a.inflight and a.inflight[0] is t:
            a.inflight.popleft()
        else:
            try:
                a.inflight.remove(t)
            except ValueError:
                pass
        if t.cancelled:
            self._drop_blob(blob)
            self._cancelled(t)
        elif ok:
            self._settle(t, K.TASK_FINISHED, _OK, blob)
        else:
            err = error_from_record(blob)
            self._settle(t, K.TASK_FAILED, _ERR, blob,
                         error=getattr(err, "cause_type", type(err).__name__),
                         reason="exception")

    def _cancel_call(self, t: Any) -> bool:
        a = t.actor
        if t.state == "pending" or t in a.queue:
            try:
                a.queue.remove(t)
            except ValueError:
                pass
            self._cancelled(t)
            return True
        t.cancelled = True
        if a.worker is not None:
            a.worker.interrupt(t.id)
        return True

    def _on_actor_death(self, w: WorkerProc, why: str) -> None:
        a = w.actor
        if a is None or a.worker is not w:
            return
        a.worker = None
        if a.state == "dead":
            return
        running = list(a.inflight)
        a.inflight.clear()
        if running and a.state in ("alive", "restarting"):
            head = running.pop(0)
            if not a.no_restart and (head.max_retries == -1 or head.attempt <= head.max_retries):
                running.insert(0, head)
            else:
                restarting = not a.no_restart and (a.max_restarts == -1
                                                   or a.restarts < a.max_restarts)
                self._settle(head, K.TASK_FAILED, _ERR, sys_error_record(
                    ActorDiedError(self._actor_label(a), f"its process died ({why}) while "
                                   f"running {head.name}", restarting=restarting), self._pid),
                    error="ActorDiedError", reason=why)
        for t in reversed(running):
            t.state, t.stage = "pending", "inputs"
            a.queue.appendleft(t)
        if a.no_restart or (a.max_restarts != -1 and a.restarts >= a.max_restarts):
            self._actor_dead(a, "it was killed" if a.no_restart else
                             f"its process died ({why}) and max_restarts={a.max_restarts} "
                             f"restarts are used up")
            return
        a.restarts += 1
        self.events.emit(self.now(), K.ACTOR_RESTARTED, a.id, a.node, name=a.name,
                         restarts=a.restarts)
        self._launch(a)

    def _actor_dead(self, a: _Actor, reason: str) -> None:
        """Final death: release resources, fail every queued and in-flight call."""
        if a.state == "dead":
            return
        a.state, a.reason = "dead", reason
        self.plane.release(a.id, a.node)
        self.events.emit(self.now(), K.ACTOR_DIED, a.id, a.node, name=a.name, reason=reason)
        calls = [*a.inflight, *a.queue]
        a.inflight.clear()
        a.queue.clear()
        for t in calls:
            if t.state not in OVER:
                self._finish(t, _ERR, sys_error_record(
                    ActorDiedError(self._actor_label(a), reason), self._pid))
        if a.worker is not None:
            a.worker.kill()
        self._schedule()

    def kill_actor(self, actor_id: int, *, no_restart: bool = True) -> None:
        """SIGKILL the actor's process; with ``no_restart`` it is dead for good."""
        with self._lock:
            self._kill_actor_locked(actor_id, no_restart)

    def _kill_actor_locked(self, actor_id: int, no_restart: bool) -> None:
        a = self._actors.get(actor_id)
        if a is None or a.state == "dead":
            return
        if no_restart:
            a.no_restart = True
        if a.worker is not None:
            a.worker.kill()
            if not no_restart and a.state == "alive":
                a.state = "restarting"  # later calls wait for the new process
        elif no_restart:
            t = a.task
            if t.state == "pending":
                self._settle(t, K.TASK_CANCELLED, _ERR, sys_error_record(
                    TaskCancelledError(t.name, t.id), self._pid))
            self._actor_dead(a, "it was killed before it started")
