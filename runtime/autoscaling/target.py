"""Target-utilization autoscaling with hysteresis (the Kubernetes HPA / Dask adaptive idea).

For every resource kind (and every resource kind on each accelerator model), the
*load* is what running tasks hold plus what unmet tasks ask for; the wanted
capacity is ``load / target``. When load exceeds ``(target + tolerance)`` of the
capacity (up, booting and in flight), nodes of the cheapest type per unit of
that resource are added to bring it back to the target. Scale-down uses the
largest wanted capacity seen over the last ``scale_down_delay`` seconds (a
stabilisation window), so a single dip never removes nodes; only idle nodes are
removed, never below ``min_count``. Unmet tasks that no present node could host
are packed as the demand autoscaler does; those no node type can host are
reported once as infeasible.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

from runtime.autoscaling.common import (
    IdleTracker,
    Launches,
    check_number,
    owed_and_room,
    pack,
    snapshot,
    start_bins,
)
from runtime.cluster import ClusterState, NodeType, ScaleDecision, TaskInfo

__all__ = ["TargetUtilization"]

Key = tuple[str, str | None]  # (resource kind, accelerator model or None for any)


class TargetUtilization:
    """Keep utilization near ``target`` (0-1] with a ``tolerance`` band and a scale-down window."""

    name = "target"

    def __init__(self, target: float = 0.7, tolerance: float = 0.1,
                 scale_down_delay: float = 60.0, launch_grace: float = 60.0) -> None:
        self.target = check_number("TargetUtilization", "target", target, strict=True, high=1.0)
        self.tolerance = check_number("TargetUtilization", "tolerance", tolerance, high=1.0)
        self.scale_down_delay = check_number("TargetUtilization", "scale_down_delay",
                                             scale_down_delay)
        self.launches = Launches(check_number("TargetUtilization", "launch_grace", launch_grace))
        self.reported: set[int] = set()
        self.history: deque[tuple[float, dict[Key, float]]] = deque()
        self._tracker = IdleTracker()
        self._first: float | None = None

    def decide(self, unmet: Sequence[TaskInfo], cluster: ClusterState,
               node_types: Mapping[str, NodeType]) -> ScaleDecision:
        """Nodes to add to reach the target utilization, idle nodes beyond the window's need."""
        snap = snapshot(cluster, self._tracker)
        inflight = self.launches.in_flight(snap)
        now = snap.now
        add, why, room = owed_and_room(snap, inflight, node_types)
        # shapes no present node could host: pack them like the demand autoscaler
        hosts = snap.hosts
        odd = [t for t in unmet if t.request and not any(
            t.request.fits(total) and (t.accelerator_type is None or a == t.accelerator_type)
            for total, a in hosts)]
        bins = start_bins(snap, inflight, node_types)
        packed = pack(odd, bins, node_types, room, hosts)
        for name, k in packed.add.items():
            add[name] = add.get(name, 0) + k
        infeasible = [t for t in packed.infeasible if t not in self.reported]
        self.reported.update(infeasible)
        if infeasible:
            why.append(f"{len(infeasible)} task(s) fit no node type (infeasible)")
        skip = set(packed.infeasible) | set(packed.capped)

        # utilization per key
        cap, used = self._capacity(cluster, snap, inflight, add, node_types)
        load = dict(used)
        for t in unmet:
            if t.id in skip:
                continue
            for k, v in t.request.items():
                for key in ((k, None), (k, t.accelerator_type)) if t.accelerator_type else ((k, None),):
                    load[key] = load.get(key, 0.0) + v
        want = {key: v / self.target for key, v in load.items()}
        for key in sorted(want, key=lambda x: (x[0], x[1] or "")):
            have = cap.get(key, 0.0)
            if load[key] <= have * (self.target + self.tolerance) + 1e-9:
                continue
            deficit = want[key] - have
            nt = self._cheapest(key, node_types, room)
            if nt is None:
                continue
            n = min(room[nt.name], max(1, math.ceil(deficit / nt.resources[key[0]] - 1e-9)))
            room[nt.name] -= n
            add[nt.name] = add.get(nt.name, 0) + n
            self._grow(cap, nt, n)
            why.append(f"{key[0]}{'@' + key[1] if key[1] else ''} load {load[key]:g} > "
                       f"{self.target + self.tolerance:g} x capacity {have:g}: +{n} {nt.name}")

        # scale-down from the stabilised (window max) wanted capacity
        if self._first is None:
            self._first = now
        self.history.append((now, want))
        while self.history and self.history[0][0] < now - self.scale_down_delay:
            self.history.popleft()
        remove: list[str] = []
        if not add and now - self._first >= self.scale_down_delay:
            keep: dict[Key, float] = {}
            for _, w in self.history:
                for key, v in w.items():
                    keep[key] = max(keep.get(key, 0.0), v)
            remove = self._shrink(snap, cap, keep, node_types, inflight)
            if remove:
                why.append(f"{len(remove)} idle node(s) beyond the capacity wanted over the "
                           f"last {self.scale_down_delay:g}s")
        self.launches.record(snap, add, node_types, inflight)
        return ScaleDecision(add=dict(sorted(add.items())), remove=remove,
                             infeasible=infeasible, reason="; ".join(why))

    # helpers -------------------------------------------------------------------
    @staticmethod
    def _keys(nt_res: Mapping[str, float], accel: str | None) -> list[Key]:
        keys: list[Key] = [(k, None) for k in nt_res]
        if accel:
            keys += [(k, accel) for k in nt_res]
        return keys

    def _capacity(self, cluster: ClusterState, snap, inflight, add,  # noqa: ANN001
                  node_types: Mapping[str, NodeType]) -> tuple[dict[Key, float], dict[Key, float]]:
        cap: dict[Key, float] = {}
        used: dict[Key, float] = {}
        for total, accel, count, in_use in _shapes(cluster):
            for key in self._keys(total, accel):
                cap[key] = cap.get(key, 0.0) + count * total[key[0]]
                u = in_use.get(key[0], 0.0)
                if u > 1e-9:
                    used[key] = used.get(key, 0.0) + u
        for name, k in list(inflight.items()) + list(add.items()):
            nt = node_types.get(name)
            if nt is not None:
                self._grow(cap, nt, k)
        return cap, used

    def _grow(self, cap: dict[Key, float], nt: NodeType, n: int) -> None:
        for key in self._keys(nt.resources, nt.accelerator_type):
            cap[key] = cap.get(key, 0.0) + n * nt.resources[key[0]]

    @staticmethod
    def _cheapest(key: Key, node_types: Mapping[str, NodeType],
                  room: Mapping[str, int]) -> NodeType | None:
        res, accel = key
        best = None
        for nt in node_types.values():
            amount = nt.resources.get(res, 0.0)
            if amount <= 0 or room.get(nt.name, 0) <= 0:
                continue
            if accel is not None and nt.accelerator_type != accel:
                continue
            k = (nt.cost_per_hour / amount, len(nt.resources), nt.name)
            if best is None or k < best[0]:
                best = (k, nt)
        return None if best is None else best[1]

    def _shrink(self, snap, cap: dict[Key, float], keep: dict[Key, float],  # noqa: ANN001
                node_types: Mapping[str, NodeType], inflight: Mapping[str, int]) -> list[str]:
        left = {name: snap.count(name) + inflight.get(name, 0) for name in snap.counts}
        out: list[str] = []
        for nid, _since in snap.idle:
            name = snap.node_types_of[nid]
            nt = node_types.get(name)
            if nt is None or left[name] <= nt.min_count:
                continue
            total = snap.totals_of[nid]
            keys = self._keys(total, nt.accelerator_type)
            if all(cap.get(key, 0.0) - total[key[0]] >= keep.get(key, 0.0) - 1e-9 for key in keys):
                for key in keys:
                    cap[key] = cap.get(key, 0.0) - total[key[0]]
                out.append(nid)
                left[name] -= 1
        return sorted(out)

    def __repr__(self) -> str:
        return (f"TargetUtilization(target={self.target:g}, tolerance={self.tolerance:g}, "
                f"scale_down_delay={self.scale_down_delay:g})")


def _shapes(cluster: ClusterState) -> list[tuple[Mapping[str, float], str | None, int,
                                                 Mapping[str, float]]]:
    """``(total, accelerator, count of up+booting nodes, used amounts)`` per node group."""
    out = []
    for g in cluster.groups():
        count = g.count("up", "booting")
        if count:
            out.append((g.total, g.accelerator_type, count, g.used))
    return out
