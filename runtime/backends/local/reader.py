"""The local backend's reader thread: one loop that hears every worker.

It polls every worker connection (and writes what a worker could not take yet),
folds results in, answers nested requests, and notices a dead worker at once:
its pipe closes, so the task on it is retried (``max_retries``) or fails with
``WorkerCrashedError``, and an actor restarts or dies. It takes the backend's
lock once per wake-up and schedules once per wake-up.

A death noticed elsewhere (a send that fails while the scheduler walks the
workers) is only queued (:meth:`ReaderMixin._on_death`) and handled by this
thread at its next safe point, so no loop over the workers ever sees the table
change under it.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from runtime.backends.local.objects import _ERR, _OK
from runtime.backends.local.protocol import error_from_record, loads, sys_error_record
from runtime.backends.local.records import ON_WORKER, OVER
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
        undrained = False
        while not self._closed:
            if self._death_q:
                with self._lock:
                    self._handle_deaths()
            if undrained and self._rc_q:
                undrained = not self._try_drain()
            by_fd: dict[int, WorkerProc] = {}
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            for w in self._snapshot():
                try:
                    fd = w.conn.fileno()
                except (OSError, ValueError):
                    continue
                by_fd[fd] = w
                poller.register(fd, IN | OUT if w.outbuf else IN)
            try:
                ready = poller.poll(10 if undrained else self._scale_tick())
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
                    if self._rc_q:  # refs dropped in the driver: free what nothing holds
                        undrained = not self._try_drain()
                    continue
                w = by_fd.get(fd)
                if w is None or w.dead:
                    continue
                if ev & OUT and not w.flush_out():
                    with self._lock:
                        self._on_death(w, "its connection was closed")
                        self._handle_deaths()
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
                        if self._death_q:
                            self._handle_deaths()
                        if self._dirty:
                            self._dirty = False
                            self._schedule()
                    except Exception as exc:  # noqa: BLE001 - keep serving the rest
                        self.errors.append(exc)

    def _try_drain(self) -> bool:
        """Fold in the driver's ref drops if the lock is free now (never wait for it:
        whoever holds it may need this thread to read a worker)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._drain_refcounts()
        finally:
            self._lock.release()
        return True

    def _snapshot(self) -> list[WorkerProc]:
        """The workers now; other threads add and remove some meanwhile (a GC pause can
        let them in even while ``list()`` copies), so retry until a copy is whole."""
        while True:
            try:
                return list(self._workers.values())
            except RuntimeError:  # dictionary changed size during iteration
                continue

    def _handle(self, w: WorkerProc, m: Any) -> None:
        kind = m[0]
        if kind == "done":
            self._on_done(w, m[1], m[2], m[3])
        elif kind == "refs":
            self._on_worker_refs(w, m[1])
        elif kind == "req" and m[2][0] == "r":  # rput, rsubmit, rcall_actor: ref-counted
            self._on_counted_request(w, m[1], m[2], m[3])
        elif kind == "esc":
            self._on_worker_escaped(m[1])
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
        if t is None or t.state in OVER:
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
            self._settle(t, K.TASK_FINISHED, _OK, blob)
        elif self._retry_exception(t, blob):
            self._drop_blob(blob)
            self._retry(t, "exception")
        else:
            err = error_from_record(blob)
            self._settle(t, K.TASK_FAILED, _ERR, blob,
                         error=getattr(err, "cause_type", type(err).__name__),
                         reason="exception")
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
        self._settle(t, K.TASK_CANCELLED, _ERR, sys_error_record(
            TaskCancelledError(t.name, t.id), self._pid))

    def _on_death(self, w: WorkerProc, why: str) -> None:
        """``w`` is gone: stop using it now; the reader thread handles the rest at its
        next safe point (callers may be walking the worker table)."""
        if w.dead:
            return
        w.dead = True
        self._death_q.append((w, why))
        self._wake()

    def _handle_deaths(self) -> None:
        """Handle the queued deaths (reader thread, under the lock)."""
        q = self._death_q
        while q:
            w, why = q.popleft()
            try:
                self._worker_died(w, why)
            except Exception as exc:  # noqa: BLE001 - keep serving the rest
                self.errors.append(exc)
        if self._dirty:
            self._dirty = False
            self._schedule()

    def _worker_died(self, w: WorkerProc, why: str) -> None:
        self._workers.pop(w.conn, None)
        self._release_worker_refs(w)
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
        if u is not None and u.stage == "ahead":  # sent ahead, never started: ready again
            self._recall(u)
        t, w.task = w.task, None
        lost = [t] + [f[0] for f in reversed(w.frames)]  # and the tasks it ran inside of
        w.frames.clear()
        for t in lost:
            if t is not None and t.state in ON_WORKER:
                self._lost_with(w, t, why)
        self._unpark_any()  # a slot under the worker cap freed
        self._schedule()

    def _lost_with(self, w: WorkerProc, t: _Task, why: str) -> None:
        """``t`` ran on ``w``, which died: run it again, or fail it."""
        self._release(t)
        if t.cancelled:
            self._cancelled(t)
        elif t.max_retries == -1 or t.attempt <= t.max_retries:
            self._retry(t, f"worker {w.label} died")
        else:
            self._settle(t, K.TASK_FAILED, _ERR, sys_error_record(WorkerCrashedError(
                t.name, t.id, t.attempt, w.label, why), self._pid),
                error="WorkerCrashedError", reason=f"worker {w.label} died")
