"""The dask backend: the runtime's contracts mapped onto a ``distributed.Client``.

Tasks become ``client.submit(run_task, ...)`` with dask resources from the
request, refs are futures looked up by id, ``get`` is wait + gather (seceding
from the worker's thread pool when called inside a task), ``put`` is scatter.
Resource convention: a worker's ``CPU`` is its thread count (so a task blocked
in ``get`` lends its CPU when it secedes); every other resource (``GPU``,
``TPU``, custom) is a dask worker resource; a worker that has
``accelerator_type:A100=1`` among its resources has the accelerator label
``A100`` (Ray's convention). Actors, placement by a policy and autoscaling live
in :mod:`.actors` and :mod:`.control`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import distributed
from distributed import Future
from distributed.client import _wait as _dask_wait

from runtime.backends.base import ActorSpec, Backend, TaskSpec
from runtime.backends.dask import _remote, recovery
from runtime.backends.dask.common import (
    _Failed,
    _Task,
    dask_resources,
    task_key,
)
from runtime.backends.dask.view import ClusterView
from runtime.errors import (
    ActorDiedError,
    GetTimeoutError,
    NBClusterError,
    ObjectLostError,
    RuntimeShutdownError,
    SerializationError,
    TaskCancelledError,
    WorkerCrashedError,
    make_task_error,
)
from runtime.events import EventKind
from runtime.refs import ObjectRef
from runtime.resources import Resources
from runtime.serialization import check_call_args

__all__ = ["DaskBackend"]

log = logging.getLogger("runtime.backends.dask")

_CANCELLED = tuple(c for c in (getattr(distributed.client, "FuturesCancelledError", None),
                              getattr(distributed.client, "FutureCancelledError", None))
                   if c is not None)
_TRIVIAL = (type(None), bool, int, float, str, bytes, ObjectRef)
#: Seconds between the batched messages a client the backend created sends to the
#: scheduler (dask's default is 10 ms; a client passed in keeps its own setting).
SEND_INTERVAL = 0.002


class DaskBackend(ClusterView, Backend):
    """Runs tasks and actors on a dask.distributed cluster (driver or worker side)."""

    kind = "dask"

    def __init__(self, client: distributed.Client, *, role: str = "driver",
                 owns_client: bool = False, cluster: Any = None, owns_cluster: bool = False,
                 policy: Any = None, autoscaler: Any = None, node_types: Any = None,
                 poll_interval: float = 0.5, autoscale_interval: float = 1.0,
                 policy_window: int = 256, prefetch: int | bool = True) -> None:
        super().__init__()
        self.client = client
        self.role = role
        self._owns_client = owns_client
        self._cluster = cluster
        self._owns_cluster = owns_cluster
        self._t0 = time.monotonic()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._futs: dict[int, Future] = {}
        self._tasks: dict[int, _Task] = {}
        self._errors: dict[int, BaseException] = {}
        self._refcount: collections.Counter[int] = collections.Counter()
        self._dropped: collections.deque[int] = collections.deque()
        self._orphans: dict[int, Future] = {}
        self._terminal: set[int] = set()  # tasks whose end was published
        self._closed = False
        self.session = secrets.token_hex(4) if role == "driver" else ""
        if role == "worker":
            self._ids = itertools.count((secrets.randbits(40) << 20) + 1)
            self._caller = f"worker-{secrets.token_hex(6)}"
            self._actor_seq: collections.Counter[tuple[int, int]] = collections.Counter()
            self.actors = None
            self.control = None
            return
        # driver: the cluster view, the event topic, actors, policy and autoscaler
        self._workers: dict[str, tuple[str, str, Resources, dict[str, str], str]] = {}
        self._addr_of: dict[str, str] = {}  # node id -> address of its current worker
        self._name_of: dict[str, str] = {}  # address -> node id, of every worker seen
        # node id -> (total, labels) of every worker seen this session: a request that
        # fits one of them stays feasible while that worker restarts
        self._seen_shapes: dict[str, tuple[Resources, dict[str, str]]] = {}
        self._used: dict[str, dict[str, float]] = {}
        self._running: dict[int, tuple[str, Resources]] = {}
        self.poll_interval = poll_interval
        from runtime.backends.dask.actors import ActorManager
        from runtime.backends.dask.control import Control

        self.actors = ActorManager(self)
        self.control = Control(self, policy=policy, autoscaler=autoscaler, node_types=node_types,
                               interval=autoscale_interval, window=policy_window,
                               prefetch=prefetch)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._enqueued = 0  # events queued by the client's loop thread
        self._processed = 0  # events the event thread has taken
        self._refresh_lock = threading.RLock()
        self._key_ids: dict[str, int] = {}
        self._removals_seen: set[str] = set()  # worker addresses whose removal was handled
        self._death_counted: set[str] = set()  # keys of attempts whose worker death counted
        comm = getattr(client, "scheduler_comm", None)
        if owns_client and hasattr(comm, "interval"):
            # a client of our own sends to the scheduler every 2 ms, not dask's 10 ms:
            # we batch submissions ourselves, and a placement round trip is shorter
            comm.interval = SEND_INTERVAL
        self.client.subscribe_topic(_remote.TOPIC, self._on_topic)
        self.client.subscribe_topic("all", self._on_all)
        self.refresh_workers()
        self._poller = threading.Thread(target=self._event_loop, name="nbcluster-dask-events",
                                        daemon=True)
        self._poller.start()
        # tasks with no policy wait here a moment and go to dask in one client.map
        self._outbox: list[_Task] = []
        self._outbox_cond = threading.Condition(threading.Lock())
        self._sender = threading.Thread(target=self._send_loop, name="nbcluster-dask-submit",
                                        daemon=True)
        self._sender.start()
        self.control.begin()

    def _publish(self, kind: str, task: int | None, node: str | None, **data: Any) -> None:
        """Where the control plane's events go: this backend's bus, stamped with the time
        of the plane's input or round."""
        self.events.emit(self.control.plane.index.now, kind, task, node, **data)

    # ------------------------------------------------------------------ ids/refs
    def _ref_created(self, ref_id: int) -> None:
        self._refcount[ref_id] += 1

    def _ref_deleted(self, ref_id: int) -> None:
        self._dropped.append(ref_id)  # processed later: __del__ may run anywhere

    def _collect(self) -> None:
        while self._dropped:
            try:
                rid = self._dropped.popleft()
            except IndexError:
                break
            with self._lock:
                self._refcount[rid] -= 1
                if self._refcount[rid] > 0:
                    continue
                del self._refcount[rid]
                fut = self._futs.pop(rid, None)
                task = self._tasks.get(rid)
                if fut is not None and not fut.done():
                    self._orphans[rid] = fut  # Ray runs dropped tasks anyway
                elif task is None or task.placed:
                    self._forget_keys(task)
                    self._tasks.pop(rid, None)
                    self._errors.pop(rid, None)
                    self._terminal.discard(rid)
        if self._orphans:
            with self._lock:
                for rid in [r for r, f in self._orphans.items() if f.done()]:
                    del self._orphans[rid]
                    self._forget_keys(self._tasks.get(rid))
                    self._terminal.discard(rid)
                    self._tasks.pop(rid, None)
                    self._errors.pop(rid, None)

    def _session(self) -> str:
        """The driver session keys belong to (a worker takes it from the running task)."""
        return self.session if self.role == "driver" else _remote.session()

    def _forget_keys(self, task: _Task | None) -> None:
        if task is None or self.role != "driver":
            return
        key = task_key(task.name, task.id, self.session)
        self._key_ids.pop(key, None)
        self._death_counted.discard(key)
        for n in range(1, task.extra + 1):
            self._key_ids.pop(f"{key}-r{n}", None)
            self._death_counted.discard(f"{key}-r{n}")

    def _future(self, ref: ObjectRef) -> Future | None:
        fut = self._futs.get(ref.id)
        if fut is None:
            fut = self._orphans.get(ref.id)
        if fut is None and ref.id not in self._tasks:
            # a ref made elsewhere (another worker, or inside a task): its key is derivable
            key = task_key(ref.name, ref.id, self._session())
            fut = Future(key, self.client)
            # ask the scheduler to report this key's state to our client
            self.client._send_to_scheduler({"op": "client-desires-keys", "keys": [key]})
            self._futs[ref.id] = fut
        return fut

    # ------------------------------------------------------------------ submit
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeShutdownError("the dask backend was shut down; call runtime.init() again")

    def _prepare_args(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                      *, resolve: bool = True) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Check that the arguments pickle; with ``resolve``, refs become futures."""
        if any(not isinstance(a, _TRIVIAL) for a in args) or any(
                not isinstance(v, _TRIVIAL) for v in kwargs.values()):
            check_call_args(name, args, kwargs)
        if not resolve:
            return tuple(args), dict(kwargs)
        a2 = tuple(self._as_dep(a) for a in args)
        k2 = {k: self._as_dep(v) for k, v in kwargs.items()}
        return a2, k2

    def _as_dep(self, value: Any) -> Any:
        if isinstance(value, ObjectRef):
            err = self._errors.get(value.id)
            if err is not None:
                return _Failed(err)
            fut = self._future(value)
            if fut is None and self.role == "driver" and self._outbox:
                self._flush()  # it may wait in the outbox
                fut = self._future(value)
            if fut is None:  # a policy-held task: wait until it is placed
                self._await_placed([value], None)
                err = self._errors.get(value.id)
                if err is not None:
                    return _Failed(err)
                fut = self._futs[value.id]
            return fut
        return value

    def submit(self, spec: TaskSpec) -> ObjectRef:
        """Queue a task on dask (or with the policy); returns its ref at once."""
        self._check_open()
        if self._dropped:
            self._collect()
        tid = self.next_id()
        info = spec.info(tid, self.now())
        held = self.role == "driver" and self.control.policy is not None
        if self.role == "driver":
            self.control.check_feasible(info)
        # a task the policy holds keeps its refs: they become futures when it is placed
        args, kwargs = self._prepare_args(spec.name, spec.args, spec.kwargs, resolve=not held)
        res = dask_resources(spec.request, info.accelerator_type)
        task = _Task(tid, spec.name, spec.func, args, kwargs, spec.request, res,
                     spec.max_retries, spec.retry_exceptions, info)
        ref = ObjectRef(tid, self, spec.name)
        if self.role == "driver":
            self._tasks[tid] = task
            if held:
                task.placed = False
                self.control.enqueue(task)
                return ref
            with self._lock:
                self.control.plane.submit(info, ready=False)
            self._queue(task)
            return ref
        self._submit_to_dask(task)
        return ref

    # ------------------------------------------------------------------ outbox
    #: A burst of submissions becomes one ``client.map`` (one scheduler message and
    #: about a tenth of the driver's work per task); ``get``/``wait`` send at once.
    OUTBOX_MAX = 256
    OUTBOX_DELAY = 0.001

    def _queue(self, task: _Task) -> None:
        task.placed = False
        with self._outbox_cond:
            self._outbox.append(task)
            n = len(self._outbox)
            if n == 1:
                self._outbox_cond.notify()
        if n >= self.OUTBOX_MAX:
            self._flush()

    def _send_loop(self) -> None:
        while not self._closed:
            with self._outbox_cond:
                while not self._outbox and not self._closed:
                    self._outbox_cond.wait(0.5)
            if self._closed:
                return
            time.sleep(self.OUTBOX_DELAY)  # let the rest of a burst join
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - reported per task by _flush
                log.debug("sending queued tasks", exc_info=True)

    def _flush(self) -> None:
        """Send the queued tasks to dask: one ``client.map`` per resource request."""
        with self._outbox_cond:
            batch, self._outbox = self._outbox, []
        groups: dict[tuple[tuple[str, float], ...], list[_Task]] = {}
        for t in batch:
            if t.id not in self._errors:
                groups.setdefault(tuple(sorted(t.res.items())), []).append(t)
        for res, tasks in groups.items():
            self._send(tasks, dict(res), None)

    def _dask_call(self, task: _Task) -> tuple[str, tuple[Any, ...]] | None:
        """The key and ``run_task`` arguments of one attempt (None: an input failed)."""
        session = self._session()
        meta = (task.id, task.name, task.retry, task.max_retries, task.request.to_dict(),
                session, task.extra)
        key = task_key(task.name, task.id, session)
        if task.extra:
            key = f"{key}-r{task.extra}"
        args, kwargs = task.args, task.kwargs
        if any(isinstance(a, ObjectRef) for a in (*args, *kwargs.values())):
            args = tuple(self._as_dep(a) for a in args)  # placed: every dep has its future
            kwargs = {k: self._as_dep(v) for k, v in kwargs.items()}
        failed = [a.error for a in (*args, *kwargs.values()) if isinstance(a, _Failed)]
        if failed:
            self._fail(task.id, failed[0])
            return None
        return key, (task.fn, meta, args, kwargs)

    def _submitted(self, tasks: Sequence[_Task], keys: Sequence[str],
                   futs: Sequence[Future]) -> None:
        with self._lock:
            for task, key, fut in zip(tasks, keys, futs, strict=True):
                self._futs[task.id] = fut
                if self.role == "driver":
                    self._key_ids[key] = task.id
            self._cond.notify_all()

    def _submit_to_dask(self, task: _Task, workers: list[str] | None = None,
                        call: tuple[str, tuple[Any, ...]] | None = None) -> Future | None:
        """One ``client.submit`` of ``task`` (``call``: its ``_dask_call``, if made);
        None when an input failed (the task is failed)."""
        call = call or self._dask_call(task)
        if call is None:
            return None
        key, args = call
        fut = self.client.submit(
            _remote.run_task, *args, key=key, pure=False,
            resources=task.res or None, retries=0, workers=workers,
            allow_other_workers=False,
        )
        self._submitted([task], [key], [fut])
        return fut

    def _submit_pinned(self, placed: Sequence[tuple[_Task, str]]) -> None:
        """Submit tasks pinned to workers, one ``client.map`` per (worker, resources)
        group: one scheduler message for many tasks, about 10x cheaper than a
        ``client.submit`` each.

        The pin is strict (``allow_other_workers=False``): when the worker is gone, the
        control loop submits what waited, ran or was kept there again through the
        policy, under new keys (:meth:`Control.node_removed`, ``requeue_lost``).
        """
        groups: dict[tuple[str, tuple[tuple[str, float], ...]], list[_Task]] = {}
        for task, addr in placed:
            task.addr = addr
            groups.setdefault((addr, tuple(sorted(task.res.items()))), []).append(task)
        for (addr, res), tasks in groups.items():
            self._send(tasks, dict(res), [addr])

    def _send(self, tasks: Sequence[_Task], res: dict[str, float],
              workers: list[str] | None) -> None:
        """Submit ``tasks`` (one resource request; pinned to ``workers`` if given) in one
        ``client.map``; if that fails (a function that cannot be pickled), one by one,
        failing only the tasks that cannot be sent."""
        calls = [(t, c) for t in tasks if (c := self._dask_call(t)) is not None]
        if not calls:
            return
        try:
            if len(calls) > 1:
                cols = list(zip(*(c[1] for _, c in calls), strict=True))
                futs = self.client.map(_remote.run_task, *cols, key=[c[0] for _, c in calls],
                                       pure=False, resources=res or None, retries=0,
                                       workers=workers, allow_other_workers=False,
                                       fifo_timeout=0, batch_size=None)
                for t, _ in calls:
                    t.placed = True
                self._submitted([t for t, _ in calls], [c[0] for _, c in calls], futs)
                return
        except Exception:  # noqa: BLE001 - find the task(s) at fault below
            log.debug("client.map failed; sending one by one", exc_info=True)
            # the failed call left its keys in the client (futures never sent): new keys
            for t, _ in calls:
                t.extra += 1
            calls = [(t, c) for t, _ in calls if (c := self._dask_call(t)) is not None]
        for t, call in calls:
            try:
                self._submit_to_dask(t, workers, call)
            except Exception as exc:  # noqa: BLE001 - e.g. a function that cannot pickle
                root: BaseException = exc
                while root.__cause__ is not None:
                    root = root.__cause__
                self._fail(t.id, SerializationError(
                    f"task {t.name} (id {t.id}) could not be sent to dask: its function or "
                    f"arguments cannot be pickled ({type(root).__name__}: "
                    f"{str(root)[:200]})"))
                continue
            t.placed = True

    def _fail(self, task_id: int, err: BaseException, *, cancelled: bool = False,
              publish: bool = True) -> None:
        """Settle a task with ``err``; the control plane publishes its end (unless it
        already did: ``publish=False``) and forgets it."""
        with self._lock:
            self._errors[task_id] = err
            self._cond.notify_all()
            fut = self._futs.get(task_id)
        if fut is not None and not fut.done():
            try:
                self.client.cancel([fut], force=True)
            except Exception:  # noqa: BLE001 - closing client
                pass
        kind = EventKind.TASK_CANCELLED if cancelled else EventKind.TASK_FAILED
        self._terminal.add(task_id)
        if self.role != "driver":
            self.events.emit(self.now(), kind, task_id, None, error=type(err).__name__,
                             reason=str(err).split("\n", 1)[0])
            return
        node = self._running.get(task_id, (None,))[0]
        self._release_running(task_id)
        self.control.dequeue(task_id)
        if publish:
            with self._lock:
                self.control.plane.end(task_id, kind, node, error=type(err).__name__,
                                       reason=str(err).split("\n", 1)[0])

    def put(self, value: Any) -> ObjectRef:
        """Scatter ``value`` to a worker; returns its ref."""
        self._check_open()
        rid = self.next_id()
        key = task_key("obj", rid, self._session())
        with _remote.seceded():
            fut = self.client.scatter({key: value}, hash=False)[key]
        self._futs[rid] = fut
        return ObjectRef(rid, self, "obj")

    # ------------------------------------------------------------------ get/wait
    def _await_placed(self, refs: Sequence[ObjectRef], deadline: float | None) -> None:
        """Block until every ref has a future or an error (policy-held tasks)."""
        with self._cond:
            while True:
                missing = [r for r in refs if r.id not in self._errors
                           and self._futs.get(r.id) is None and r.id in self._tasks]
                if not missing:
                    return
                self._check_open()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise GetTimeoutError(f"get() timed out: {len(missing)} task(s) still "
                                          f"pending placement")
                self._cond.wait(0.5 if left is None else min(left, 0.5))

    def _settled(self, ref: ObjectRef, fut: Future | None) -> bool:
        """Whether the ref is done for the user (a retriable worker loss is not)."""
        if ref.id in self._errors:
            return True
        if self.role == "driver":  # dependants of resubmitted inputs, lost actor results
            verdict = recovery.verdict(self, ref, fut)
            if verdict is not None:
                return verdict
        if fut is None or not fut.done():
            if fut is not None and fut.status == "lost" and self.role == "driver" and \
                    self.control.policy is not None:
                self.control.requeue_lost([ref.id])  # its pinned worker is gone
            return False
        if self._moved(ref, fut):
            return False  # replaced meanwhile (a restart or a move): wait for the new one
        if fut.status == "error" and self.role == "driver":
            return not self._maybe_resubmit(ref.id, fut)
        return True

    def _maybe_resubmit(self, tid: int, fut: Future) -> bool:
        task = self._tasks.get(tid)
        if task is None or task.actor is not None:
            return False
        exc = fut.exception()
        if type(exc).__name__ != "KilledWorker":
            return False
        attempts = max(task.attempts, 1)
        if task.max_retries >= 0 and attempts >= task.max_retries + 1:
            last = getattr(exc, "last_worker", None)
            self._fail(tid, WorkerCrashedError(task.name, tid, attempts,
                                               str(getattr(last, "name", None) or last),
                                               "dask reported KilledWorker"))
            return False
        task.extra += 1
        with self._lock:
            self.control.plane.requeue(tid, EventKind.TASK_RETRIED, attempt=attempts + 1,
                                       reason="worker died")
        self._submit_to_dask(task)
        return True

    def _error_of(self, ref: ObjectRef, fut: Future | None) -> BaseException | None:
        err = self._errors.get(ref.id)
        if err is not None:
            return err
        if recovery.kept(self, ref):
            return None  # the driver has the value (its worker may be gone)
        if fut is None:
            return RuntimeShutdownError(f"object {ref.id} is unknown to this cluster")
        if fut.status == "cancelled":
            if recovery.cancel_reason(fut) == recovery.LOST_REASON or (
                    self.client.status != "running" and not self._closed):
                return recovery.scheduler_lost(self, ref)
            dep = recovery.dependency_error(self, ref) if self.role == "driver" else None
            return dep or TaskCancelledError(ref.name or "?", ref.id)
        if fut.status == "lost":
            return ObjectLostError(f"object {ref.id} ({ref.name}) was lost with its worker")
        if fut.status != "error":
            return None
        exc = fut.exception()
        if isinstance(exc, NBClusterError):
            return exc
        if type(exc).__name__ == "KilledWorker":
            task = self._tasks.get(ref.id)
            last = getattr(exc, "last_worker", None)
            return WorkerCrashedError(ref.name, ref.id, task.attempts if task else 1,
                                      str(getattr(last, "name", None) or last),
                                      "dask reported KilledWorker")
        if isinstance(exc, distributed.client.FutureCancelledError):
            return TaskCancelledError(ref.name or "?", ref.id)
        try:
            tb = "".join(__import__("traceback").format_tb(fut.traceback()))
        except Exception:  # noqa: BLE001 - no traceback available
            tb = ""
        return make_task_error(exc, tb, task_name=ref.name, task_id=ref.id)

    def _note_failed(self, tid: int, err: BaseException) -> None:
        """Publish task_failed for a task dask failed without running it (a failed input)."""
        if self.role != "driver" or tid in self._terminal or tid not in self._tasks:
            return
        self._terminal.add(tid)
        kind = (EventKind.TASK_CANCELLED if isinstance(err, TaskCancelledError)
                else EventKind.TASK_FAILED)
        with self._lock:
            self.control.plane.end(tid, kind, None, error=type(err).__name__,
                                   reason=str(err).split("\n", 1)[0])

    def _current(self, ref: ObjectRef) -> Future | None:
        """The ref's future now (None while a policy or an actor restart holds the task)."""
        fut = self._futs.get(ref.id)
        if fut is None:
            fut = self._orphans.get(ref.id)
        if fut is None and ref.id not in self._tasks:
            with self._lock:
                fut = self._future(ref)
        return fut

    def _block_until(self, refs: Sequence[ObjectRef], count: int,
                     deadline: float | None) -> tuple[list[int], list[Future | None]]:
        """Wait until ``count`` refs are settled or the deadline passes.

        Returns the settled indexes (input order) and the refs' current futures.
        """
        if self.role == "driver" and self._outbox:
            self._flush()
        while True:
            self._check_open()
            recovery.watch_connection(self)  # the scheduler restarted: old refs are lost
            futs = [self._current(r) for r in refs]
            done = [i for i, (r, f) in enumerate(zip(refs, futs, strict=True))
                    if self._settled(r, f)]
            if len(done) >= count:
                return done, futs
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return done, futs
            settled = set(done)
            waitable = [f for i, f in enumerate(futs)
                        if i not in settled and f is not None and not f.done()]
            step = 1.0 if left is None else min(left, 1.0)
            if waitable:
                try:
                    self._dwait(waitable, step,
                                "ALL_COMPLETED" if count == len(refs) else "FIRST_COMPLETED")
                except TimeoutError:
                    pass
            else:
                with self._cond:
                    self._cond.wait(min(step, 0.05))

    def _sync_events(self, limit: float = 1.0) -> None:
        """Let the event thread publish what already arrived (so a finished task's
        start and end events precede the return of ``get``)."""
        if self.role != "driver" or self._processed >= self._enqueued:
            return
        target = self._enqueued
        deadline = time.monotonic() + limit
        with self._cond:
            while self._processed < target and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.05))

    def _moved(self, ref: ObjectRef, fut: Future | None) -> bool:
        """Whether ``fut`` was cancelled because its task was submitted again elsewhere."""
        return (fut is not None and fut.status == "cancelled" and ref.id not in self._errors
                and self._futs.get(ref.id) is not fut)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Wait for every ref, then gather; raise the first error in ref order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _remote.seceded():
            while True:
                values = self._get_once(refs, deadline, timeout)
                if values is not None:
                    return values

    def _get_once(self, refs: Sequence[ObjectRef], deadline: float | None,
                  timeout: float | None) -> list[Any] | None:
        """Wait, then gather; None when a result was lost while fetching (wait again)."""
        while True:
            done, futs = self._block_until(refs, len(refs), deadline)
            self._sync_events()
            if not any(self._moved(r, f) for r, f in zip(refs, futs, strict=True)):
                break  # else a task moved to another worker meanwhile: wait for it
        if len(done) < len(refs):
            raise GetTimeoutError(
                f"get() timed out after {timeout:g} s with {len(refs) - len(done)} of "
                f"{len(refs)} ref(s) not ready: {recovery.pending_state(self, refs, done)}")
        for r, f in zip(refs, futs, strict=True):
            err = self._error_of(r, f)
            if err is not None:
                self._note_failed(r.id, err)
                raise err
        try:  # bounded by the deadline; notices actor results lost meanwhile
            return recovery.gather(self, refs, futs, deadline, timeout)
        except recovery.Regather:
            return None
        except (GetTimeoutError, ObjectLostError):
            raise
        except Exception:  # noqa: BLE001 - a race with cancel/loss: report per ref
            for r, f in zip(refs, futs, strict=True):
                err = self._error_of(r, f)
                if err is not None:
                    raise err from None
            raise

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[int]:
        """Indexes of the first ``num_returns`` done refs (input order) or of those done
        when the timeout passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _remote.seceded():
            done, futs = self._block_until(refs, num_returns, deadline)
        self._sync_events()
        if self.role == "driver":
            for i in done:
                f = futs[i]
                if (f is not None and f.status in ("error", "cancelled")
                        and refs[i].id not in self._terminal):
                    err = self._error_of(refs[i], f)
                    if err is not None:
                        self._note_failed(refs[i].id, err)
        return done[:num_returns]

    def _dwait(self, futs: list[Future], timeout: float | None,
               return_when: str = "ALL_COMPLETED") -> None:
        """``distributed.wait`` on this backend's client (not the default one)."""
        try:
            self.client.sync(_dask_wait, futs, timeout=timeout, return_when=return_when)
        except _CANCELLED:
            pass  # a cancelled future is done; callers look at each ref's state

    def done(self, ref: ObjectRef) -> bool:
        """Whether the ref has a value or an error (never blocks)."""
        if ref.id in self._errors:
            return True
        return self._settled(ref, self._current(ref))

    def add_done_callback(self, ref: ObjectRef, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` once done, from a helper thread."""
        if self.done(ref):
            fn(ref)
            return
        fut = self._current(ref)
        if fut is not None:
            def on_done(_f: Future) -> None:  # in dask's callback thread
                if self.done(ref) or self._closed:
                    fn(ref)
                else:  # replaced (a retry or an actor restart): follow the new attempt
                    self.add_done_callback(ref, fn)

            fut.add_done_callback(on_done)
            return

        def watch() -> None:
            try:
                self.wait([ref], 1, None)
            except Exception:  # noqa: BLE001 - shutdown: report done anyway
                pass
            fn(ref)

        threading.Thread(target=watch, name="nbcluster-dask-callback", daemon=True).start()

    def cancel(self, ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
        """Cancel: a pending task never runs; a running one gets ``TaskCancelledError``
        raised in its thread (``force`` restarts its worker)."""
        if self.done(ref):
            return False
        tid = ref.id
        task = self._tasks.get(tid)
        node = None
        with self._lock:
            if self.role == "driver":
                node = self._running.get(tid, (None,))[0]
                if task is not None:
                    self.control.dequeue(tid)  # held by the policy, or sent ahead
        if task is not None and task.actor is not None:
            self.actors.cancel_call(task)
        self._fail(tid, TaskCancelledError(ref.name or "?", tid), cancelled=True)
        addr = self._addr_of.get(node) if (self.role == "driver" and node) else None
        try:
            if force and addr is not None:
                self.client.restart_workers([addr], raise_for_error=False)
            else:
                self.run_on_workers(_remote.interrupt_task, tid,
                                    workers=[addr] if addr else None)
        except Exception:  # noqa: BLE001 - best effort: the ref is cancelled anyway
            log.debug("interrupting task %s failed", tid, exc_info=True)
        return True

    # ------------------------------------------------------------------ actors
    def create_actor(self, spec: ActorSpec) -> int:
        """Start an actor on a worker; returns its id."""
        self._check_open()
        if self.actors is None:
            raise NotImplementedError("creating actors from inside a dask task is not "
                                      "supported; create them in the driver and pass the handle")
        return self.actors.create(spec)

    def call_actor(self, actor_id: int, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a method call; calls on one actor run in submission order."""
        self._check_open()
        if self.actors is None:
            return self._call_actor_from_task(actor_id, method, args, kwargs)
        return self.actors.call(actor_id, method, args, kwargs)

    def _call_actor_from_task(self, actor_id: int, method: str, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> ObjectRef:
        """An actor call made inside a task: find the actor via scheduler metadata."""
        meta = None
        deadline = time.monotonic() + 60
        with _remote.seceded():
            while meta is None or meta[0] is None and meta[3] is None:
                meta = self.client.get_metadata(
                    [_remote.ACTOR_META, self._session(), str(actor_id)], None)
                if meta is not None and (meta[0] is not None or meta[3] is not None):
                    break
                if time.monotonic() > deadline:
                    raise ActorDiedError(f"id {actor_id}", "it did not start within 60 s")
                time.sleep(0.05)
        addr, gen, aname, dead = meta
        cid = self.next_id()
        name = f"{aname}.{method}"
        ref = ObjectRef(cid, self, name)
        if dead is not None:
            self._errors[cid] = ActorDiedError(f"{aname} (id {actor_id})", dead)
            return ref
        args2, kwargs2 = self._prepare_args(name, args, kwargs)
        with self._lock:
            seq = self._actor_seq[(actor_id, gen)]
            self._actor_seq[(actor_id, gen)] = seq + 1
        self._futs[cid] = self.client.submit(
            _remote.call_actor, self._session(), actor_id, gen, self._caller, seq, cid, method,
            args2, kwargs2, key=task_key(name, cid, self._session()), pure=False, workers=[addr], allow_other_workers=False,
            retries=0)
        return ref

    def kill_actor(self, actor_id: int, *, no_restart: bool = True) -> None:
        """Drop the actor's instance; pending and later calls raise ``ActorDiedError``."""
        if self.actors is None:
            raise NotImplementedError("killing actors from inside a dask task is not supported")
        self.actors.kill(actor_id, no_restart=no_restart)

    # ------------------------------------------------------------------ time
    def sleep(self, seconds: float) -> None:
        """Real sleep (lends the worker thread when called inside a task)."""
        time.sleep(seconds)

    def now(self) -> float:
        """Seconds since this backend started."""
        return time.monotonic() - self._t0

    def describe(self) -> dict[str, Any]:
        """Backend, scheduler address, policy and autoscaler names."""
        d: dict[str, Any] = {"backend": "dask", "address": self.client.scheduler.address}
        if self.role == "driver":
            d.update(self.control.describe())
        return d

    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Set the number of workers of ``node_type`` (needs a dask cluster manager)."""
        self.control.scale(node_type, count)

    def worker_pids(self) -> list[int]:
        """Process ids of the dask worker processes (each on its own host)."""
        return sorted(int(p) for p in self.run_on_workers(os.getpid, timeout=10).values()
                      if isinstance(p, int))

    # ------------------------------------------------------------------ lifecycle
    def _bounded(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0,
                 **kwargs: Any) -> Any:
        """Run the client coroutine function ``fn`` on the client's loop, giving up after
        ``timeout`` seconds (``TimeoutError``): a blocked worker or a gone scheduler must
        never hang the driver."""
        return self.client.sync(fn, *args, callback_timeout=max(timeout, 0.01), **kwargs)

    def run_on_workers(self, fn: Callable[..., Any], *args: Any, workers: list[str] | None = None,
                       timeout: float = 5.0) -> dict[str, Any]:
        """``client.run(fn, *args)`` on ``workers`` (default all), errors ignored, bounded."""
        return self._bounded(self.client._run, fn, *args, workers=workers, on_error="ignore",
                             timeout=timeout) or {}

    def shutdown(self) -> None:
        """Stop threads, fail pending refs with ``RuntimeShutdownError``, close what we own.

        Every call to the cluster here is bounded (5 s each, 10 s in all before
        closing the client, none after one timed out), so shutdown returns even when
        a worker or the scheduler does not answer.
        """
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        if self.role == "worker":
            return
        with self._outbox_cond:
            self._outbox_cond.notify_all()
        deadline = [time.monotonic() + 10.0]

        def left() -> float:
            return min(5.0, deadline[0] - time.monotonic())

        self.control.stop()
        for topic in (_remote.TOPIC, "all"):
            try:
                self.client.unsubscribe_topic(topic)  # only sends a message
            except Exception:  # noqa: BLE001 - client already closed
                pass
        with self._lock:  # copies: the event thread may still be adding futures
            all_futs = list(self._futs.items())
            held = [tid for tid, t in list(self._tasks.items()) if not t.placed]
        pending = [tid for tid, f in all_futs if not f.done()] + held
        for tid in pending:
            self._errors.setdefault(tid, RuntimeShutdownError(
                f"the runtime was shut down before task {tid} finished"))
        futs = [f for _, f in all_futs if not f.done()]
        try:
            if futs and left() > 0:
                self._bounded(self.client._cancel, futs, force=True, timeout=left())
            if self._running and left() > 0:
                self.run_on_workers(_remote.interrupt_tasks, sorted(self._running),
                                    timeout=left())
        except TimeoutError:  # a worker (or the scheduler) does not answer: stop asking
            deadline[0] = time.monotonic()
        except Exception:  # noqa: BLE001 - scheduler gone
            log.debug("cancelling at shutdown failed", exc_info=True)
        self.actors.shutdown(left)
        if self._poller.is_alive():
            self._poller.join(timeout=2 * self.poll_interval + 1)
        if self._owns_client:
            try:
                self.client.close(timeout=10)
            except Exception:  # noqa: BLE001 - already closed
                pass
        if self._owns_cluster and self._cluster is not None:
            try:
                self._cluster.close(timeout=20)
            except Exception:  # noqa: BLE001 - already closed
                pass
        self.log.detach()


_remote.BACKEND_CLASS = DaskBackend  # the class a worker process installs
