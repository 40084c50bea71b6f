"""Demand-based autoscaling (what Ray's autoscaler does): bin-pack unmet requests.

Unmet requests are packed first into the room of idle nodes and of nodes
already booting (or asked for and not yet seen), then into new nodes of the cheapest node type that
fits, up to each type's ``max_count``. Nodes idle for ``idle_timeout`` seconds
in a row are removed, never below ``min_count`` and never while an unmet task
could run on them. Requests no node type can host are reported once in
``ScaleDecision.infeasible`` and never cause a launch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtime.autoscaling.common import (
    IdleTracker,
    Launches,
    Snapshot,
    check_number,
    owed_and_room,
    pack,
    snapshot,
    start_bins,
)
from runtime.cluster import ClusterState, NodeType, ScaleDecision, TaskInfo

__all__ = ["DemandAutoscaler"]


class DemandAutoscaler:
    """Bin-pack unmet demand into the cheapest node types; remove nodes idle too long.

    ``idle_timeout``: seconds a node must stay idle before removal (the
    hysteresis: a short idle dip removes nothing). ``launch_grace``: seconds past
    a node type's ``boot_latency`` after which a launch not yet seen is
    considered failed and may be retried. ``max_launch``: most nodes added per
    decision (None: no limit).
    """

    name = "demand"

    def __init__(self, idle_timeout: float = 60.0, launch_grace: float = 60.0,
                 max_launch: int | None = None) -> None:
        self.idle_timeout = check_number("DemandAutoscaler", "idle_timeout", idle_timeout)
        self.launches = Launches(check_number("DemandAutoscaler", "launch_grace", launch_grace))
        if max_launch is not None and (isinstance(max_launch, bool) or not isinstance(max_launch, int)
                                       or max_launch < 1):
            raise ValueError(f"DemandAutoscaler: max_launch must be an int >= 1 or None, "
                             f"got {max_launch!r}")
        self.max_launch = max_launch
        self.reported: set[int] = set()
        self._tracker = IdleTracker()

    def decide(self, unmet: Sequence[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, NodeType]) -> ScaleDecision:
        """Nodes to add for unmet demand and idle nodes to remove, at ``cluster.now``."""
        snap = snapshot(cluster, self._tracker)
        inflight = self.launches.in_flight(snap)
        # min_count first: those nodes are owed regardless of demand
        add, why, room = owed_and_room(snap, inflight, node_types)
        bins = start_bins(snap, inflight, node_types)
        for name, k in add.items():
            bins.extend(start_bins(Snapshot(snap.now, {}, [], []), {name: k}, node_types))
        packed = pack(unmet, bins, node_types, room, snap.hosts)
        for name, k in sorted(packed.add.items()):
            add[name] = add.get(name, 0) + k
        if packed.add:
            why.append("unmet demand: " + ", ".join(f"{k} x {n}" for n, k in
                                                   sorted(packed.add.items())))
        if packed.capped:
            why.append(f"{len(packed.capped)} task(s) wait: their node types are at max_count")
        add = self._limit(add)
        infeasible = [t for t in packed.infeasible if t not in self.reported]
        self.reported.update(infeasible)
        if infeasible:
            why.append(f"{len(infeasible)} task(s) fit no node type (infeasible)")
        remove = self._idle_to_remove(snap, unmet, node_types, inflight, add)
        if remove:
            why.append(f"{len(remove)} node(s) idle >= {self.idle_timeout:g}s")
        self.launches.record(snap, add, node_types, inflight)
        return ScaleDecision(add=dict(sorted(add.items())), remove=remove,
                             infeasible=infeasible, reason="; ".join(why))

    def _limit(self, add: dict[str, int]) -> dict[str, int]:
        if self.max_launch is None:
            return add
        left = self.max_launch
        out: dict[str, int] = {}
        for name, k in sorted(add.items()):
            k = min(k, left)
            if k:
                out[name] = k
                left -= k
        return out

    def _idle_to_remove(self, snap: Snapshot, unmet: Sequence[TaskInfo],
                        node_types: Mapping[str, NodeType], inflight: Mapping[str, int],
                        add: Mapping[str, int]) -> list[str]:
        left = {name: snap.count(name) + inflight.get(name, 0) for name in snap.counts}
        shapes = {(t.request, t.accelerator_type) for t in unmet}
        out: list[str] = []
        for nid, since in snap.idle:
            name = snap.node_types_of[nid]
            nt = node_types.get(name)
            if nt is None or add.get(name):
                continue  # unknown type (not ours to remove) or growing this type now
            over = left[name] > nt.max_count
            if not over and snap.now - since < self.idle_timeout:
                continue
            if left[name] <= nt.min_count:
                continue
            total = snap.totals_of[nid]
            if any(req.fits(total) and (acc is None or nt.accelerator_type == acc)
                   for req, acc in shapes):
                continue  # an unmet task could run here: keep it
            out.append(nid)
            left[name] -= 1
        return sorted(out)

    def __repr__(self) -> str:
        return f"DemandAutoscaler(idle_timeout={self.idle_timeout:g})"
