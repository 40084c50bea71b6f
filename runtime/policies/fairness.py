"""Fairness across tenants: dominant-resource fairness (DRF) and a fair-share queue.

``DRF`` (Ghodsi et al., 2011) repeatedly serves the tenant with the smallest
*dominant share* (its largest fraction of any resource the cluster has, counting
what it runs now and what this call placed), so tenants end up with equal
dominant shares. ``FairShare`` serves the tenant with the least *accumulated*
service (job-seconds, optionally decayed with a half-life), which suits devices
that run one job at a time, such as a QPU: instantaneous shares are all 0 or 1
there, while history tells who has waited.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from runtime.cluster import ClusterState, Decision, TaskInfo
from runtime.policies.ledger import Ledger, fifo_key

__all__ = ["DRF", "FairShare"]


def _check_weights(owner: str, weights: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if weights is None:
        return out
    if not isinstance(weights, Mapping):
        raise TypeError(f"{owner}: weights must be a mapping tenant -> weight > 0, got {weights!r}")
    for k, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise ValueError(f"{owner}: weight of tenant {k!r} must be a finite number > 0, "
                             f"got {v!r}")
        out[str(k)] = float(v)
    return out


def _serve(pending: Sequence[TaskInfo], ledger: Ledger, order: str,
           key: Callable[[str], float], charge: Callable[[TaskInfo], None]) -> list[Decision]:
    """Serve tenants lowest ``key(tenant)`` first, one task at a time; ``charge`` on place."""
    queues: dict[str, deque[TaskInfo]] = {}
    for task in sorted(pending, key=fifo_key):
        queues.setdefault(task.tenant, deque()).append(task)
    heap = [(key(t), t) for t in sorted(queues)]
    heapq.heapify(heap)
    out: list[Decision] = []
    while heap:
        _, tenant = heapq.heappop(heap)
        q = queues[tenant]
        while q:
            task = q.popleft()
            placed = ledger.place(task, order)  # type: ignore[arg-type]
            if placed is not None:
                out.append(placed)
                charge(task)
                break
        if q:
            heapq.heappush(heap, (key(tenant), tenant))
    return out


class DRF:
    """Dominant-resource fairness: the tenant with the lowest (weighted) dominant share goes next.

    Within a tenant, tasks go in submission order; a task that fits nowhere is
    skipped (it stays pending) so the tenant's next task may start.
    """

    name = "drf"
    #: ``schedule`` has no side effects: a backend may ask it about a future state
    lookahead_safe = True

    def __init__(self, weights: Mapping[str, float] | None = None, order: str = "tightest") -> None:
        self.weights = _check_weights("DRF", weights)
        if order not in ("id", "tightest", "loosest"):
            raise ValueError(f"DRF: order={order!r}: expected 'id', 'tightest' or 'loosest'")
        self.order = order

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return placements that equalise dominant shares as far as the free room allows."""
        totals = {k: v for k, v in cluster.totals().items() if v > 0}
        usage = cluster.tenant_usage()

        def share(tenant: str) -> float:
            row = usage.get(tenant, {})
            dom = max((row.get(k, 0.0) / v for k, v in totals.items()), default=0.0)
            return dom / self.weights.get(tenant, 1.0)

        def charge(task: TaskInfo) -> None:
            row = usage.setdefault(task.tenant, {})
            for k, v in task.request.items():
                row[k] = row.get(k, 0.0) + v

        with Ledger(cluster) as ledger:
            return _serve(pending, ledger, self.order, share, charge)

    def shares(self, cluster: ClusterState) -> dict[str, float]:
        """Each tenant's current dominant share (for tests, monitors and reports)."""
        totals = {k: v for k, v in cluster.totals().items() if v > 0}
        return {t: max((row.get(k, 0.0) / v for k, v in totals.items()), default=0.0)
                for t, row in sorted(cluster.tenant_usage().items())}

    def __repr__(self) -> str:
        return f"DRF(weights={self.weights}, order={self.order!r})"


class FairShare:
    """Fair-share queue: the tenant with the least accumulated (weighted) service goes next.

    Service charged per placed task is ``duration_hint`` (1.0 when unknown) times
    the task's largest request amount other than memory (at least 1). With
    ``half_life`` (seconds of ``cluster.now``) old service decays, as in Slurm's
    fair-share factor. Stateful: it remembers what it placed.
    """

    name = "fair_share"

    def __init__(self, weights: Mapping[str, float] | None = None,
                 half_life: float | None = None, order: str = "id") -> None:
        self.weights = _check_weights("FairShare", weights)
        if half_life is not None and (isinstance(half_life, bool)
                                      or not isinstance(half_life, (int, float))
                                      or not half_life > 0):
            raise ValueError(f"FairShare: half_life must be a number > 0 or None, got {half_life!r}")
        if order not in ("id", "tightest", "loosest"):
            raise ValueError(f"FairShare: order={order!r}: expected 'id', 'tightest' or 'loosest'")
        self.half_life = half_life
        self.order = order
        self.service: dict[str, float] = {}
        self._at: float | None = None

    def _decay(self, now: float) -> None:
        if self.half_life is not None and self._at is not None and now > self._at:
            f = 0.5 ** ((now - self._at) / self.half_life)
            self.service = {t: s * f for t, s in self.service.items()}
        self._at = now

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return placements, least-served tenant first."""
        self._decay(cluster.now)

        def key(tenant: str) -> float:
            return self.service.get(tenant, 0.0) / self.weights.get(tenant, 1.0)

        def charge(task: TaskInfo) -> None:
            units = max([1.0] + [v for k, v in task.request.items() if k != "memory"])
            cost = (task.duration_hint if task.duration_hint is not None else 1.0) * units
            self.service[task.tenant] = self.service.get(task.tenant, 0.0) + cost

        with Ledger(cluster) as ledger:
            return _serve(pending, ledger, self.order, key, charge)

    def __repr__(self) -> str:
        return f"FairShare(weights={self.weights}, half_life={self.half_life})"
