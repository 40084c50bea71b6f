"""Actors on the sim backend: a constructor task, then method calls one at a time, in order.

The constructor is placed by the policy like a task and holds the actor's
resources (default 0 CPU, as in Ray) for the actor's life. Method calls run on
the actor's node in submission order; ``kill(actor, no_restart=False)`` is the
sim's "actor death", honouring ``max_restarts`` and ``max_task_retries``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime.backends.base import ActorSpec
from runtime.backends.sim.core import OVER, Actor, Obj, Task
from runtime.cluster import TaskInfo
from runtime.errors import ActorDiedError
from runtime.events import EventKind as E
from runtime.refs import ObjectRef
from runtime.resources import Resources

__all__ = ["ActorsMixin"]

_NO_RESOURCES = Resources()


class ActorsMixin:
    """Actor creation, calls, kills and restarts (mixed into :class:`SimBackend`)."""

    _actors: dict[int, Actor]

    def create_actor(self, spec: ActorSpec) -> int:
        """Start an actor: its constructor is queued like a task; returns the actor id."""
        self._require_driver_or_task("create_actor")
        aid = self.next_id()
        o = spec.options
        info = TaskInfo(id=aid, name=spec.name, request=spec.request,
                        kind=o.get("kind") or spec.name,
                        accelerator_type=o.get("accelerator_type"),
                        tenant=o.get("tenant") or "default", priority=o.get("priority") or 0,
                        submitted_at=self.env.now)
        self._check_feasible(info)
        self._check_args(spec.name, spec.args, spec.kwargs)
        actor = Actor(aid, spec, info)
        self._actors[aid] = actor
        self._emit(E.ACTOR_CREATED, actor=aid, name=spec.name)
        self._start_actor(actor)
        return aid

    def _start_actor(self, actor: Actor) -> None:
        tid = self.next_id()
        info = dataclasses.replace(actor.info, id=tid, submitted_at=self.env.now)
        spec = actor.spec
        t = Task(tid, f"{actor.name}.__init__", spec.cls, spec.args, spec.kwargs, spec.options,
                 info, Obj(tid))
        t.init_of = actor
        t.max_retries = 0
        actor.init_task = t
        self._tasks[tid] = t
        self._submit_to_plane(t, actor=actor.id)

    def call_actor(self, actor_id: int, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a method call; calls on one actor run one at a time, in submission order."""
        self._require_driver_or_task("call_actor")
        actor = self._actors.get(actor_id)
        if actor is None:
            raise ValueError(f"actor_id={actor_id!r}: no such actor in this sim cluster")
        tid = self.next_id()
        name = f"{actor.name}.{method}"
        self._check_args(name, args, kwargs)
        info = TaskInfo(id=tid, name=name, request=_NO_RESOURCES, kind=name,
                        tenant=actor.info.tenant, submitted_at=self.env.now)
        t = Task(tid, name, getattr, args, kwargs, actor.spec.options, info, Obj(tid))
        t.obj.task = t
        self._objects[tid] = t.obj
        t.actor = actor
        t.method = method
        t.holds = False
        t.duration = actor.spec.options.get("sim_duration")
        ref = ObjectRef(tid, self, name)
        self._tasks[tid] = t
        self._emit(E.TASK_SUBMITTED, tid, name=name, resources={})
        if actor.state == "dead":
            self._fail(t, ActorDiedError(actor.name, actor.reason), "actor is dead")
            return ref
        actor.queue.append(t)
        self._watch_deps(t, self._call_ready)
        return ref

    def _call_ready(self, t: Task) -> None:
        t.state, t.stage = "pending", "queued"
        self._kick_actor(t.actor)

    def _kick_actor(self, actor: Actor | None) -> None:
        if actor is not None and actor.state == "alive" and not actor.busy:
            self.env.timeout(0).callbacks.append(lambda e: self._pump(actor))

    def _pump(self, actor: Actor) -> None:
        """Start the next ready call (engine callbacks only: it switches greenlets)."""
        if actor.state != "alive" or actor.busy or self._closed:
            return
        q = actor.queue
        while q:
            t = q[0]
            if t.state in OVER:
                q.popleft()
                continue
            if t.stage != "queued":
                return  # head-of-line: its arguments are not ready yet
            q.popleft()
            actor.busy = True
            actor.current = t
            t.node = actor.node
            self._start(t)
            return

    def _after_end(self, t: Task, ok: bool, value: Any) -> None:
        actor = t.init_of
        if actor is not None:
            if ok and actor.init_task is t:
                actor.init_task = None
                actor.instance = value
                actor.node = t.node
                actor.alloc_id = t.id
                actor.state = "alive"
                self._pump(actor)
            return
        actor = t.actor
        if actor is not None and actor.current is t:
            actor.busy = False
            actor.current = None
            self._pump(actor)

    def _init_failed(self, t: Task, err: BaseException) -> None:
        actor = t.init_of
        if actor is None or actor.init_task is not t:
            return
        actor.init_task = None
        cause = getattr(err, "cause", None) or err
        self._actor_dead(actor, f"its constructor raised {type(cause).__name__}: {cause}")

    def _forget_call(self, t: Task) -> None:
        actor = t.actor
        if actor is not None and actor.current is t:
            actor.busy = False
            actor.current = None
            self._kick_actor(actor)

    def kill_actor(self, actor_id: int, *, no_restart: bool = True) -> None:
        """The sim's actor death: unwind the running call, then restart (``max_restarts``,
        unless ``no_restart``) or fail every queued and later call with ``ActorDiedError``."""
        self._require_driver_or_task("kill")
        actor = self._actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        restart = not no_restart and actor.restarts_left != 0
        self._actor_lost(actor, "killed by runtime.kill()", restart)

    def _actor_lost(self, actor: Actor, reason: str, restart: bool) -> None:
        cur, actor.current = actor.current, None
        actor.busy = False
        if cur is not None and cur.state not in OVER:
            self._abort(cur)
            if restart and actor.task_retries_left != 0:
                if actor.task_retries_left > 0:
                    actor.task_retries_left -= 1
                cur.state, cur.stage = "pending", "queued"
                actor.queue.appendleft(cur)
                self._emit(E.TASK_RETRIED, cur.id, cur.node, attempt=cur.attempt, reason=reason)
            else:
                self._fail(cur, ActorDiedError(actor.name, reason), reason)
        init, actor.init_task = actor.init_task, None
        if init is not None and init.state not in OVER:
            if init.state in ("running", "blocked"):
                self._abort(init)
            init.state = "cancelled"
            self._tasks.pop(init.id, None)
            self.plane.end(init.id, E.TASK_CANCELLED, init.node)
        if actor.alloc_id is not None:
            self.plane.release(actor.alloc_id, actor.node)
            actor.alloc_id = None
        actor.instance = None
        actor.node = None
        if restart:
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.state = "restarting"
            self._emit(E.ACTOR_RESTARTED, actor=actor.id, reason=reason)
            self._start_actor(actor)
        else:
            self._actor_dead(actor, reason)

    def _actor_dead(self, actor: Actor, reason: str) -> None:
        actor.state = "dead"
        actor.reason = reason
        self._emit(E.ACTOR_DIED, actor=actor.id, reason=reason)
        for t in list(actor.queue):
            if t.state not in OVER:
                self._fail(t, ActorDiedError(actor.name, reason), reason)
        actor.queue.clear()

    def _actors_on_failed_node(self, node_id: str, reason: str) -> None:
        for actor in sorted(self._actors.values(), key=lambda a: a.id):
            init = actor.init_task
            on_node = actor.node == node_id or (init is not None and init.node == node_id
                                                 and init.state != "pending")
            if actor.state != "dead" and on_node:
                self._actor_lost(actor, f"its node {node_id} failed ({reason})",
                                 actor.restarts_left != 0)

    def _shutdown_actors(self) -> None:
        for actor in self._actors.values():
            actor.state = "dead"
            actor.reason = "the sim cluster was shut down"
            actor.instance = None
            actor.queue.clear()
