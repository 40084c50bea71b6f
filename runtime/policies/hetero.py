"""Heterogeneity-aware placement: send each task to the device model that runs it best.

``cluster.speed(task, node)`` gives the relative throughput of a task kind on a
node's device model (a Gavel-style throughput matrix; 1.0 when unknown, 0 when
it cannot run there). ``Hetero()`` prefers the highest speed; ``Hetero(per_cost=True)``
the highest speed per dollar (``speed / node.cost_per_hour``; a node that costs
nothing counts as the best value). Among equally good nodes it packs (best fit),
ties by node id. On a NodeIndex it ranks whole node groups; on another
ClusterState it scans the fitting nodes once per request shape and call, then
queries ``fitting`` per accelerator model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

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
        classes: dict[tuple, list[tuple[tuple[int, float], list[str | None]]]] = {}
        with Ledger(cluster) as ledger:
            for task in sorted(pending, key=fifo_key):
                shape = (task.request, task.accelerator_type, task.task_kind)
                if shape in ledger.blocked:
                    continue
                if ledger.native:
                    node = self._pick_grouped(task, cluster, ledger, classes, shape)  # type: ignore[arg-type]
                else:
                    node = self._pick_classes(task, cluster, ledger, classes, shape)
                if node is None:
                    ledger.blocked.add(shape)  # type: ignore[arg-type]
                    continue
                out.append(ledger.take(task, node.id))
        return out

    def _pick_grouped(self, task: TaskInfo, cluster: NodeIndex, ledger: Ledger,
                      classes: dict, shape: tuple) -> NodeInfo | None:
        """On a NodeIndex: rank node groups by value (once per shape and call), best first."""
        ledger.sync()  # the index must show this call's placements
        ranked = classes.get(shape)
        if ranked is None:
            ranked = []
            for g in cluster.candidate_groups(task.request, task.accelerator_type):
                sample = cluster.node(next(iter(g.ids)))
                v = self.value(task, sample, cluster)
                if v[1] > 0:
                    ranked.append((v, g))
            ranked.sort(key=lambda r: r[0], reverse=True)
            classes[shape] = ranked
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

    def _pick_classes(self, task: TaskInfo, cluster: ClusterState, ledger: Ledger,
                      classes: dict, shape: tuple) -> NodeInfo | None:
        """Generic path: scan once per shape and call, then query by accelerator label."""
        known = classes.get(shape)
        if known is None:
            node, classes[shape] = self._pick_scan(task, cluster, ledger)
            return node
        for value, labels in known:
            if None in labels:
                return self._pick_scan(task, cluster, ledger)[0]
            best: tuple[float, str] | None = None
            found: NodeInfo | None = None
            for label in labels:
                probe = replace(task, accelerator_type=label)
                node = ledger.pick(probe, "tightest")  # a cursor: O(log) amortised
                if node is not None and self.value(task, node, cluster) != value:
                    # the model's tightest node is of another value (another type or cost)
                    node = next((n for n in ledger.candidates(probe, "tightest")
                                 if self.value(task, n, cluster) == value), None)
                if node is not None:
                    k = (score_of(ledger.free(node), node.total), node.id)
                    if best is None or k < best:
                        best, found = k, node
            if found is not None:
                return found
        return None

    def _pick_scan(self, task: TaskInfo, cluster: ClusterState, ledger: Ledger
                   ) -> tuple[NodeInfo | None, list[tuple[tuple[int, float], list[str | None]]]]:
        """Every fitting node: the best one, and the value classes with their labels."""
        best: tuple[tuple[int, float], float, str] | None = None
        found: NodeInfo | None = None
        seen: dict[tuple[int, float], set[str | None]] = {}
        for node in ledger.candidates(task, "tightest"):
            v = self.value(task, node, cluster)
            if v[1] <= 0:
                continue
            seen.setdefault(v, set()).add(node.accelerator_type)
            k = ((-v[0], -v[1]), score_of(ledger.free(node), node.total), node.id)
            if best is None or k < best:
                best, found = k, node
        ranked = [(v, sorted(labels, key=lambda x: (x is None, x or "")))
                  for v, labels in sorted(seen.items(), reverse=True)]
        return found, ranked

    def __repr__(self) -> str:
        return f"Hetero(per_cost={self.per_cost})"
