"""Requests from inside workers: nested submit, get, wait, put, actors.

A worker's :class:`~.client.ClientBackend` sends ``("req", id, kind, payload)``;
the reader thread answers here. ``get``/``wait`` that cannot be answered at once
*block* the task: its CPU is lent back to the node through the control plane
(``task_blocked``) until the objects are ready, then re-acquired with priority over
new starts (the plane's ``want_back``; ``task_unblocked``) before the reply goes
out. A timed-out or interrupted request is *abandoned* by the worker and answered
with ``("timeout",)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.backends.local.objects import _OK, _PENDING
from runtime.backends.local.protocol import sys_error_record
from runtime.backends.local.records import ON_WORKER
from runtime.errors import ObjectLostError
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
            out: Any
            if kind == "done":  # put/submit/actor calls are counted: objects.py
                o = self._objs.get(p)
                out = o is None or o.state != _PENDING
            elif kind == "cancel":
                out = self._cancel_locked(p[0], p[1], True)
            elif kind == "create_actor":
                out = self._create_actor_remote(*p)
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

        blocked = w.task  # a task may later run inside this wait: w.task is then that one

        def ready() -> None:
            t = blocked
            self._unblock(w, req_id)
            if t is not None and t.info is not None and t.state in ON_WORKER:
                self._answer(w, t, (w, req_id, kind, p))
                if self._dirty:
                    self._dirty = False
                    self._schedule()
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
            self._recall(u)
        t = w.task
        if t is not None and t.info is not None:
            cpu = t.info.request.get("CPU", 0.0)
            t.lent = Resources._trusted({"CPU": cpu}) if cpu > 0 else None
            t.state = "blocked"
            self.plane.lend(t.id, {"CPU": cpu} if cpu > 0 else {})
            if self._parked:  # at the worker cap: a parked task of this node runs inside
                self._unpark(w.node, w)
            self._schedule()

    def _answer(self, w: WorkerProc, t: _Task, entry: tuple[Any, ...]) -> None:
        """``t``'s wait is over: it takes back what it lent, then gets ``entry``'s reply.
        A task with others running inside its wait does so once they returned (until then
        it could not go on anyway, and must not hold a CPU they need)."""
        if t is not w.task:
            self._deferred[t.id] = entry
            return
        t.state, t.stage = "blocked", "resuming"
        self._pending_reply[t.id] = entry
        if self.plane.want_back(t.id):
            self._resume(t)
        else:
            self._dirty = True  # a round serves it when what it lent is free again

    def _unblock(self, w: WorkerProc, req_id: int) -> Any:
        """The blocked request ``req_id`` of ``w`` is answered: forget it (at the top, or
        in the frame of a task that has another running inside its wait); returns it."""
        req = w.blocked_req
        if req is not None and req[0] == req_id:
            w.blocked_req = None
            return req
        i = self._frame_of(w, req_id)
        if i is None:
            return None
        task, req = w.frames[i]
        w.frames[i] = (task, None)
        return req

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
        """A lender's objects are ready and the plane gave its CPU back: reply."""
        t.lent = None
        t.state, t.stage = "running", ""
        entry = self._pending_reply.pop(t.id, None)
        if entry is not None:
            self._send_result(*entry)

    def _on_abandon(self, w: WorkerProc, req_id: int) -> None:
        i = self._frame_of(w, req_id)
        t = w.frames[i][0] if i is not None else w.task
        req = self._unblock(w, req_id)
        if req is not None:
            req[3].fired = True  # its waiter may still be hit: make that a no-op
            if t is not None and t.info is not None and t.state in ON_WORKER:
                self._answer(w, t, (w, req_id, "timeout", None))
                if self._dirty:
                    self._dirty = False
                    self._schedule()
                return
            self._reply(w, req_id, ("timeout",))
            return
        for task in [w.task, *(f[0] for f in w.frames)]:
            if task is not None and task.id in self._pending_reply and \
                    self._pending_reply[task.id][1] == req_id:
                return  # a reply is already on its way, once the CPU is back
        # the reply was already sent: the worker will read it
