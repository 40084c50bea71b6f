"""Heterogeneity-aware placement: send each task to the device model that runs it best.

``cluster.speed(task, node)`` gives the relative throughput of a task kind on a
node's device model (a Gavel-style throughput matrix; 1.0 when unknown, 0 when
it cannot run there). ``Hetero()`` prefers the highest speed; ``Hetero(per_cost=True)``
the highest speed per dollar (``speed / node.cost_per_hour``; a node that costs
nothing counts as the best value). Among equally good nodes it packs (best fit),
ties by node id. It ranks whole node groups (``cluster.groups(task)``, all nodes of
a group are alike) once per request shape and call, then asks each group for its
tightest fitting node (``first_fitting(task, "tightest", group=key)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.cluster import ClusterState, Decision, NodeInfo, TaskInfo
from runtime.cluster.checks import score_of
from runtime.policies.ledger import Ledger, fifo_key

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
        classes: dict[tuple, list[tuple[tuple[int, float], int]]] = {}
        with Ledger(cluster) as ledger:
            for task in sorted(pending, key=fifo_key):
                shape = (task.request, task.accelerator_type, task.task_kind)
                if shape in ledger.blocked:
                    continue
                node = self._pick(task, cluster, ledger, classes, shape)
                if node is None:
                    ledger.blocked.add(shape)  # type: ignore[arg-type]
                    continue
                out.append(ledger.take(task, node.id))
        return out

    def _pick(self, task: TaskInfo, cluster: ClusterState, ledger: Ledger,
              classes: dict, shape: tuple) -> NodeInfo | None:
        """Rank node groups by value (once per shape and call); best group with room first."""
        ledger.sync()  # the cluster must show this call's placements
        ranked = classes.get(shape)
        if ranked is None:
            ranked = []
            for g in cluster.groups(task):
                v = self.value(task, cluster.node(g.sample), cluster)
                if v[1] > 0:
                    ranked.append((v, g.key))
            ranked.sort(key=lambda r: r[0], reverse=True)
            classes[shape] = ranked
        i = 0
        while i < len(ranked):
            j = i
            while j < len(ranked) and ranked[j][0] == ranked[i][0]:
                j += 1
            best: tuple[float, str] | None = None
            found: NodeInfo | None = None
            for _, key in ranked[i:j]:
                node = cluster.first_fitting(task, "tightest", group=key)
                if node is not None:
                    k = (score_of(node.free, node.total), node.id)
                    if best is None or k < best:
                        best, found = k, node
            if found is not None:
                return found
            i = j
        return None

    def __repr__(self) -> str:
        return f"Hetero(per_cost={self.per_cost})"
