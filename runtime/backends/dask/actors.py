"""Actors on dask: an instance lives on one worker; calls are tasks pinned to it.

Dask's own actors run calls in a thread pool without Ray's ordering and have no
restarts, so the backend keeps the instance in a per-process box on the worker
(:mod:`._remote`) and sends each call as a dask task pinned to that worker with
a sequence number; the box runs calls strictly in submission order. When the
worker dies, the actor is rebuilt by its constructor on another worker (up to
``max_restarts``): the call that was running fails with ``ActorDiedError``
(unless ``max_task_retries`` allows a re-run) and queued calls run, in order, on
the new instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.backends.dask import _remote
from runtime.backends.dask.common import _Task, dask_resources, task_key
from runtime.errors import ActorDiedError
from runtime.events import EventKind
from runtime.refs import ObjectRef
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.base import ActorSpec
    from runtime.backends.dask.backend import DaskBackend

__all__ = ["ActorManager"]


class _Actor:
    """Driver-side state of one actor."""

    def __init__(self, actor_id: int, spec: ActorSpec) -> None:
        self.id = actor_id
        self.spec = spec
        self.name = spec.name
        self.generation = 0
        self.restarts = 0
        self.addr: str | None = None
        self.node: str | None = None
        self.create_fut: Any = None
        self.next_seq = 0
        self.dead: ActorDiedError | None = None
        self.calls: dict[int, _Task] = {}  # not yet known done, in submission order
        self.lock = threading.RLock()
        self.ready = threading.Condition(self.lock)


class ActorManager:
    """Creates, calls, restarts and kills actors for a driver-side :class:`DaskBackend`."""

    def __init__(self, backend: DaskBackend) -> None:
        self.b = backend
        self._actors: dict[int, _Actor] = {}

    # creation ---------------------------------------------------------------
    def create(self, spec: ActorSpec) -> int:
        """Start the constructor on a worker (dask picks it); returns the actor id."""
        aid = self.b.next_id()
        actor = _Actor(aid, spec)
        info = spec_info(spec, aid, self.b.now())
        self.b.control.check_feasible(info)
        self._actors[aid] = actor
        self._submit_create(actor)
        self.b.events.emit(self.b.now(), EventKind.ACTOR_CREATED, aid, None, name=spec.name,
                           resources=spec.request.to_dict())
        return aid

    def _submit_create(self, actor: _Actor) -> None:
        spec = actor.spec
        args, kwargs = self.b._prepare_args(spec.name, spec.args, spec.kwargs)
        res = dask_resources(spec.request, spec.options.get("accelerator_type"))
        # with a policy, the policy picks the worker and the actor's request is held
        # there for its life, so its calls find a free thread (else dask picks)
        node = self.b.control.place_actor(spec_info(spec, actor.id, self.b.now()))
        addr = self.b._addr_of.get(node) if node is not None else None
        actor.create_fut = self.b.client.submit(
            _remote.create_actor, self.b.session, actor.id, actor.generation, spec.name,
            spec.cls, args, kwargs, pure=False,
            key=f"{task_key(spec.name, actor.id, self.b.session)}-actor-g{actor.generation}",
            resources=res or None, retries=0, workers=[addr] if addr else None,
            allow_other_workers=False)
        actor.addr = None
        actor.node = None

    def _ensure_ready(self, actor: _Actor, timeout: float | None = None) -> None:
        """Wait for the constructor (first call only); a failing one kills the actor.

        With ``timeout``, give up waiting after that many seconds (``kill``).
        """
        if actor.addr is not None or actor.dead is not None:
            return
        fut = actor.create_fut
        try:
            addr = fut.result(timeout=timeout)
        except TimeoutError:
            if timeout is None:
                raise
            return
        except Exception as exc:  # noqa: BLE001 - constructor error or worker loss
            with actor.lock:
                if actor.create_fut is fut:
                    actor.dead = ActorDiedError(f"{actor.name} (id {actor.id})",
                                                f"its constructor failed: {exc}")
            self._publish(actor)
            return
        with actor.lock:
            if actor.create_fut is fut:
                actor.addr = addr
                actor.node = self._node_of(addr)

    def _node_of(self, addr: str) -> str | None:
        node = self.b._name_of.get(addr)
        if node is None:
            try:
                self.b.refresh_workers()
            except Exception:  # noqa: BLE001 - scheduler busy: the poll will tell
                return None
            node = self.b._name_of.get(addr)
        return node

    # calls ------------------------------------------------------------------
    def call(self, aid: int, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a method call (waits for the constructor on the first call)."""
        actor = self._actors.get(aid)
        if actor is None:
            raise ActorDiedError(f"id {aid}", "no such actor in this cluster")
        cid = self.b.next_id()
        name = f"{actor.name}.{method}"
        args2, kwargs2 = self.b._prepare_args(name, args, kwargs)
        task = _Task(cid, name, getattr, args2, kwargs2, Resources(), {}, 0, False,
                     spec_info(actor.spec, cid, self.b.now(), name))
        task.actor = [aid, 0, 0, method]
        ref = ObjectRef(cid, self.b, name)
        self.b._tasks[cid] = task
        self.b.events.emit(self.b.now(), EventKind.TASK_SUBMITTED, cid, None, name=name,
                           resources={})
        self._ensure_ready(actor)
        with actor.lock:
            if actor.dead is not None:
                self.b._fail(cid, actor.dead)
                return ref
            actor.calls[cid] = task
            self._submit_call(actor, task)
        return ref

    def _submit_call(self, actor: _Actor, task: _Task) -> None:
        seq = actor.next_seq
        actor.next_seq += 1
        task.actor[1:3] = [actor.generation, seq]
        key = task_key(task.name, task.id, self.b.session)
        if actor.generation:
            key += f"-g{actor.generation}"
        fut = self.b.client.submit(
            _remote.call_actor, self.b.session, actor.id, actor.generation, "driver", seq,
            task.id, task.actor[3],
            task.args, task.kwargs, key=key, pure=False, workers=[actor.addr],
            allow_other_workers=False, retries=0)
        with self.b._lock:
            self.b._futs[task.id] = fut
            task.placed = True
            self.b._cond.notify_all()
        fut.add_done_callback(lambda _f, a=actor, t=task.id: a.calls.pop(t, None))

    def cancel_call(self, task: _Task) -> None:
        """Let later calls pass a cancelled call that has not run."""
        actor = self._actors.get(task.actor[0])
        if actor is None or actor.addr is None:
            return
        actor.calls.pop(task.id, None)
        try:
            self.b.run_on_workers(_remote.skip_actor_call, self.b.session, actor.id,
                                  task.actor[1], "driver", task.actor[2], workers=[actor.addr])
        except Exception:  # noqa: BLE001 - the worker is gone (or stuck) anyway
            pass

    # death, restart, kill ---------------------------------------------------
    def kill(self, aid: int, *, no_restart: bool = True) -> None:
        """Drop the instance; fail its calls (or rebuild it when ``no_restart=False``)."""
        actor = self._actors.get(aid)
        if actor is None:
            return
        self._ensure_ready(actor, timeout=10.0)
        if actor.addr is None and actor.dead is None and actor.create_fut is not None:
            try:  # the constructor is still queued or running: do not let it finish
                self.b._bounded(self.b.client._cancel, [actor.create_fut], force=True)
            except Exception:  # noqa: BLE001 - best effort
                pass
        if actor.addr is not None:
            try:
                self.b.run_on_workers(_remote.drop_actor, self.b.session, aid,
                                      workers=[actor.addr])
            except Exception:  # noqa: BLE001 - worker already gone (or stuck)
                pass
        if no_restart:
            self._die(actor, ActorDiedError(f"{actor.name} (id {aid})", "it was killed"))
        else:
            self._restart(actor, running=None)

    def _publish(self, actor: _Actor) -> None:
        """Tell callers in other tasks where the actor lives (scheduler metadata)."""
        try:
            self.b._bounded(
                self.b.client.scheduler.set_metadata,
                keys=[_remote.ACTOR_META, self.b.session, str(actor.id)],
                value=[actor.addr, actor.generation, actor.name,
                       actor.dead.reason if actor.dead is not None else None])
        except Exception:  # noqa: BLE001 - scheduler gone
            pass

    def _die(self, actor: _Actor, err: ActorDiedError) -> None:
        with actor.lock:
            actor.dead = err
        self.b.control.actor_gone(actor.id)
        self._publish(actor)
        with actor.lock:
            calls = list(actor.calls.values())
            actor.calls.clear()
        for t in calls:
            self.b._fail(t.id, err)
        self.b.events.emit(self.b.now(), EventKind.ACTOR_DIED, actor.id, actor.node,
                           reason=err.reason)

    def node_removed(self, node_id: str) -> None:
        """A worker left: restart (or kill) the actors that lived on it."""
        for actor in list(self._actors.values()):
            if actor.dead is not None or actor.node != node_id:
                continue
            running = [t for t in actor.calls.values() if t.id in self.b._running
                       or self.b._tasks.get(t.id) is t and t.attempts > 0]
            threading.Thread(target=self._lost, args=(actor, running[0] if running else None),
                             name="nbcluster-actor-restart", daemon=True).start()

    def _lost(self, actor: _Actor, running: _Task | None) -> None:
        spec = actor.spec
        if spec.max_restarts >= 0 and actor.restarts >= spec.max_restarts:
            self._die(actor, ActorDiedError(f"{actor.name} (id {actor.id})",
                                            f"its worker {actor.node} died and max_restarts="
                                            f"{spec.max_restarts} restart(s) are used up"))
            return
        self._restart(actor, running)

    def _restart(self, actor: _Actor, running: _Task | None) -> None:
        with actor.lock:
            actor.restarts += 1
            actor.generation += 1
            actor.next_seq = 0
            old = list(actor.calls.values())
            self._submit_create(actor)
        self.b.events.emit(self.b.now(), EventKind.ACTOR_RESTARTED, actor.id, None,
                           restarts=actor.restarts)
        with self.b._lock:
            stale = [self.b._futs.pop(t.id, None) for t in old]
            for t in old:
                t.placed = False
        try:
            self.b._bounded(self.b.client._cancel, [f for f in stale if f is not None],
                            force=True)
        except Exception:  # noqa: BLE001 - best effort
            pass
        self._ensure_ready(actor)
        with actor.lock:
            for t in old:
                if t is running and actor.spec.max_task_retries == 0:
                    actor.calls.pop(t.id, None)
                    self.b._fail(t.id, ActorDiedError(
                        f"{actor.name} (id {actor.id})",
                        f"its worker died while running {t.name}; max_task_retries=0"))
                    continue
                if actor.dead is not None:
                    self.b._fail(t.id, actor.dead)
                    continue
                self._submit_call(actor, t)

    def held_on(self, node_id: str, free: Resources) -> dict[str, float]:
        """Resources live actors hold on ``node_id`` (clamped to ``free``)."""
        out: dict[str, float] = {}
        for a in self._actors.values():
            if a.dead is None and a.node == node_id:
                for k, v in a.spec.request.items():
                    out[k] = out.get(k, 0.0) + v
        return {k: min(v, free.get(k, 0.0)) for k, v in out.items()}

    def shutdown(self, budget: Callable[[], float] = lambda: 5.0) -> None:
        """Drop every live actor's instance (one bounded call per worker) and forget them.

        ``budget()`` gives the seconds left for cluster calls; a worker that does not
        answer in time keeps its instances until it exits.
        """
        by_addr: dict[str, list[int]] = {}
        for actor in self._actors.values():
            if actor.addr is not None and actor.dead is None:
                by_addr.setdefault(actor.addr, []).append(actor.id)
        for addr, ids in sorted(by_addr.items()):
            left = budget()
            if left <= 0:
                break
            try:
                self.b.run_on_workers(_remote.drop_actors, self.b.session, ids, workers=[addr],
                                      timeout=left)
            except TimeoutError:  # stuck: the rest are probably no better; stop asking
                break
            except Exception:  # noqa: BLE001 - shutting down: the worker is gone
                pass
        self._actors.clear()


def spec_info(spec: ActorSpec, ident: int, now: float, name: str | None = None) -> Any:
    """The TaskInfo of an actor creation (or call) for feasibility checks and policies."""
    from runtime.policies.base import TaskInfo

    o = spec.options
    return TaskInfo(id=ident, name=name or spec.name, request=spec.request,
                    kind=o.get("kind") or spec.name, accelerator_type=o.get("accelerator_type"),
                    tenant=o.get("tenant") or "default", priority=o.get("priority") or 0,
                    submitted_at=now)

