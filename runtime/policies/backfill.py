"""EASY backfill: FIFO, with one reservation for the head job and safe jumps ahead.

Tasks start in submission order while they fit. The first one that does not
(the *head*) gets a reservation: the node and the earliest time (the *shadow
time*) at which enough of that node is free, found by replaying the expected
end times of the tasks running there (``started_at + duration_hint``). Later
tasks may then start now only where they cannot delay the head: on another
node, or on the reserved node if they end by the shadow time
(``now + duration_hint <= shadow``) or fit in what the head leaves over.
A task without a ``duration_hint`` counts as never ending; when the head's
shadow time is thus unknown, only the room it leaves over may be used on its
node. Running tasks' start times come from ``cluster.started_at(task_id)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from runtime.cluster import ClusterState, Decision, TaskInfo
from runtime.policies.ledger import Ledger, fifo_key, tasks_by_node
from runtime.resources import EPSILON

__all__ = ["EasyBackfill", "Reservation"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """The head job's reservation: its node, shadow time and the room it leaves over."""

    task: int
    node: str
    shadow: float
    extra: Mapping[str, float]


class EasyBackfill:
    """EASY backfill over a FIFO queue (see the module docstring)."""

    name = "backfill"

    def __init__(self, order: str = "id") -> None:
        if order not in ("id", "tightest", "loosest"):
            raise ValueError(f"EasyBackfill: order={order!r}: expected 'id', 'tightest' or 'loosest'")
        self.order = order
        self.last_reservation: Reservation | None = None

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return FIFO starts, then backfilled starts that do not delay the head job."""
        now = cluster.now
        queue = sorted(pending, key=fifo_key)
        out: list[Decision] = []
        ever: dict[tuple, bool] = {}
        started: list[tuple[TaskInfo, str]] = []
        self.last_reservation = None
        with Ledger(cluster) as ledger:
            i = 0
            while i < len(queue):
                task = queue[i]
                if not self._ever_fits(task, cluster, ever):
                    i += 1
                    continue
                placed = ledger.place(task, self.order)  # type: ignore[arg-type]
                if placed is None:
                    break
                out.append(placed)
                started.append((task, placed.node))
                i += 1
            if i >= len(queue):
                return out
            head = queue[i]
            res = self._reserve(head, cluster, ledger, started, now)
            self.last_reservation = res
            extra = dict(res.extra) if res else {}
            for task in queue[i + 1:]:
                for node in ledger.candidates(task, self.order):  # type: ignore[arg-type]
                    if res is not None and node.id == res.node:
                        hint = task.duration_hint
                        if hint is not None and now + hint <= res.shadow < math.inf:
                            pass
                        elif task.request.fits(extra):
                            for k, v in task.request.items():
                                extra[k] = extra.get(k, 0.0) - v
                        else:
                            continue
                    out.append(ledger.take(task, node.id))
                    started.append((task, node.id))
                    break
        return out

    @staticmethod
    def _ever_fits(task: TaskInfo, cluster: ClusterState, cache: dict[tuple, bool]) -> bool:
        shape = (task.request, task.accelerator_type)
        got = cache.get(shape)
        if got is None:
            got = cache[shape] = bool(cluster.hosts(task))
        return got

    def _reserve(self, head: TaskInfo, cluster: ClusterState, ledger: Ledger,
                 placed: list[tuple[TaskInfo, str]], now: float) -> Reservation | None:
        """The earliest (shadow time, node id) where ``head`` can start, from expected ends."""
        on_node = tasks_by_node(cluster)
        for task, nid in placed:
            on_node.setdefault(nid, []).append(task)
        best: tuple[float, str, dict[str, float]] | None = None
        for node in cluster.hosts(head):
            free = dict(ledger.free(node))
            ends: list[tuple[float, int, TaskInfo]] = []
            for t in on_node.get(node.id, ()):
                t0 = cluster.started_at(t.id)
                t0 = now if t0 is None else t0
                end = t0 + t.duration_hint if t.duration_hint is not None else math.inf
                ends.append((max(end, now), t.id, t))
            ends.sort(key=lambda e: e[:2])
            shadow = now if head.request.fits(free) else math.inf
            for end, _, t in ends:
                if shadow < math.inf:
                    break
                for k, v in t.request.items():
                    free[k] = free.get(k, 0.0) + v
                if head.request.fits(free):
                    shadow = end
            if best is None or (shadow, node.id) < best[:2]:
                best = (shadow, node.id, free)
        if best is None:
            return None
        shadow, nid, free = best
        extra = {k: v - head.request.get(k, 0.0) for k, v in free.items()}
        return Reservation(head.id, nid, shadow, {k: v for k, v in extra.items() if v > EPSILON})

    def __repr__(self) -> str:
        return f"EasyBackfill(order={self.order!r})"
