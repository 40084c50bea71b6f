"""Heterogeneity-aware placement: send each task to the device model that runs it best.

``cluster.speed(task, node)`` gives the relative throughput of a task kind on a
node's device model (a Gavel-style throughput matrix; 1.0 when unknown, 0 when
it cannot run there). ``Hetero()`` prefers the highest speed; ``Hetero(per_cost=True)``
the highest speed per dollar (``speed / node.cost_per_hour``; a node that costs
nothing counts as the best value). Among equally good nodes it packs (best fit),
ties by node id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.policies.base import ClusterState, Decision, NodeInfo, TaskInfo
from runtime.policies.ledger import Ledger, fifo_key
from runtime.policies.state import NodeIndex, score_of

__all__ = ["Hetero"]


class Hetero:
    """Place each task (submission order) on the fitting node with the best (per-dollar) speed."""

    name = "hetero"

    def __init__(self, per_cost: bool = False) -> None:
        if not isinstance(per_cost, bool):
            raise TypeError(f"Hetero: per_cost must be True or False, got {per_cost!r}")
        self.per_cost = per_cost

    def value(self, task: TaskInfo, node: NodeInfo, cluster: ClusterState) -> tuple[int, float]:
        """How good ``node`` is for ``task`` (bigger is better); speed 0 means unusable."""
        speed = cluster.speed(task, node)
        if not self.per_cost:
            return (0, speed)
        if node.cost_per_hour <= 0:
            return (1, speed)
        return (0, speed / node.cost_per_hour)

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return a placement on the best-valued fitting node for each task that fits now."""
        out: list[Decision] = []
        with Ledger(cluster) as ledger:
            for task in sorted(pending, key=fifo_key):
                shape = (task.request, task.accelerator_type, task.task_kind)
                if shape in ledger.blocked:
                    continue
                if ledger.native:
                    node = self._pick_grouped(task, cluster, ledger)  # type: ignore[arg-type]
                else:
                    node = self._pick_scan(task, cluster, ledger)
                if node is None:
                    ledger.blocked.add(shape)  # type: ignore[arg-type]
                    continue
                out.append(ledger.take(task, node.id))
        return out

    def _pick_grouped(self, task: TaskInfo, cluster: NodeIndex, ledger: Ledger) -> NodeInfo | None:
        ledger.sync()  # the index must show this call's placements
        ranked: list[tuple[tuple[int, float], object]] = []
        for g in cluster.candidate_groups(task.request, task.accelerator_type):
            sample = cluster.node(next(iter(g.ids)))
            v = self.value(task, sample, cluster)
            if v[1] > 0:
                ranked.append((v, g))
        ranked.sort(key=lambda r: r[0], reverse=True)
        i = 0
        while i < len(ranked):
            j = i
            while j < len(ranked) and ranked[j][0] == ranked[i][0]:
                j += 1
            best: tuple[float, str] | None = None
            found: NodeInfo | None = None
            for _, g in ranked[i:j]:
                node = cluster.first_fitting(task, "tightest", group=g)
                if node is not None:
                    k = (score_of(node.free, node.total), node.id)
                    if best is None or k < best:
                        best, found = k, node
            if found is not None:
                return found
            i = j
        return None

    def _pick_scan(self, task: TaskInfo, cluster: ClusterState, ledger: Ledger) -> NodeInfo | None:
        best: tuple[tuple[int, float], float, str] | None = None
        found: NodeInfo | None = None
        for node in ledger.candidates(task, "tightest"):
            v = self.value(task, node, cluster)
            if v[1] <= 0:
                continue
            k = ((-v[0], -v[1]), score_of(ledger.free(node), node.total), node.id)
            if best is None or k < best:
                best, found = k, node
        return found

    def __repr__(self) -> str:
        return f"Hetero(per_cost={self.per_cost})"
