"""The local backend's reader thread: one loop that hears every worker.

It polls every worker connection (and writes what a worker could not take yet),
folds results in, answers nested requests, and notices a dead worker at once:
its pipe closes, so the task on it is retried (``max_retries``) or fails with
``WorkerCrashedError``, and an actor restarts or dies. It takes the backend's
lock once per wake-up and schedules once per wake-up.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from runtime.backends.local.objects import _ERR, _OK
from runtime.backends.local.protocol import error_from_record, loads, sys_error_record
from runtime.errors import TaskCancelledError, WorkerCrashedError
from runtime.events import EventKind as K

if TYPE_CHECKING:
    from runtime.backends.local.backend import _Task
    from runtime.backends.local.pool import WorkerProc

__all__ = ["ReaderMixin"]


class ReaderMixin:
    """The reader-thread half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _read_loop(self) -> None:
        while not self._closed:
            try:
                self._read_forever()
            except Exception as exc:  # noqa: BLE001 - never let the one reader die
                self.errors.append(exc)
                time.sleep(0.01)

    def _read_forever(self) -> None:
        wake = self._wake_r
        IN, OUT = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR, select.POLLOUT
        while not self._closed:
            by_fd: dict[int, WorkerProc] = {}
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            for w in list(self._workers.values()):
                try:
                    fd = w.conn.fileno()
                except (OSError, ValueError):
                    continue
                by_fd[fd] = w
                poller.register(fd, IN | OUT if w.outbuf else IN)
            try:
                ready = poller.poll(self._scale_tick())
            except (OSError, ValueError):
                time.sleep(0.001)
                continue
            if not ready and self._scaling:
                with self._lock:
                    self._maybe_autoscale(force=True)
                continue
            for fd, ev in ready:
                if fd == wake:
                    try:
                        os.read(wake, 4096)
                    except OSError:
                        pass
                    continue
                w = by_fd.get(fd)
                if w is None or w.dead:
                    continue
                if ev & OUT and not w.flush_out():
                    with self._lock:
                        self._on_death(w, "its connection was closed")
                    continue
                if not ev & IN:
                    continue
                c = w.conn
                msgs = []
                dead = False
                try:
                    msgs.append(c.recv_bytes())
                    n = 1
                    while n < 256 and c.poll(0):
                        msgs.append(c.recv_bytes())
                        n += 1
                except (EOFError, OSError):
                    dead = True
                with self._lock:
                    if self._closed:
                        return
                    self._drain_refcounts()
                    for raw in msgs:
                        m = loads(raw)
                        for sub in (m[1] if m[0] == "batch" else (m,)):
                            try:
                                self._handle(w, sub)
                            except Exception as exc:  # noqa: BLE001 - keep serving the rest
                                self.errors.append(exc)
                    try:
                        if dead:
                            self._on_death(w, "its process exited")
                        if self._dirty:
                            self._dirty = False
                            self._schedule()
                    except Exception as exc:  # noqa: BLE001 - keep serving the rest
                        self.errors.append(exc)

    def _handle(self, w: WorkerProc, m: Any) -> None:
        kind = m[0]
        if kind == "done":
            self._on_done(w, m[1], m[2], m[3])
        elif kind == "out":
            try:
                self.on_output(m[1], m[2], m[3])
            except Exception:  # noqa: BLE001 - output must never break the runtime
                pass
        elif kind == "req":
            self._on_request(w, m[1], m[2], m[3])
        elif kind == "abandon":
            self._on_abandon(w, m[1])
        elif kind == "cancelled":
            t = self._tasks.get(m[1])
            if t is not None:
                self._on_cancelled(w, t)
        elif kind == "actor_ready":
            self._on_actor_ready(w, m[1], m[2], m[3])
        elif kind == "hello":
            w.ready = True

    def _on_done(self, w: WorkerProc, tid: int, ok: bool, blob: Any) -> None:
        t = self._tasks.get(tid)
        if t is None or t.state == "done":
            self._drop_blob(blob)
            return
        if t.actor is not None:
            self._on_call_done(w, t, ok, blob)
            return
        u = self._task_over(w, t)
        if t.cancelled:
            self._drop_blob(blob)
            self._cancelled(t)
        elif ok:
            self.events.emit(self.now(), K.TASK_FINISHED, tid, t.node, name=t.name)
            self._finish(t, _OK, blob)
        elif self._retry_exception(t, blob):
            self._drop_blob(blob)
            self.events.emit(self.now(), K.TASK_RETRIED, tid, t.node, attempt=t.attempt,
                             reason="exception")
            t.state = "waiting"
            self._make_ready(t)
        else:
            err = error_from_record(blob)
            self.events.emit(self.now(), K.TASK_FAILED, tid, t.node, name=t.name,
                             error=getattr(err, "cause_type", type(err).__name__),
                             reason="exception")
            self._finish(t, _ERR, blob)
        self._started_ahead(u)
        self._dirty = True

    def _retry_exception(self, t: _Task, blob: Any) -> bool:
        rex = t.retry_exceptions
        if not rex or not (t.max_retries == -1 or t.attempt <= t.max_retries):
            return False
        err = error_from_record(blob)
        cause = getattr(err, "cause", None)
        if cause is None:
            return False
        return rex is True or isinstance(cause, tuple(rex))

    def _on_cancelled(self, w: WorkerProc, t: _Task) -> None:
        if t.actor is not None:
            self._on_call_done(w, t, False, sys_error_record(
                TaskCancelledError(t.name, t.id), self._pid))
            return
        u = self._task_over(w, t)
        self._cancelled(t)
        self._started_ahead(u)
        self._dirty = True

    def _cancelled(self, t: _Task) -> None:
        self.events.emit(self.now(), K.TASK_CANCELLED, t.id, t.node, name=t.name)
        self._finish(t, _ERR, sys_error_record(TaskCancelledError(t.name, t.id), self._pid))

    def _on_death(self, w: WorkerProc, why: str) -> None:
        if w.dead:
            return
        w.dead = True
        self._workers.pop(w.conn, None)
        threading.Thread(target=w.reap, daemon=True).start()
        if self._closed:
            return
        self.events.emit(self.now(), K.WORKER_DIED, None, w.node, pid=w.pid,
                         reason="retired (an extra idle worker)" if w.retiring else why)
        idle = self._idle.get(w.node)
        if idle is not None and w in idle:
            idle.remove(w)
        if w.actor is not None:
            self._on_actor_death(w, why)
            self._schedule()
            return
        u, w.queued = w.queued, None
        if u is not None and u.state == "queued":  # sent ahead, never started: ready again
            u.state, u.worker = "waiting", None
            if u.cancelled:
                self._cancelled(u)
            else:
                self._make_ready(u)
        t, w.task = w.task, None
        if t is not None:
            self._preempting.discard(t.id)
        if t is not None and t.state == "running":
            if t in self._unblock:
                self._unblock.remove(t)
            self._release(t)
            if t.cancelled:
                self._cancelled(t)
            elif t.max_retries == -1 or t.attempt <= t.max_retries:
                self.events.emit(self.now(), K.TASK_RETRIED, t.id, t.node, attempt=t.attempt,
                                 reason=f"worker {w.label} died")
                t.state, t.worker = "waiting", None
                self._make_ready(t)
            else:
                self.events.emit(self.now(), K.TASK_FAILED, t.id, t.node, name=t.name,
                                 error="WorkerCrashedError", reason=f"worker {w.label} died")
                self._finish(t, _ERR, sys_error_record(WorkerCrashedError(
                    t.name, t.id, t.attempt, w.label, why), self._pid))
        self._schedule()
