"""The local backend's object table: values and errors by id, waiters, reference counts.

Every task result and ``put`` value is a blob (see :mod:`.store`) kept in the
driver. ``get``/``wait`` register a waiter that fires when enough objects settle.
An object is freed (and its segment unlinked) once nothing refers to it: no
``ObjectRef`` in the driver, none in any worker process (workers report the refs
they create and drop, see :meth:`ObjectsMixin._on_worker_refs`), no pending task
that needs it, and no live object whose value holds a ref to it. A ref the driver
pickles into another value pins its object for the session, as does one a task
pickles by itself (outside a result, a ``put`` or a call).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from runtime.backends.local import store
from runtime.backends.local.protocol import error_from_record, sys_error_record
from runtime.backends.local.records import ON_WORKER
from runtime.errors import GetTimeoutError, ObjectLostError, RuntimeShutdownError
from runtime.refs import ObjectRef

if TYPE_CHECKING:
    from runtime.backends.local.pool import WorkerProc

__all__ = ["ObjectsMixin"]

_PENDING, _OK, _ERR = 0, 1, 2

class _Obj:
    __slots__ = ("state", "blob", "waiters", "callbacks", "dependents", "refs", "pins",
                 "escaped", "unwanted", "wrefs", "contained")

    def __init__(self) -> None:
        self.state = _PENDING
        self.blob: Any = None
        self.waiters: list[_Waiter] | None = None
        self.callbacks: list[Callable[[], None]] | None = None
        self.dependents: list[Any] | None = None
        self.refs = 0
        self.pins = 0
        self.escaped = False
        self.unwanted = False
        self.wrefs = 0  # refs alive in worker processes
        self.contained: list[int] | None = None  # objects this one pins (refs in its value)


class _Waiter:
    __slots__ = ("left", "fire", "fired")

    def __init__(self, left: int, fire: Callable[[], None]) -> None:
        self.left = left
        self.fire = fire
        self.fired = False

    def hit(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.fired:
            self.fired = True
            self.fire()


class ObjectsMixin:
    """The object half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _init_objects(self, shm_dir: str | None = None, shm_size: Any = None,
                      spill_dir: str | None = None) -> None:
        """Configure the object store (options, else environment) and sweep the segments
        of drivers that crashed; set up the reader's queue of deaths to handle."""
        store.configure(shm_dir, shm_size, spill_dir)
        #: Segment files and bytes of crashed drivers this ``init`` removed.
        self.swept = store.sweep_orphans()
        self._death_q: collections.deque[tuple[WorkerProc, str]] = collections.deque()

    def _ref_created(self, oid: int) -> None:
        self._rc_q.append(oid)

    def _ref_deleted(self, oid: int) -> None:
        q = self._rc_q
        idle = not q
        q.append(-oid)
        if idle and not self._closed:  # let the reader free it soon (not at the next call)
            self._wake()

    def _escaped(self, oid: int) -> None:
        o = self._objs.get(oid)
        if o is not None:
            o.escaped = True

    def _drain_refcounts(self) -> None:
        q = self._rc_q
        objs = self._objs
        while q:
            oid = q.popleft()
            o = objs.get(abs(oid))
            if o is None:
                continue
            if oid > 0:
                o.refs += 1
            else:
                o.refs -= 1
                if o.refs <= 0:
                    self._maybe_free(abs(oid), o)

    def _maybe_free(self, oid: int, o: _Obj) -> None:
        stack = [(oid, o)]
        objs = self._objs
        while stack:
            oid, o = stack.pop()
            if o.refs > 0 or o.pins > 0 or o.escaped or o.wrefs > 0:
                continue
            if o.state == _PENDING:
                o.unwanted = True
                continue
            if objs.pop(oid, None) is None:
                continue
            self._drop_blob(o.blob)
            inner, o.contained = o.contained, None
            for cid in inner or ():  # the refs its value held no longer pin their objects
                c = objs.get(cid)
                if c is not None:
                    c.pins -= 1
                    if c.pins <= 0:
                        stack.append((cid, c))

    def _pin_contained(self, o: _Obj, ids: Iterable[int]) -> None:
        """``o``'s value holds refs to ``ids``: keep those objects while ``o`` lives."""
        objs = self._objs
        for cid in ids:
            c = objs.get(cid)
            if c is None:
                continue
            c.pins += 1
            if o.contained is None:
                o.contained = [cid]
            else:
                o.contained.append(cid)

    # ---------------------------------------------------------- refs held in workers
    def _on_worker_refs(self, w: WorkerProc, pairs: list[tuple[int, int]]) -> None:
        """A worker created (+n) or dropped (-n) refs to these objects."""
        objs = self._objs
        held = w.held
        for oid, n in pairs:
            o = objs.get(oid)
            if o is None:
                continue
            o.wrefs += n
            left = held.get(oid, 0) + n
            if left > 0:
                held[oid] = left
            else:
                held.pop(oid, None)
            if n < 0 and o.wrefs <= 0:
                self._maybe_free(oid, o)

    def _on_worker_escaped(self, ids: list[int]) -> None:
        """A task pickled these refs by itself: keep their objects for the session."""
        for oid in ids:
            o = self._objs.get(oid)
            if o is not None:
                o.escaped = True

    def _release_worker_refs(self, w: WorkerProc) -> None:
        """A worker died: the refs it held are gone."""
        held, w.held = w.held, {}
        objs = self._objs
        for oid, n in held.items():
            o = objs.get(oid)
            if o is not None:
                o.wrefs -= n
                if o.wrefs <= 0:
                    self._maybe_free(oid, o)

    def _worker_holds(self, w: WorkerProc, oid: int) -> None:
        """Count the ref a worker's request creates (it does not report that one)."""
        o = self._objs.get(oid)
        if o is not None:
            o.escaped = False
            o.wrefs += 1
            w.held[oid] = w.held.get(oid, 0) + 1

    def _on_counted_request(self, w: WorkerProc, req_id: int, kind: str, p: Any) -> None:
        """``put``, ``submit`` and actor calls from inside a task, reference-counted: the
        object lives while refs to it exist in the worker (and anywhere else)."""
        try:
            if kind == "rput":
                oid = self.next_id()
                o = self._objs[oid] = _Obj()
                o.state, o.blob = _OK, self._track(p)
                self._pin_contained(o, store.contained(p))
                out: Any = oid
            elif kind == "rsubmit":
                out = self._submit_remote(*p)
                oid = out[0]
                parent = w.task
                if parent is not None:  # for recursive cancel
                    self._children.setdefault(parent.id, []).append(oid)
            elif kind == "rcall_actor":
                oid = out = self._call_actor_locked(*p)
            else:
                raise ValueError(f"unknown request {kind!r}")
            o = self._objs.get(oid)
            if o is not None and kind != "rput":  # refs inside its arguments
                deps = set(p[3])
                self._pin_contained(o, [i for i in store.contained(p[2]) if i not in deps])
            self._worker_holds(w, oid)
        except Exception as exc:  # noqa: BLE001 - the error goes back to the task
            out = ("error", sys_error_record(exc, self._pid))
        self._reply(w, req_id, out)

    def _drop_blob(self, blob: Any) -> None:
        if blob is not None and blob[2] is not None:
            name = blob[2][0]
            self._segments.discard(name)
            store.unlink(name)

    def _track(self, blob: Any) -> Any:
        if blob[2] is not None:
            self._segments.add(blob[2][0])
            if store.is_spilled(blob):
                store.note_spilled(blob[2][0], store.blob_size(blob))
        return blob

    def _complete(self, oid: int, state: int, blob: Any) -> None:
        """Settle an object (under the lock): wake waiters, run callbacks, release dependents."""
        o = self._objs.get(oid)
        self._tasks.pop(oid, None)
        self._children.pop(oid, None)
        if o is None or o.state != _PENDING:
            self._drop_blob(blob)
            return
        o.state, o.blob = state, self._track(blob)
        if len(blob) > 3 and blob[3]:
            self._pin_contained(o, blob[3])
        if o.waiters:
            ws, o.waiters = o.waiters, None
            for w in ws:
                w.hit()
        if o.dependents:
            deps, o.dependents = o.dependents, None
            for t in deps:
                self._dep_done(t, o)
        if o.callbacks:
            cbs, o.callbacks = o.callbacks, None
            for cb in cbs:
                try:
                    cb()
                except Exception:  # noqa: BLE001 - a callback must not break the runtime
                    pass
        if o.unwanted:
            self._maybe_free(oid, o)

    def _fail(self, oid: int, exc: BaseException) -> None:
        self._complete(oid, _ERR, sys_error_record(exc, self._pid))

    def put(self, value: Any) -> ObjectRef:
        """Pickle once (big buffers into shared memory) and keep it in the driver."""
        blob = store.serialize(value, self._pid)
        with self._lock:
            self._check_open()
            oid = self.next_id()
            o = self._objs[oid] = _Obj()
            o.state, o.blob = _OK, self._track(blob)
        return ObjectRef(oid, self)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeShutdownError("the local cluster was shut down; call runtime.init()")

    def _value(self, oid: int) -> Any:
        o = self._objs.get(oid)
        if o is None:
            raise ObjectLostError(f"object {oid} is not known to this cluster (freed, or from "
                                  f"another runtime session)")
        if self._closed:
            raise RuntimeShutdownError(f"object {oid} is gone: the local cluster was shut "
                                       f"down (call runtime.init() again)")
        if o.state == _OK:
            return store.deserialize(o.blob)
        raise error_from_record(o.blob)

    def _watch(self, ids: Sequence[int], need: int, fire: Callable[[], None]) -> _Waiter | None:
        """Register ``fire`` for when ``need`` of ``ids`` are done (None: already are)."""
        pend = [self._objs[i] for i in ids if i in self._objs and self._objs[i].state == _PENDING]
        done = len(ids) - len(pend)
        if done >= need:
            return None
        w = _Waiter(need - done, fire)
        for o in pend:
            if o.waiters is None:
                o.waiters = [w]
            else:
                o.waiters.append(w)
        return w

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Values in order; the first error (in ref order) is raised."""
        objs = self._objs
        ids = [r.id for r in refs]
        if not all((o := objs.get(i)) is not None and o.state for i in ids):
            ev = threading.Event()
            with self._lock:
                self._drain_refcounts()
                if self._closed and any(i in objs and objs[i].state == _PENDING for i in ids):
                    raise RuntimeShutdownError("the local cluster was shut down")
                w = self._watch(ids, len(ids), ev.set)
            if w is not None and not ev.wait(timeout):
                with self._lock:
                    w.fired = True
                    why = self._not_ready(ids)
                if not ev.is_set():
                    raise GetTimeoutError(f"get() timed out after {timeout:g} s; "
                                          f"{w.left} of {len(ids)} object(s) not ready: {why}")
        return [self._value(i) for i in ids]

    def _not_ready(self, ids: Sequence[int], most: int = 3) -> str:
        """Where each pending object's task stands (under the lock), for timeout errors."""
        parts = []
        pending = [i for i in dict.fromkeys(ids)
                   if (o := self._objs.get(i)) is not None and o.state == _PENDING]
        running = 0
        for oid in pending:
            t = self._tasks.get(oid)
            if t is not None and t.state in ON_WORKER:
                running += 1
            if len(parts) < most:
                parts.append(self._task_state(oid, t))
        if len(pending) > most:
            parts.append(f"and {len(pending) - most} more")
        tail = ("nothing was cancelled: they keep going; get() them again or cancel() them"
                if running else "none of them is running yet; nothing was cancelled")
        return "; ".join(parts) + f" ({tail})"

    def _task_state(self, oid: int, t: Any) -> str:
        if t is None:
            return f"object {oid} is pending"
        head = f"task {t.name!r} (id {oid})"
        a = t.actor
        if a is not None:
            if t.state == "running" and a.state == "alive":
                return f"{head} is running on actor {a.name} (id {a.id})"
            if a.state in ("restarting", "starting") or a.worker is None:
                return f"{head} waits for actor {a.name} (id {a.id}), which is " + \
                    ("being restarted" if a.restarts else "starting")
            if t.missing:
                return f"{head} waits for {t.missing} argument(s)"
            return f"{head} waits behind earlier calls on actor {a.name} (id {a.id})"
        if t.state in ON_WORKER and t.stage != "resuming":
            blocked = t.state == "blocked"
            return (f"{head} is running on {t.node} (attempt {t.attempt})"
                    + (", blocked in get()/wait() inside it" if blocked else ""))
        if t.stage == "resuming":
            return f"{head} is blocked, waiting for a free CPU on {t.node} to resume"
        if t.stage == "ahead":
            return f"{head} is queued behind a running task on {t.node}"
        if t.stage == "parked":
            return (f"{head} is placed on {t.node} and waits for a worker process (the cap "
                    f"of {self.worker_limit} task workers is reached; max_workers= sets it)")
        if t.stage == "inputs" and t.missing:
            return f"{head} waits for {t.missing} argument(s) to be ready"
        if t.state == "pending":
            req = t.info.request.to_dict() if t.info is not None else {}
            shape = ", ".join(f"{k}={v:g}" for k, v in sorted(req.items())) or "nothing"
            again = f" (attempt {t.attempt + 1})" if t.attempt else ""
            return f"{head} waits for a node with {shape} free{again}"
        return f"{head} is {t.state}"

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[int]:
        """Indexes of done refs once ``num_returns`` are, or when time runs out."""
        ids = [r.id for r in refs]
        if timeout is None or timeout > 0:
            ev = threading.Event()
            with self._lock:
                w = self._watch(ids, num_returns, ev.set)
            if w is not None:
                ev.wait(timeout)
                with self._lock:
                    w.fired = True
        objs = self._objs
        done = [i for i, oid in enumerate(ids) if (o := objs.get(oid)) is None or o.state]
        return done[:num_returns]

    def done(self, ref: ObjectRef) -> bool:
        """Whether the object is settled."""
        o = self._objs.get(ref.id)
        return o is None or o.state != _PENDING

    def add_done_callback(self, ref: ObjectRef, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` when settled (now, in this thread, when it already is)."""
        with self._lock:
            o = self._objs.get(ref.id)
            if o is not None and o.state == _PENDING:
                def cb() -> None:
                    fn(ref)

                if o.callbacks is None:
                    o.callbacks = [cb]
                else:
                    o.callbacks.append(cb)
                return
        fn(ref)
