"""The cluster view of the dask backend: workers as nodes, and the event stream.

Workers report task starts and ends on the ``nbcluster`` topic (see
:mod:`._remote`); the scheduler reports workers joining and leaving on its
``all`` topic. Both handlers run in the client's event loop, so they only queue
messages; one thread (``nbcluster-dask-events``) publishes them as runtime
events, keeps the per-node usage, and polls ``scheduler_info`` as a fallback.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from runtime.backends.dask.common import worker_shape
from runtime.cluster import NodeInfo, TaskInfo
from runtime.errors import WorkerCrashedError
from runtime.events import EventKind
from runtime.resources import Resources

__all__ = ["ClusterView"]

log = logging.getLogger("runtime.backends.dask")


class ClusterView:
    """Mixin of :class:`DaskBackend`: event handling and ``nodes()`` (driver side)."""

    # set by DaskBackend.__init__
    _inbox: queue.SimpleQueue[tuple[str, Any]]

    def _on_topic(self, event: tuple[float, Any]) -> None:
        """Task events from workers (runs in the client's loop: only queue them)."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("e") == "out":
            # a task's print output (see _remote.forward_output): to the on_output hook
            # (kernel_ext routes it to the notebook cell), else prefixed to our stdout
            tid, stream, text, root = msg.get("t"), msg.get("s"), msg.get("x") or "", msg.get("r")
            hook = getattr(self, "on_output", None)
            try:
                if hook is None:
                    import sys

                    out = sys.stderr if stream == "stderr" else sys.stdout
                    out.write("".join(f"(task {tid}) {ln}" for ln in text.splitlines(True)))
                elif root is not None:
                    hook(tid, stream, text, root=root)
                else:
                    hook(tid, stream, text)
            except Exception:  # noqa: BLE001 - output must never break the event stream
                log.debug("dask backend output hook", exc_info=True)
            return
        if isinstance(msg, dict):
            self._enqueued += 1
            self._inbox.put(("task", msg))

    def _handle_event(self, msg: dict[str, Any]) -> None:
        if msg.get("e") == "done":  # a short task: start and end in one message
            self._handle_event({**msg, "e": "start"})
            self._handle_event({"e": "end", "t": msg.get("t"), "w": msg.get("w"),
                                "d": msg.get("d"), "x": msg.get("x", 0)})
            return
        e, tid, node = msg.get("e"), msg.get("t"), msg.get("w")
        now = self.now()
        task = self._tasks.get(tid)
        if task is not None and task.actor is None and msg.get("x", 0) != task.extra:
            return  # an attempt that was moved or preempted: its ends are not the task's
        plane = self.control.plane
        if e == "end" and task is not None and msg.get("d") is not None:
            self.control.observe(task, msg["d"])
        if e == "start":
            req = Resources._trusted(dict(msg.get("r") or {})) if task is None else task.request
            if task is not None and task.actor is not None:
                req = Resources()
            with self._lock:
                if tid in self._errors:
                    return
                if tid in self._running:  # started again: its worker died mid-task
                    self._release_running(tid)
                    if task is not None:
                        plane.requeue(tid, EventKind.TASK_RETRIED, node,
                                      attempt=task.attempts + 1, reason="worker died")
                self._running[tid] = (node, req)
                used = self._used.setdefault(node, {})
                for k, v in req.items():
                    used[k] = used.get(k, 0.0) + v
                if task is None:  # submitted inside a task: the driver hears of it now
                    info = TaskInfo(tid, str(msg.get("n") or "?"), req, submitted_at=now)
                    plane.submit(info, ready=False)
                    plane.observe_start(info, node)
                    self.events.emit(now, EventKind.TASK_STARTED, tid, node, attempt=1,
                                     observed=True)
                    return
                observed = self.control.policy is None and task.actor is None
                if observed:  # dask placed it: the plane's books hold its request there
                    plane.observe_start(task.info, node)
                task.attempts = max(task.attempts, task.deaths) + 1
                task.node = node
                self.events.emit(now, EventKind.TASK_STARTED, tid, node, attempt=task.attempts,
                                 **({"observed": True} if observed else {}))
            if task.max_retries >= 0 and task.attempts > task.max_retries + 1:
                self._fail(tid, WorkerCrashedError(task.name, tid, task.attempts - 1, node,
                                                   "its worker died on each attempt"))
        elif e in ("block", "unblock"):
            with self._lock:
                entry = self._running.get(tid)
                cpu = entry[1].get("CPU", 0.0) if entry is not None else 0.0
                used = self._used.get(node)
                if used is not None and cpu:
                    sign = -1.0 if e == "block" else 1.0
                    used["CPU"] = max(used.get("CPU", 0.0) + sign * cpu, 0.0)
                if e == "block":  # its thread seceded: the CPU is lent meanwhile
                    plane.lend(tid, {"CPU": cpu} if cpu else {})
                else:  # it rejoined the pool: the CPU is back, room or not
                    plane.reacquire(tid)
        elif e == "retry":  # re-run in place on the worker (retry_exceptions)
            self.events.emit(now, EventKind.TASK_RETRIED, tid, node, attempt=msg.get("n", 1) + 1,
                             reason=f"raised {msg.get('why')}", in_place=True)
        elif e in ("end", "fail"):
            self._release_running(tid)
            if tid in self._errors:
                return
            self._terminal.add(tid)
            with self._lock:
                if e == "end":
                    plane.end(tid, EventKind.TASK_FINISHED, node)
                else:
                    plane.end(tid, EventKind.TASK_FAILED, node, error=msg.get("err"))

    def _release_running(self, tid: int) -> None:
        """Forget that ``tid`` runs (its node's usage as the views show it)."""
        with self._lock:
            entry = self._running.pop(tid, None)
            if entry is not None:
                used = self._used.get(entry[0])
                if used is not None:
                    for k, v in entry[1].items():
                        used[k] = max(used.get(k, 0.0) - v, 0.0)

    def refresh_workers(self) -> None:
        """Read the workers from the scheduler; publish node added/removed events.

        A worker that restarted under the same name (a nanny restart) has a new
        address: it is reported as removed, then added. Raises (and changes nothing)
        when the scheduler does not answer within 10 s.
        """
        # not client.scheduler_info(): it returns the client's cached identity, which
        # its periodic callback may overwrite at any moment with one that lists no
        # workers (n_workers=0) -- every worker then looked gone and actors "died"
        info = self._bounded(self.client.scheduler.identity, n_workers=-1, timeout=10.0)
        with self._refresh_lock:
            seen: dict[str, tuple[str, str, Resources, dict[str, str], str]] = {}
            addrs: dict[str, str] = {}
            for addr, w in sorted((info.get("workers") or {}).items()):
                node_id, node_type, total, labels = worker_shape({**w, "id": addr})
                state = "draining" if "closing_gracefully" in str(w.get("status", "")) else "up"
                seen[node_id] = (node_id, node_type, total, labels, state)
                addrs[node_id] = addr
            with self._lock:
                old, old_addrs = self._workers, dict(self._addr_of)
                self._workers = seen
                self._addr_of.update(addrs)
                self._name_of.update((a, n) for n, a in addrs.items())
                for nid, (_, _, total, labels, _) in seen.items():
                    self._seen_shapes[nid] = (total, labels)
            gone = sorted(n for n in old if n not in seen or addrs[n] != old_addrs.get(n))
            new = sorted(n for n in seen if n not in old or addrs[n] != old_addrs.get(n))
            for nid in gone:
                self._removal_report(old_addrs.get(nid))
                with self._lock:
                    lost = sorted(t for t, (n, _) in self._running.items() if n == nid)
                    for t in lost:
                        self._release_running(t)
                    self._used.pop(nid, None)
                self.control.node_removed(nid, lost)
                self.actors.node_removed(nid)
            for nid in new:
                self.control.node_added(nid)
            for nid in sorted(set(seen) & set(old)):
                if nid not in new and seen[nid][4] != old[nid][4]:
                    with self._lock:
                        if nid in self.control.index:
                            self.control.plane.set_node_state(nid, seen[nid][4])
            with self._lock:
                for nid in [n for n in self._addr_of if n not in seen]:
                    del self._addr_of[nid]

    def _on_all(self, event: tuple[float, Any]) -> None:
        """Scheduler events (runs in the client's loop: only queue work, never block)."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") in ("add-worker", "remove-worker"):
            self._enqueued += 1
            self._inbox.put(("all", msg))

    def _removal_report(self, addr: str | None) -> None:
        """Handle the scheduler's remove-worker report of ``addr`` before its node is
        dropped, also when a poll noticed the removal before the report arrived: it
        names the tasks that were running there, even those whose start event died
        with the worker (the policy path moves such tasks at once)."""
        if addr is None or addr in self._removals_seen:
            return
        try:
            events = self._bounded(self.client.scheduler.events, topic="all", timeout=5.0)
        except Exception:  # noqa: BLE001 - scheduler busy or gone: the poll goes on
            return
        for _, msg in reversed(events or ()):
            if isinstance(msg, dict) and msg.get("action") == "remove-worker" and \
                    msg.get("worker") == addr:
                self._on_worker_removed(msg)
                return

    def _on_worker_removed(self, msg: dict[str, Any]) -> None:
        """Count a death against each task the worker was running (dask's 'suspicious')."""
        addr = msg.get("worker")
        if addr in self._removals_seen:
            return  # handled when a poll noticed it first
        self._removals_seen.add(addr)
        # by name, also when the poll already dropped the worker (never by address)
        node = self._name_of.get(addr) or next(
            (n for n, a in self._addr_of.items() if a == addr), None)
        if node is None:
            try:
                self.refresh_workers()
            except Exception:  # noqa: BLE001 - scheduler busy: fall back below
                pass
            node = self._name_of.get(addr, str(addr))
        if msg.get("expected"):
            # retired or closed on purpose: it no longer makes requests feasible
            if self._addr_of.get(node, addr) == addr:
                self._seen_shapes.pop(node, None)
            return
        for key in sorted(map(str, msg.get("processing-tasks") or ())):
            tid = self._key_ids.get(key)
            task = self._tasks.get(tid) if tid is not None else None
            if task is None or tid in self._errors or task.actor is not None:
                continue
            if key in self._death_counted:
                continue  # counted when the policy moved the task (Control.node_removed)
            task.deaths += 1
            if task.attempts < task.deaths:  # its start event died with the worker
                task.attempts = task.deaths
                self.events.emit(self.now(), EventKind.TASK_STARTED, tid, node,
                                 attempt=task.attempts)
            if task.max_retries >= 0 and task.deaths >= task.max_retries + 1:
                self._fail(tid, WorkerCrashedError(task.name, tid, task.deaths, node,
                                                   "its worker died while running it"))
            elif self.control.policy is None:  # dask runs it again by itself
                with self._lock:
                    self.control.plane.requeue(tid, EventKind.TASK_RETRIED, node,
                                               attempt=task.deaths + 1, reason="worker died")
            # with a policy, the plane moves it when its node goes (Control.node_removed)

    def _event_loop(self) -> None:
        """One thread handles task events, scheduler events and the periodic poll."""
        next_poll = time.monotonic() + self.poll_interval
        while not self._closed:
            try:
                item = self._inbox.get(timeout=max(next_poll - time.monotonic(), 0.001))
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    source, msg = item
                    try:
                        if source == "task":
                            self._handle_event(msg)
                        else:
                            if msg.get("action") == "remove-worker":
                                self._on_worker_removed(msg)
                            self.refresh_workers()
                    finally:
                        self._processed += 1
                    if self._processed >= self._enqueued:
                        self.control.place_if_dirty()
                        with self._cond:
                            self._cond.notify_all()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_interval
                    self.refresh_workers()
                    self._collect()
                    self.control.sweep()
            except Exception:  # noqa: BLE001 - scheduler gone for a moment
                if not self._closed:
                    log.debug("dask backend event loop", exc_info=True)

    def node_shapes(self) -> list[tuple[str, Resources, dict[str, str]]]:
        """``(node id, total, labels)`` of every worker (for feasibility checks)."""
        return [(n, t, lb) for n, (_, _, t, lb, _) in sorted(self._workers.items())]

    def seen_shapes(self) -> list[tuple[str, Resources, dict[str, str]]]:
        """``(node id, total, labels)`` of workers seen this session that are not connected
        now (restarting after a crash, or briefly gone); workers retired on purpose are
        forgotten."""
        return [(n, t, lb) for n, (t, lb) in sorted(self._seen_shapes.items())
                if n not in self._workers]

    def nodes(self) -> list[NodeInfo]:
        """Every worker as a node, in id order; free = total - requests of running tasks."""
        if self.role != "driver":
            raise NotImplementedError("nodes() is only available in the driver")
        out = []
        with self._lock:
            for nid in sorted(self._workers):
                _, ntype, total, labels, state = self._workers[nid]
                used = self._used.get(nid, {})
                free = Resources._trusted({k: max(v - used.get(k, 0.0), 0.0)
                                           for k, v in total.items()})
                free = free - self.actors.held_on(nid, free)
                out.append(NodeInfo(nid, ntype, total, free, labels, state))
        return out
