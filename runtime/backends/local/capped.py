"""The cap on the local backend's task worker processes, and what happens at it.

A task blocked in ``get``/``wait`` lends its CPU and a child may start in its place;
without a bound, recursion 1,000 deep would start 1,000 processes. The backend keeps
at most :attr:`~CappedPoolMixin.worker_limit` task workers (actors have processes of
their own, outside the cap). At the cap a placed task runs **inside a worker that is
blocked** in ``get``/``wait`` on the same node (the worker runs it within that wait and
goes back to waiting: the child's stack sits on the parent's), so nested waits never
deadlock; when no worker of the node is blocked, the task waits (``parked``) for one of
its workers to free, and an idle worker of another node is retired to make room.

While a child runs inside a blocked parent the parent cannot return: its ``get`` result
(or timeout) is seen once the child ends.
"""

from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.backends.local.pool import WorkerProc
    from runtime.backends.local.records import _Task

__all__ = ["CappedPoolMixin", "default_worker_limit", "parse_max_workers"]

#: Memory a busy worker is assumed to need when the default cap is sized by memory.
WORKER_MEMORY = 200 * 1024 * 1024
#: Worker processes per CPU of the cluster, at most, by default.
WORKERS_PER_CPU = 4


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_worker_limit(cpus: int) -> int:
    """``WORKERS_PER_CPU`` per CPU, no more than available memory / 200 MB, and never
    fewer than one per CPU plus two."""
    limit = WORKERS_PER_CPU * cpus
    mem = _available_memory()
    if mem is not None:
        limit = min(limit, mem // WORKER_MEMORY)
    return max(int(limit), cpus + 2)


def parse_max_workers(value: Any) -> int | None:
    """Check ``max_workers=`` (or ``NBCLUSTER_MAX_WORKERS``); None: the default."""
    where = "max_workers"
    if value is None:
        env = os.environ.get("NBCLUSTER_MAX_WORKERS")
        if env is None or not env.strip():
            return None
        where, value = "NBCLUSTER_MAX_WORKERS", env.strip()
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}={value!r}: expected a whole number of worker processes "
                         f">= 1 (at least one per CPU is kept whatever it says)")
    return value


class CappedPoolMixin:
    """Task workers within a cap; tasks run inside blocked workers at the cap."""

    def _init_pool(self, max_workers: Any) -> None:
        self._max_workers = parse_max_workers(max_workers)
        self._parked: dict[str, collections.deque[_Task]] = {}
        #: replies for blocked tasks with others running inside their wait (by task id)
        self._deferred: dict[int, tuple[Any, ...]] = {}

    @property
    def worker_limit(self) -> int:
        """The most task worker processes at once (``max_workers=``, else the default of
        :func:`default_worker_limit`); never fewer than the cluster's CPUs."""
        cpus = sum(self._base_workers(nid) for nid in self._idle)
        limit = self._max_workers if self._max_workers is not None else \
            default_worker_limit(cpus)
        return max(limit, cpus)

    def _task_workers(self) -> int:
        return sum(1 for w in self._snapshot()
                   if w.actor is None and not w.dead and not w.retiring)

    def _worker_for(self, nid: str) -> WorkerProc | None:
        """An idle worker of ``nid``, a new one under the cap, or None at the cap."""
        idle = self._idle[nid]
        while idle:
            w = idle.pop()
            if not w.dead:
                return w
        if self._task_workers() < self.worker_limit:
            return self._spawn(nid)
        return None

    def _blocked_worker(self, nid: str) -> WorkerProc | None:
        """A worker of ``nid`` waiting in ``get``/``wait`` (the one with the fewest tasks
        already inside it), which can run a task within that wait."""
        best = None
        for w in self._snapshot():
            if w.node == nid and w.blocked_req is not None and w.actor is None \
                    and not w.dead and w.queued is None and \
                    (best is None or len(w.frames) < len(best.frames)):
                best = w
        return best

    def _no_worker(self, t: _Task, nid: str) -> WorkerProc | None:
        """At the cap: the blocked worker ``t`` runs inside (its frame saved), or None when
        ``t`` is parked until a worker of ``nid`` frees."""
        w = self._blocked_worker(nid)
        if w is not None:
            w.frames.append((w.task, w.blocked_req))
            w.blocked_req = None
            return w
        self._parked.setdefault(nid, collections.deque()).append(t)
        for other, idle in self._idle.items():  # make room: an idle worker elsewhere goes
            if other != nid and idle:
                w = idle.pop()
                w.retiring = True
                w.send(("exit",))
                break
        return None

    def _unpark(self, nid: str | None = None, w: WorkerProc | None = None) -> bool:
        """Start a parked task: on ``w`` (a worker that just freed or blocked), else on a
        new worker when a slot is free. True when one started."""
        for node, q in list(self._parked.items()):
            if nid is not None and node != nid:
                continue
            while q:
                t = q.popleft()
                if t.state != "pending" or t.id not in self._tasks:
                    continue  # cancelled meanwhile
                if w is None:
                    if self._task_workers() >= self.worker_limit:
                        q.appendleft(t)
                        return False
                    target = self._spawn(node)
                elif w.task is not None:  # blocked: run it inside that wait
                    w.frames.append((w.task, w.blocked_req))
                    w.blocked_req = None
                    target = w
                else:
                    target = w
                if not q:
                    del self._parked[node]
                self._run_on(target, t, node)
                return True
            self._parked.pop(node, None)
        return False

    def _unpark_any(self) -> None:
        """Slots freed (a worker exited): start parked tasks while there is room."""
        while self._parked and self._unpark():
            pass

    def _pop_frame(self, w: WorkerProc, t: _Task) -> bool:
        """``t`` ended on ``w``: when it ran inside a blocked task, that task is ``w``'s
        again (True)."""
        if not w.frames:
            return False
        if w.task is t:
            w.task, w.blocked_req = w.frames.pop()
            entry = self._deferred.pop(w.task.id, None)
            if entry is not None:  # its wait ended meanwhile: it goes on now
                self._answer(w, w.task, entry)
        else:  # a task lower on the stack ended first (it was cancelled while waiting)
            w.frames[:] = [f for f in w.frames if f[0] is not t]
        return True

    def _frame_of(self, w: WorkerProc, req_id: int) -> int | None:
        """Index in ``w.frames`` of the blocked request ``req_id``, if a frame holds it."""
        for i, (_, req) in enumerate(w.frames):
            if req is not None and req[0] == req_id:
                return i
        return None

    def _parked_count(self) -> int:
        return sum(len(q) for q in self._parked.values())
