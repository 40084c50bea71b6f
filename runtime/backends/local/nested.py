"""Requests from inside workers: nested submit, get, wait, put, actors.

A worker's :class:`~.client.ClientBackend` sends ``("req", id, kind, payload)``;
the reader thread answers here. ``get``/``wait`` that cannot be answered at once
*block* the task: its CPU is lent back to the node (``task_blocked``) until the
objects are ready, then re-acquired with priority over new starts
(``task_unblocked``) before the reply goes out. A timed-out or interrupted
request is *abandoned* by the worker and answered with ``("timeout",)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.backends.local.objects import _OK, _PENDING, _Obj
from runtime.backends.local.protocol import sys_error_record
from runtime.errors import ObjectLostError
from runtime.events import EventKind as K
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.backends.local.backend import _Task
    from runtime.backends.local.pool import WorkerProc

__all__ = ["NestedMixin"]


class NestedMixin:
    """The nested-request half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _reply(self, w: WorkerProc, req_id: int, payload: Any) -> None:
        if not w.send(("reply", req_id, payload)):
            self._on_death(w, "its connection was closed")

    def _on_request(self, w: WorkerProc, req_id: int, kind: str, p: Any) -> None:
        try:
            if kind in ("get", "wait"):
                self._blocking_request(w, req_id, kind, p)
                return
            if kind == "submit":
                out: Any = self._submit_remote(*p)
                parent = w.task if w.task is not None else None
                if parent is not None:  # for recursive cancel
                    self._children.setdefault(parent.id, []).append(out[0])
            elif kind == "put":
                out = self.next_id()
                o = self._objs[out] = _Obj()
                o.state, o.blob, o.escaped = _OK, self._track(p), True
            elif kind == "done":
                o = self._objs.get(p)
                out = o is None or o.state != _PENDING
            elif kind == "cancel":
                out = self._cancel_locked(p[0], p[1], True)
            elif kind == "create_actor":
                out = self._create_actor_remote(*p)
            elif kind == "call_actor":
                out = self._call_actor_locked(*p, escaped=True)
            elif kind == "kill_actor":
                self._kill_actor_locked(*p)
                out = None
            elif kind == "nodes":
                out = self.index.nodes()
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # noqa: BLE001 - the error goes back to the task
            out = ("error", sys_error_record(exc, self._pid))
        self._reply(w, req_id, out)

    def _blocking_request(self, w: WorkerProc, req_id: int, kind: str, p: Any) -> None:
        ids = p[0]
        need = len(ids) if kind == "get" else p[1]
        if kind == "wait" and p[2] == 0:
            need = 0

        def ready() -> None:
            t = w.task
            w.blocked_req = None
            if t is not None and t.lent is not None:
                t.state = "resuming"
                self._pending_reply[t.id] = (w, req_id, kind, p)
                self._unblock.append(t)
                if len(self._unblock) == 1 and t.lent.fits(self.index.node(t.node).free):
                    self._unblock.popleft()
                    self._resume(t)
            else:
                self._send_result(w, req_id, kind, p)

        waiter = None if need == 0 else self._watch(ids, need, ready)
        if waiter is None:
            self._send_result(w, req_id, kind, p)
            return
        w.blocked_req = (req_id, kind, p, waiter)
        u = w.queued
        if u is not None:  # a task sent ahead must not wait behind a blocked one
            w.queued = None
            w.send(("skip", u.id))
            u.state, u.worker = "waiting", None
            if u.cancelled:
                self._cancelled(u)
            else:
                self._make_ready(u)
        t = w.task
        if t is not None and t.info is not None:
            cpu = t.info.request.get("CPU", 0.0)
            if cpu > 0:
                t.lent = Resources._trusted({"CPU": cpu})
                self.index.release(t.id, t.lent, keep_running=True)
            self.events.emit(self.now(), K.TASK_BLOCKED, t.id, t.node)
            self._schedule()

    def _send_result(self, w: WorkerProc, req_id: int, kind: str, p: Any) -> None:
        objs = self._objs
        if kind == "timeout":
            out: Any = ("timeout",)
        elif kind == "get":
            out = []
            for i in p[0]:
                o = objs.get(i)
                if o is None:
                    out.append((False, sys_error_record(ObjectLostError(f"object {i} is gone"),
                                                        self._pid)))
                else:
                    out.append((o.state == _OK, o.blob))
        else:
            out = [k for k, i in enumerate(p[0]) if (o := objs.get(i)) is None or o.state]
            out = out[: p[1]]
        self._reply(w, req_id, out)

    def _resume(self, t: _Task) -> None:
        """A lender's objects are ready and its CPU is free again: take it back, reply."""
        if t.lent is not None:
            self.index.reacquire(t.id, t.lent)
            t.lent = None
        t.state = "running"
        self.events.emit(self.now(), K.TASK_UNBLOCKED, t.id, t.node)
        entry = self._pending_reply.pop(t.id, None)
        if entry is not None:
            self._send_result(*entry)

    def _on_abandon(self, w: WorkerProc, req_id: int) -> None:
        t = w.task
        if w.blocked_req is not None and w.blocked_req[0] == req_id:
            w.blocked_req[3].fired = True  # its waiter may still be hit: make that a no-op
            w.blocked_req = None
            if t is not None and t.lent is not None:
                t.state = "resuming"
                self._pending_reply[t.id] = (w, req_id, "timeout", None)
                self._unblock.append(t)
                self._schedule()
                return
            self._reply(w, req_id, ("timeout",))
            return
        if t is not None and t.id in self._pending_reply and \
                self._pending_reply[t.id][1] == req_id:
            return  # a reply is already on its way, once the CPU is back
        # the reply was already sent: the worker will read it
