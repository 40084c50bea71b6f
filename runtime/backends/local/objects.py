"""The local backend's object table: values and errors by id, waiters, reference counts.

Every task result and ``put`` value is a blob (see :mod:`.store`) kept in the
driver. ``get``/``wait`` register a waiter that fires when enough objects settle;
when the last driver-side ``ObjectRef`` to an object is gone (and no pending task
needs it, and no ref to it was pickled into another value) the object is freed
and its shared-memory segment unlinked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from runtime.backends.local import store
from runtime.backends.local.protocol import error_from_record, sys_error_record
from runtime.errors import GetTimeoutError, ObjectLostError, RuntimeShutdownError
from runtime.refs import ObjectRef

__all__ = ["ObjectsMixin"]

_PENDING, _OK, _ERR = 0, 1, 2

class _Obj:
    __slots__ = ("state", "blob", "waiters", "callbacks", "dependents", "refs", "pins",
                 "escaped", "unwanted")

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

    def _ref_created(self, oid: int) -> None:
        self._rc_q.append(oid)

    def _ref_deleted(self, oid: int) -> None:
        self._rc_q.append(-oid)

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
        if o.refs > 0 or o.pins > 0 or o.escaped:
            return
        if o.state == _PENDING:
            o.unwanted = True
            return
        del self._objs[oid]
        self._drop_blob(o.blob)

    def _drop_blob(self, blob: Any) -> None:
        if blob is not None and blob[2] is not None:
            name = blob[2][0]
            self._segments.discard(name)
            store.unlink(name)

    def _track(self, blob: Any) -> Any:
        if blob[2] is not None:
            self._segments.add(blob[2][0])
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
                if not ev.is_set():
                    raise GetTimeoutError(f"get() timed out after {timeout} s; "
                                          f"{w.left} of {len(ids)} object(s) not ready "
                                          f"(the tasks keep running)")
        return [self._value(i) for i in ids]

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
