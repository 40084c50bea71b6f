"""Shared builders for policy tests: a cluster index by hand, tasks with ids."""

from __future__ import annotations

from runtime.control import ClusterIndex
from runtime.policies import TaskInfo
from runtime.resources import Resources


def task(tid: int, tenant: str = "default", priority: int = 0, accel: str | None = None,
         hint: float | None = None, kind: str = "", at: float | None = None,
         **request: float) -> TaskInfo:
    """A task with ``request`` (default 1 CPU), submitted at ``at`` (default: its id)."""
    return TaskInfo(id=tid, name=kind or "f", request=Resources(request or {"CPU": 1}),
                    kind=kind, accelerator_type=accel, tenant=tenant, priority=priority,
                    submitted_at=float(tid if at is None else at), duration_hint=hint)


def cluster(*specs: tuple[str, dict], speeds: dict | None = None) -> ClusterIndex:
    """A ClusterIndex with nodes ``(id, total)``; a total may hold ``accel`` and ``cost`` keys."""
    idx = ClusterIndex(speeds=speeds)
    for nid, total in specs:
        total = dict(total)
        accel = total.pop("accel", None)
        cost = total.pop("cost", 0.0)
        ntype = total.pop("type", accel or "cpu")
        labels = {"accelerator_type": accel} if accel else {}
        idx.add_node(nid, ntype, total, labels=labels, cost_per_hour=cost)
    return idx


def apply(idx: ClusterIndex, decisions, pending) -> None:  # noqa: ANN001
    """Act on decisions as a backend would: validate then allocate / release."""
    from runtime.policies import Place, Preempt, check_placement

    by_id = {t.id: t for t in pending}
    for d in decisions:
        if isinstance(d, Place):
            t = by_id[d.task]
            check_placement("test", t, d.node, idx)
            idx.allocate(t, d.node)
        elif isinstance(d, Preempt):
            idx.release(d.task)
