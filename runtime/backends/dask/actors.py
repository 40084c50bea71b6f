"""Actors on dask: an instance lives on one worker; calls are tasks pinned to it.

Dask's own actors run calls in a thread pool without Ray's ordering and have no
restarts, so the backend keeps the instance in a per-process box on the worker
(:mod:`._remote`) and sends each call as a dask task pinned to that worker with
a sequence number; the box runs calls strictly in submission order. When the
worker dies, the actor is rebuilt by its constructor on another worker (up to
``max_restarts``): the call that was running fails with ``ActorDiedError``
(unless ``max_task_retries`` allows a re-run) and queued calls run, in order, on
the new instance.

Under repeated worker deaths (even of workers still starting) restarts run one at
a time per actor, a constructor that loses its worker is tried again (a restart,
counted against ``max_restarts``), and a finished call whose result died with the
actor's worker fails with ``ObjectLostError`` instead of waiting for dask to
recompute it on a worker that no longer exists (see :mod:`.recovery`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.backends.dask import _remote
from runtime.backends.dask.common import NO_VALUE, _Task, dask_resources, task_key
from runtime.errors import ActorDiedError, NBClusterError
from runtime.events import EventKind
from runtime.refs import ObjectRef
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.base import ActorSpec
    from runtime.backends.dask.backend import DaskBackend

__all__ = ["ActorManager", "KEEP_BYTES"]

#: Finished actor results up to this size are fetched to the driver at once (as Ray's
#: owner keeps small returns), so they survive the death of the actor's worker.
KEEP_BYTES = 1 << 20


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
        self.restart_lock = threading.Lock()  # one restart at a time


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
        actor.create_fut._nbc_addr = addr
        actor.addr = None
        actor.node = None

    def _ensure_ready(self, actor: _Actor, timeout: float | None = None) -> str:
        """Wait for the constructor: ``"ready"``, ``"dead"`` (it raised, or the actor died),
        ``"lost"`` (its worker died first: restart it) or ``"timeout"`` (``kill``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if actor.dead is not None:
                return "dead"
            if actor.addr is not None:
                return "ready"
            fut = actor.create_fut
            if fut is None:  # a restart is between two constructors, or none runs
                if not actor.restart_lock.locked():
                    return "lost"
                with actor.lock:
                    actor.ready.wait(0.05)
                continue
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            try:
                addr = fut.result(timeout=max(step, 0.01))
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    return "timeout"
                if fut.status == "lost" or self._pinned_to_the_dead(fut):
                    return "lost"
                continue
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - constructor error or worker loss
                if actor.create_fut is not fut:
                    continue  # replaced by a restart: wait for the new one
                if not isinstance(exc, NBClusterError):
                    return "lost"  # KilledWorker, cancelled with its worker...
                with actor.lock:
                    if actor.create_fut is fut:
                        actor.dead = ActorDiedError(f"{actor.name} (id {actor.id})",
                                                    f"its constructor failed: {exc}")
                self._publish(actor)
                return "dead"
            node = self._node_of(addr)
            with actor.lock:
                if actor.create_fut is fut:
                    # drop the future: dask must not re-run the constructor by itself
                    # if this worker dies (the restart logic does, in order)
                    actor.create_fut = None
                    if node is None or addr not in set(self.b._addr_of.values()):
                        return "lost"  # its worker died before any call could reach it
                    actor.addr = addr
                    actor.node = node
                    actor.ready.notify_all()
            return "ready" if actor.dead is None else "dead"

    def _pinned_to_the_dead(self, fut: Any) -> bool:
        """Whether a constructor pinned to a worker (a policy's choice) lost that worker."""
        addr = getattr(fut, "_nbc_addr", None)
        return addr is not None and addr not in set(self.b._addr_of.values())

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
        # max_retries: how often the call may start again (a worker death mid-call)
        task = _Task(cid, name, getattr, args2, kwargs2, Resources(), {},
                     actor.spec.max_task_retries, False,
                     spec_info(actor.spec, cid, self.b.now(), name))
        task.actor = [aid, 0, 0, method]
        ref = ObjectRef(cid, self.b, name)
        self.b._tasks[cid] = task
        self.b.events.emit(self.b.now(), EventKind.TASK_SUBMITTED, cid, None, name=name,
                           resources={})
        while self._ensure_ready(actor) == "lost":
            self._lost(actor, None, None)
        with actor.lock:
            if actor.dead is not None:
                self.b._fail(cid, actor.dead)
                return ref
            actor.calls[cid] = task
            if actor.addr is not None:
                self._submit_call(actor, task)
            else:  # a restart began meanwhile: it sends the queued calls, in order
                task.placed = False
        return ref

    def _submit_call(self, actor: _Actor, task: _Task) -> None:
        seq = actor.next_seq
        actor.next_seq += 1
        task.actor[1:3] = [actor.generation, seq]
        key = task_key(task.name, task.id, self.b.session)
        if actor.generation:
            key += f"-g{actor.generation}"
        task.addr = actor.addr  # its result will live there
        task.done_once = False
        fut = self.b.client.submit(
            _remote.call_actor, self.b.session, actor.id, actor.generation, "driver", seq,
            task.id, task.actor[3],
            task.args, task.kwargs, key=key, pure=False, workers=[actor.addr],
            allow_other_workers=False, retries=0)
        with self.b._lock:
            self.b._futs[task.id] = fut
            self.b._key_ids[key] = task.id  # dependants find its latest attempt
            task.placed = True
            self.b._cond.notify_all()

        def done(f: Any, a: _Actor = actor, t: _Task = task) -> None:
            if self.b._futs.get(t.id) is not f:
                return  # a stale attempt (cancelled by a restart)
            if f.status == "finished":
                t.done_once = True
                self._keep(f, t)
            a.calls.pop(t.id, None)

        fut.add_done_callback(done)

    def _keep(self, fut: Any, task: _Task) -> None:
        """Fetch a small finished result to the driver in the background."""
        client = self.b.client

        async def fetch() -> None:
            try:
                sizes = await client.scheduler.nbytes(keys=[fut.key], summary=False)
                if (sizes or {}).get(fut.key, KEEP_BYTES + 1) > KEEP_BYTES:
                    return
                values = await client._gather([fut])
                if self.b._futs.get(task.id) is fut:
                    task.value = values[0]
            except Exception:  # noqa: BLE001 - the worker died first: see rerun()
                pass

        try:
            client.loop.add_callback(fetch)
        except Exception:  # noqa: BLE001 - closing
            pass

    def rerun(self, task: _Task) -> bool:
        """A finished call's result died with its worker before the driver kept it: run
        the call again when ``max_task_retries`` allows (False: it does not)."""
        actor = self._actors.get(task.actor[0])
        if actor is None or actor.dead is not None or task.value is not NO_VALUE:
            return False
        retries = actor.spec.max_task_retries
        if retries == 0 or (retries > 0 and task.extra >= retries):
            return False
        task.extra += 1
        with actor.lock:
            task.done_once = False
            task.placed = False
            actor.calls[task.id] = task
            with self.b._lock:
                self.b._futs.pop(task.id, None)
            if actor.addr is not None:
                self._submit_call(actor, task)  # else the running restart sends it
        return True

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
            with actor.restart_lock:
                restarted = self._restart(actor, running=None)
            if not restarted:
                self._lost(actor, None, None)

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
            # calls run strictly in order, so the first unfinished call sent there was
            # running (or about to): its start event may have died with the worker
            sent = [t for t in actor.calls.values() if t.placed and not t.done_once]
            running = next((t for t in sent if t.id in self.b._running or t.attempts > 0),
                           sent[0] if sent else None)
            threading.Thread(target=self._lost, args=(actor, running, node_id, actor.addr),
                             name="nbcluster-actor-restart", daemon=True).start()

    def _lost(self, actor: _Actor, running: _Task | None, node_id: str | None,
              addr: str | None = None) -> None:
        """The actor's worker died (``node_id`` at ``addr``; None: its constructor's
        worker): restart it until one sticks or ``max_restarts`` is used up. One
        restart at a time."""
        with actor.restart_lock:
            if actor.dead is not None:
                return
            if node_id is not None and (actor.node != node_id or actor.addr != addr):
                return  # another restart already moved it (maybe to that name again)
            if node_id is None and actor.addr is not None and \
                    actor.addr in set(self.b._addr_of.values()):
                return  # another caller restarted it meanwhile
            spec = actor.spec
            where = f"its worker {actor.node}" if actor.node else "the worker of its constructor"
            while actor.dead is None:
                if spec.max_restarts >= 0 and actor.restarts >= spec.max_restarts:
                    self._die(actor, ActorDiedError(
                        f"{actor.name} (id {actor.id})", f"{where} died and max_restarts="
                        f"{spec.max_restarts} restart(s) are used up"))
                    return
                if self._restart(actor, running):
                    return
                running = None  # dealt with by the first attempt
                where = "the worker it was restarted on"

    def _restart(self, actor: _Actor, running: _Task | None) -> bool:
        """Rebuild the instance and send it the calls that had not finished; False when
        the new instance lost its worker too (try again)."""
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
        state = self._ensure_ready(actor)
        with actor.lock:
            # every call not sent to the new instance: those that had not finished on the
            # old one, and those that arrived during the restart, in submission order
            old = [t for t in actor.calls.values() if not t.placed]
            for t in old:
                if t.id in self.b._errors:
                    actor.calls.pop(t.id, None)
                    continue
                if t is running and actor.spec.max_task_retries == 0:
                    actor.calls.pop(t.id, None)
                    self.b._fail(t.id, ActorDiedError(
                        f"{actor.name} (id {actor.id})",
                        f"its worker died while running {t.name}; max_task_retries=0",
                        restarting=actor.dead is None))
                    continue
                if actor.dead is not None:
                    self.b._fail(t.id, actor.dead)
                    continue
                if state == "ready":
                    self._submit_call(actor, t)
        if state == "lost":
            with actor.lock:
                actor.addr = actor.node = None
            return False
        return True

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
    from runtime.cluster import TaskInfo

    o = spec.options
    return TaskInfo(id=ident, name=name or spec.name, request=spec.request,
                    kind=o.get("kind") or spec.name, accelerator_type=o.get("accelerator_type"),
                    tenant=o.get("tenant") or "default", priority=o.get("priority") or 0,
                    submitted_at=now)

