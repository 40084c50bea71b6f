"""Shared parts of the autoscalers: a cluster snapshot, launches in flight, demand packing.

Everything here is deterministic: node types are taken in name order, tasks in
(priority, id) order, ties broken by names and ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.cluster import ACCELERATOR_LABEL, ClusterState, NodeType, TaskInfo
from runtime.resources import EPSILON, Resources

__all__ = ["Snapshot", "snapshot", "Launches", "Bin", "pack", "check_number", "type_key"]


def check_number(owner: str, name: str, value: object, *, low: float = 0.0,
                 strict: bool = False, high: float = math.inf) -> float:
    """``value`` as a float, or a ValueError naming the argument, the value and the range."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and not math.isnan(value) and (value > low if strict else value >= low)
          and value <= high)
    if not ok:
        rng = f"> {low:g}" if strict else f">= {low:g}"
        if high < math.inf:
            rng += f" and <= {high:g}"
        raise ValueError(f"{owner}: {name} must be a number {rng}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass
class Snapshot:
    """What an autoscaler needs to know about the cluster at one moment."""

    now: float
    counts: dict[str, dict[str, int]]  # node type -> state -> count
    idle: list[tuple[str, float]]  # (node id, idle since), longest idle first
    booting: list[tuple[str, Resources, Mapping[str, str]]]  # (node type, total, labels)
    node_types_of: dict[str, str] = field(default_factory=dict)  # idle node id -> node type
    totals_of: dict[str, Resources] = field(default_factory=dict)  # idle node id -> total
    accel_of: dict[str, str | None] = field(default_factory=dict)  # idle node id -> model
    hosts: list[tuple[Resources, str | None]] = field(default_factory=list)  # shapes present

    def count(self, node_type: str, states: Iterable[str] = ("booting", "up")) -> int:
        """Nodes of ``node_type`` in ``states``."""
        row = self.counts.get(node_type, {})
        return sum(row.get(s, 0) for s in states)


class IdleTracker:
    """Idle-since bookkeeping that survives a cluster view that is rebuilt between decisions.

    The same view as last time (a backend's live index) is trusted as is; a new view
    object (whose idle clocks may have restarted) keeps, for each node idle without a
    break, the earliest idle-since seen.
    """

    def __init__(self) -> None:
        self.since: dict[str, float] = {}
        self.cluster: object = None

    def observe(self, cluster: object, idle: Iterable[tuple[str, float]],
                now: float) -> list[tuple[str, float]]:
        """``(id, since)`` of idle nodes, longest idle first (see the class docstring)."""
        live = cluster is self.cluster
        self.cluster = cluster
        seen: dict[str, float] = {}
        for nid, since in idle:
            seen[nid] = since if live else min(since, self.since.get(nid, now))
        self.since = seen
        return sorted(seen.items(), key=lambda p: (p[1], p[0]))


def snapshot(cluster: ClusterState, tracker: IdleTracker) -> Snapshot:
    """Gather counts, idle nodes and booting capacity from the cluster's node groups."""
    now = cluster.now
    counts: dict[str, dict[str, int]] = {}
    booting: list[tuple[str, Resources, Mapping[str, str]]] = []
    hosts = []
    for g in sorted(cluster.groups(), key=lambda g: (g.node_type, tuple(g.total.items()),
                                                     g.accelerator_type or "", g.cost_per_hour)):
        row = counts.setdefault(g.node_type, {})
        for st, c in g.counts.items():
            if c:
                row[st] = row.get(st, 0) + c
        acc = g.accelerator_type
        labels = {ACCELERATOR_LABEL: acc} if acc else {}
        nb = g.counts.get("booting", 0)
        booting.extend([(g.node_type, g.total, labels)] * nb)
        if nb or g.counts.get("up", 0):
            hosts.append((g.total, acc))
    idle = tracker.observe(cluster, cluster.idle_nodes(), now)
    snap = Snapshot(now, dict(sorted(counts.items())), idle, booting, hosts=hosts)
    for nid, _ in idle:
        n = cluster.node(nid)
        snap.node_types_of[nid] = n.node_type
        snap.totals_of[nid] = n.total
        snap.accel_of[nid] = n.accelerator_type
    return snap


class Launches:
    """Nodes asked for but not yet seen in the cluster, so demand is not launched twice.

    After ``boot_latency + grace`` a launch still unseen is forgotten (it failed),
    which allows one new attempt; never an endless stream of launches.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.expect: dict[str, tuple[int, float]] = {}  # type -> (expected count, deadline)

    def in_flight(self, snap: Snapshot) -> dict[str, int]:
        """Launched nodes per type not yet present (booting or up)."""
        out: dict[str, int] = {}
        for name, (expected, deadline) in sorted(self.expect.items()):
            present = snap.count(name)
            if snap.now > deadline or present >= expected:
                del self.expect[name]
                continue
            out[name] = expected - present
        return out

    def record(self, snap: Snapshot, adds: Mapping[str, int], node_types: Mapping[str, NodeType],
               inflight: Mapping[str, int]) -> None:
        """Remember what was just asked for."""
        for name, k in adds.items():
            if k > 0:
                base = snap.count(name) + inflight.get(name, 0)
                self.expect[name] = (base + k, snap.now + node_types[name].boot_latency + self.grace)


def type_key(nt: NodeType) -> tuple[float, int, str]:
    """Preference among node types that fit: cheapest, then fewest resource kinds, then name."""
    return (nt.cost_per_hour, len(nt.resources), nt.name)


@dataclass
class Bin:
    """Room on a node that is booting, in flight or about to be added."""

    node_type: str
    accel: str | None
    free: dict[str, float]

    def how_many(self, req: Resources) -> int:
        """How many tasks of ``req`` fit in this bin."""
        n = math.inf
        for k, a in req.items():
            n = min(n, math.floor((self.free.get(k, 0.0) + EPSILON) / a))
        return int(n) if n != math.inf else 0

    def take(self, req: Resources, count: int) -> None:
        """Use room for ``count`` tasks of ``req``."""
        for k, a in req.items():
            self.free[k] = self.free.get(k, 0.0) - a * count


@dataclass
class Packing:
    """What packing unmet demand gave: nodes to add, never-fitting tasks, capped tasks."""

    add: dict[str, int] = field(default_factory=dict)
    infeasible: list[int] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)


def pack(unmet: Sequence[TaskInfo], bins: list[Bin], node_types: Mapping[str, NodeType],
         room: dict[str, int], hosts: Sequence[tuple[Resources, str | None]] = ()) -> Packing:
    """Pack ``unmet`` into ``bins``, then into new nodes of the cheapest fitting types.

    ``room`` is how many more nodes of each type may be added (updated in place).
    Tasks no node type (with ``max_count > 0``) nor present node (``hosts``) could
    ever host are ``infeasible``; those that only lack room under ``max_count`` are ``capped``.
    """
    shapes: dict[tuple[Resources, str | None], list[int]] = {}
    for t in sorted(unmet, key=lambda t: (-t.priority, t.id)):
        if not t.request:
            continue  # asks for nothing: never a reason to add a node
        shapes.setdefault((t.request, t.accelerator_type), []).append(t.id)
    ordered = sorted(node_types.values(), key=type_key)
    out = Packing()
    for (req, accel), ids in shapes.items():
        left = len(ids)
        for b in bins:
            if left == 0:
                break
            if accel is not None and b.accel != accel:
                continue
            k = min(b.how_many(req), left)
            if k:
                b.take(req, k)
                left -= k
        if left == 0:
            continue
        fitting = [nt for nt in ordered if nt.max_count > 0 and req.fits(nt.resources)
                   and (accel is None or nt.accelerator_type == accel)]
        if not fitting:
            present = any(req.fits(total) and (accel is None or a == accel) for total, a in hosts)
            if not present:
                out.infeasible.extend(ids[len(ids) - left:])
            continue
        for nt in fitting:
            if left == 0:
                break
            per = Bin(nt.name, nt.accelerator_type, dict(nt.resources)).how_many(req)
            n = min(math.ceil(left / per), room.get(nt.name, 0))
            if n <= 0:
                continue
            room[nt.name] -= n
            out.add[nt.name] = out.add.get(nt.name, 0) + n
            placed = min(left, n * per)
            for i in range(n):
                b = Bin(nt.name, nt.accelerator_type, dict(nt.resources))
                b.take(req, min(per, placed - i * per))
                bins.append(b)
            left -= placed
        if left:
            out.capped.extend(ids[len(ids) - left:])
    out.infeasible.sort()
    out.capped.sort()
    return out


def start_bins(snap: Snapshot, inflight: Mapping[str, int],
               node_types: Mapping[str, NodeType]) -> list[Bin]:
    """Room on idle up nodes, booting nodes and launches still in flight."""
    bins = [Bin(snap.node_types_of[nid], snap.accel_of[nid], dict(snap.totals_of[nid]))
            for nid, _ in snap.idle]
    bins += [Bin(t, labels.get(ACCELERATOR_LABEL), dict(total)) for t, total, labels in snap.booting]
    for name, k in sorted(inflight.items()):
        nt = node_types.get(name)
        if nt is not None:
            bins.extend(Bin(name, nt.accelerator_type, dict(nt.resources)) for _ in range(k))
    return bins


def owed_and_room(snap: Snapshot, inflight: Mapping[str, int],
                  node_types: Mapping[str, NodeType]
                  ) -> tuple[dict[str, int], list[str], dict[str, int]]:
    """Nodes owed to reach each type's ``min_count`` (with reasons), and the room
    left under each ``max_count`` after those, counting nodes already in flight."""
    add: dict[str, int] = {}
    why: list[str] = []
    for name, nt in sorted(node_types.items()):
        have = snap.count(name) + inflight.get(name, 0)
        if have < nt.min_count:
            add[name] = nt.min_count - have
            why.append(f"{name}: up to min_count {nt.min_count}")
    room = {name: max(0, nt.max_count - snap.count(name) - inflight.get(name, 0)
                      - add.get(name, 0))
            for name, nt in node_types.items()}
    return add, why, room
