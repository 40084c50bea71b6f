"""Priority scheduling with preemption.

Pending tasks go highest ``priority`` first (then submission order). When a task
fits nowhere, the policy looks for running tasks of *lower* priority to preempt:
on each node that could host it, the lowest-priority, most recently started
tasks first, until it would fit; it picks the node whose victims have the lowest
top priority, then the fewest victims, then the smallest id. It returns
``Preempt`` for those victims and holds the node's free room for the task for
the rest of the call; the task itself is placed by a later call, once the
backend has freed the victims' resources. Victims already asked for are
remembered, so a slow backend is not asked to preempt more for the same task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.cluster import ClusterState, Decision, NodeInfo, Preempt, TaskInfo
from runtime.policies.ledger import Ledger, priority_key

__all__ = ["PriorityPreempt"]

_NEVER = -(2**63)


class PriorityPreempt:
    """Highest priority first; preempts lower-priority running tasks when needed."""

    name = "priority"

    def __init__(self, preempt: bool = True, order: str = "tightest") -> None:
        if not isinstance(preempt, bool):
            raise TypeError(f"PriorityPreempt: preempt must be True or False, got {preempt!r}")
        if order not in ("id", "tightest", "loosest"):
            raise ValueError(f"PriorityPreempt: order={order!r}: expected 'id', 'tightest' "
                             f"or 'loosest'")
        self.preempt = preempt
        self.order = order
        self.victims: dict[int, int] = {}  # victim task id -> the task it makes room for

    @property
    def preemptive(self) -> bool:
        """It may return ``Preempt`` (when ``preempt``): the control plane then shows it
        every pending task, every round."""
        return self.preempt

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return placements by priority, and preemptions for tasks that cannot fit otherwise."""
        self.victims = {v: t for v, t in sorted(self.victims.items())
                        if cluster.placement_of(v) is not None}
        waiting = set(self.victims.values())
        by_node: dict[str, list[TaskInfo]] | None = None
        failed: dict[tuple, int] = {}  # shape -> highest priority that found no victims
        out: list[Decision] = []
        with Ledger(cluster) as ledger:
            for task in sorted(pending, key=priority_key):
                placed = ledger.place(task, self.order)  # type: ignore[arg-type]
                if placed is not None:
                    out.append(placed)
                    continue
                if not self.preempt or task.id in waiting:
                    continue
                shape = (task.request, task.accelerator_type)
                if failed.get(shape, _NEVER) >= task.priority:
                    continue  # an equal task of no lower priority found no victims this call
                if by_node is None:
                    by_node = _OnNodes(cluster)
                found = self._victims_for(task, cluster, ledger, by_node)
                if found is None:
                    failed[shape] = max(failed.get(shape, _NEVER), task.priority)
                    continue
                node, chosen = found
                for v in chosen:
                    self.victims[v.id] = task.id
                    out.append(Preempt(v.id, reason=f"preempted by task {task.id} "
                                                    f"(priority {task.priority} > {v.priority})"))
                free = ledger.free(node)
                ledger.hold(node.id, {k: min(free.get(k, 0.0), a) for k, a in task.request.items()
                                      if free.get(k, 0.0) > 0})
                waiting.add(task.id)
        return out

    def _victims_for(self, task: TaskInfo, cluster: ClusterState, ledger: Ledger,
                     by_node: dict[str, list[TaskInfo]]) -> tuple[NodeInfo, list[TaskInfo]] | None:
        best = None
        for node in cluster.hosts(task):
            cands = [t for t in by_node.get(node.id, ())
                     if t.priority < task.priority and t.id not in self.victims]
            if not cands:
                continue

            def newest_first(t: TaskInfo) -> tuple[int, float, int]:
                t0 = cluster.started_at(t.id)
                return (t.priority, -(t0 if t0 is not None else t.submitted_at), -t.id)

            cands.sort(key=newest_first)
            free = dict(ledger.free(node))
            chosen: list[TaskInfo] = []
            for c in cands:
                if task.request.fits(free):
                    break
                chosen.append(c)
                for k, v in c.request.items():
                    free[k] = free.get(k, 0.0) + v
            if not chosen or not task.request.fits(free):
                continue
            key = (max(c.priority for c in chosen), len(chosen), node.id)
            if best is None or key < best[0]:
                best = (key, node, chosen)
        return None if best is None else (best[1], best[2])

    def __repr__(self) -> str:
        return f"PriorityPreempt(preempt={self.preempt}, order={self.order!r})"


class _OnNodes(dict):
    """``node id -> running tasks`` fetched on demand from ``cluster.tasks_on``."""

    def __init__(self, cluster: ClusterState) -> None:
        super().__init__()
        self._cluster = cluster

    def get(self, key, default=None):  # noqa: ANN001, ANN201
        if key not in self:
            self[key] = self._cluster.tasks_on(key)
        return self[key]
