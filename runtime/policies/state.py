"""A mutable, indexed implementation of :class:`ClusterState` that backends share.

Backends own one ``NodeIndex``: they add and remove nodes, ``allocate`` and
``release`` resources as tasks start and end; policies only read it. Nodes are
grouped by *shape* (total resources, accelerator label, node type, cost), so
``fitting`` skips whole groups that could never host a request. Within a group,
up nodes sit in *buckets* of equal free resources, each holding its node ids
sorted; the buckets are sorted by ``(free score, free amounts)``. Taking the
first fitting node in any order costs a bisect plus a walk over the buckets
(not the nodes) that cannot host the request, and nodes of one bucket are
interchangeable but for their id. Capacity never goes negative: ``allocate``
asserts it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from runtime.policies.base import (
    ACCELERATOR_LABEL,
    FitOrder,
    NodeInfo,
    NodeState,
    TaskInfo,
)
from runtime.resources import EPSILON, Resources

__all__ = ["NodeIndex", "SpeedTable", "score_of"]

SpeedTable = Mapping[str, Mapping[str, float]]
"""``{task kind: {device model: relative speed}}``; missing entries mean 1.0."""

_ORDERS = ("id", "tightest", "loosest")
_WALK = 16  # up nodes the id order checks one by one before merging buckets
_STATES = ("booting", "up", "draining", "down")


def _items(res: Mapping[str, float]) -> dict[str, float]:
    """The plain dict behind a Resources (fast path), or a dict copy of a mapping."""
    got = getattr(res, "_items", None)
    return got if isinstance(got, dict) else dict(res)


def _fits(req: dict[str, float], free: dict[str, float]) -> bool:
    for k, a in req.items():
        if free.get(k, 0.0) + EPSILON < a:
            return False
    return True


def score_of(free: Mapping[str, float], total: Mapping[str, float]) -> float:
    """The index's free score: ``free_score`` rounded to 9 digits (so equal states tie exactly)."""
    return round(sum(free.get(k, 0.0) / v for k, v in total.items() if v > 0), 9)


class _Bucket:
    """Up nodes of one group with identical free resources (ids kept sorted)."""

    __slots__ = ("free", "fd", "score", "ids")

    def __init__(self, free: Resources, score: float) -> None:
        self.free = free
        self.fd = _items(free)
        self.score = score
        self.ids: list[str] = []


class _Group:
    """Nodes of one shape (total resources, accelerator, node type, cost)."""

    __slots__ = ("key", "total", "accel", "node_type", "cost", "ids", "buckets", "order",
                 "n_state", "up_ids")

    def __init__(self, key: tuple[Any, ...], total: Resources, accel: str | None,
                 node_type: str, cost: float) -> None:
        self.key = key
        self.total = total
        self.accel = accel
        self.node_type = node_type
        self.cost = cost
        self.ids: dict[str, None] = {}  # every node of the group, any state
        self.buckets: dict[tuple[tuple[str, float], ...], _Bucket] = {}
        self.order: list[tuple[float, tuple[tuple[str, float], ...]]] = []  # sorted bucket keys
        self.n_state = dict.fromkeys(_STATES, 0)
        self.up_ids: list[str] = []  # up nodes, sorted (the id order's fast start)

    # bucket maintenance ------------------------------------------------------
    def insert(self, node_id: str, free: Resources) -> None:
        """Put an up node into the bucket of its free resources."""
        fkey = tuple(_items(free).items())
        b = self.buckets.get(fkey)
        if b is None:
            b = self.buckets[fkey] = _Bucket(free, score_of(free, self.total))
            insort(self.order, (b.score, fkey))
        insort(b.ids, node_id)

    def discard(self, node_id: str, free: Resources) -> None:
        """Take an up node out of the bucket of its (old) free resources."""
        fkey = tuple(_items(free).items())
        b = self.buckets[fkey]
        i = bisect_left(b.ids, node_id)
        assert i < len(b.ids) and b.ids[i] == node_id, f"index lost node {node_id}"
        del b.ids[i]
        if not b.ids:
            del self.buckets[fkey]
            j = bisect_left(self.order, (b.score, fkey))
            del self.order[j]

    # queries -------------------------------------------------------------------
    def _runs(self, req: Resources, order: str) -> Iterator[list[_Bucket]]:
        """Fitting buckets grouped in runs of equal score, in score order."""
        rq = _items(req)
        total = self.total
        lb = sum(a / total[k] for k, a in rq.items()) - 1e-9 * (len(rq) + 1)
        keys = self.order
        if order == "loosest":
            i = len(keys) - 1
            run: list[_Bucket] = []
            last = None
            while i >= 0:
                score, fkey = keys[i]
                if score < lb:
                    break
                b = self.buckets.get(fkey)
                i -= 1
                if b is None or not _fits(rq, b.fd):
                    continue
                if run and score != last:
                    yield run
                    run = []
                run.append(b)
                last = score
            if run:
                yield run
        else:
            i = bisect_left(keys, (lb,))
            n = len(keys)
            run = []
            last = None
            while i < n:
                score, fkey = keys[i]
                b = self.buckets.get(fkey)
                i += 1
                if b is None or not _fits(rq, b.fd):
                    continue
                if run and score != last:
                    yield run
                    run = []
                run.append(b)
                last = score
            if run:
                yield run

    def scored(self, req: Resources, order: str) -> Iterator[tuple[float, str]]:
        """``(key score, node id)`` of fitting up nodes, in (key score, id) order."""
        sign = -1.0 if order == "loosest" else 1.0
        for run in self._runs(req, order):
            s = sign * run[0].score
            ids: Iterable[str] = run[0].ids if len(run) == 1 else heapq.merge(*(b.ids for b in run))
            for nid in ids:
                yield (s, nid)

    def by_id(self, req: Resources, nodes: Mapping[str, NodeInfo]) -> Iterator[str]:
        """Ids of fitting up nodes, in id order.

        Walks the first few up nodes directly (usually one of them fits), then
        merges the fitting buckets' id lists from where the walk stopped.
        """
        rq = _items(req)
        ups = self.up_ids
        limit = min(len(ups), _WALK)
        for i in range(limit):
            nid = ups[i]
            if _fits(rq, _items(nodes[nid].free)):
                yield nid
        if limit == len(ups):
            return
        last = ups[limit - 1]
        lists = [map(b.ids.__getitem__, range(bisect_right(b.ids, last), len(b.ids)))
                 for run in self._runs(req, "tightest") for b in run]
        yield from (lists[0] if len(lists) == 1 else heapq.merge(*lists))


class NodeIndex:
    """The cluster's nodes and running tasks, with index-backed queries for policies."""

    def __init__(self, speeds: SpeedTable | None = None, clock: Any = None) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._group_of: dict[str, _Group] = {}
        # task id -> [TaskInfo, node id, start time, held amounts]
        self._running: dict[int, list[Any]] = {}
        self._tasks_on: dict[str, dict[int, None]] = {}
        self._idle: dict[str, float] = {}  # up nodes with no task, in idle-since order
        self._usage: dict[str, dict[str, float]] = {}  # tenant -> held amounts
        self._cands: dict[tuple[Resources, str | None], list[_Group]] = {}
        self._running_sorted: list[TaskInfo] | None = None
        self.speeds: dict[str, dict[str, float]] = {k: dict(v) for k, v in (speeds or {}).items()}
        self._clock = clock
        self._now = 0.0
        self.version = 0  # bumped on every change; lets callers cache
        self._undo: list[NodeInfo] | None = None  # tentative holds (see runtime.policies.ledger)

    # ClusterState -----------------------------------------------------------
    @property
    def now(self) -> float:
        """Current time (from the clock callable when given)."""
        return self._clock() if self._clock is not None else self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value

    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        return self._nodes[node_id]

    def nodes(self) -> list[NodeInfo]:
        """Every node, in id order."""
        return [self._nodes[k] for k in sorted(self._nodes)]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Up nodes where ``task`` fits now, in ``order`` (see ``ClusterState.fitting``), lazily.

        Do not change the index while iterating: take what you need, then act.
        """
        if order not in _ORDERS:
            raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
        return self._fitting(task.request, task.accelerator_type, order)

    def _fitting(self, req: Resources, accel: str | None, order: str) -> Iterator[NodeInfo]:
        groups = self.candidate_groups(req, accel)
        nodes = self._nodes
        if order == "id":
            its = [g.by_id(req, nodes) for g in groups]
            ids = its[0] if len(its) == 1 else heapq.merge(*its)
            for nid in ids:
                yield nodes[nid]
            return
        its2 = [g.scored(req, order) for g in groups]
        pairs = its2[0] if len(its2) == 1 else heapq.merge(*its2)
        for _, nid in pairs:
            yield nodes[nid]

    def candidate_groups(self, req: Resources, accel: str | None) -> list[_Group]:
        """Groups whose shape could ever host ``req`` (accelerator matched), cached."""
        key = (req, accel)
        got = self._cands.get(key)
        if got is None:
            if len(self._cands) > 4096:
                self._cands.clear()
            got = self._cands[key] = [
                g for g in self._groups.values()
                if (accel is None or g.accel == accel) and req.fits(g.total)
            ]
        return got

    def first_fitting(self, task: TaskInfo, order: FitOrder = "id",
                      group: Any = None) -> NodeInfo | None:
        """The first node ``fitting`` would give (optionally within one group), or None."""
        if group is None:
            return next(self.fitting(task, order), None)
        req = task.request
        if order == "id":
            nid = next(group.by_id(req, self._nodes), None)
        else:
            got = next(group.scored(req, order), None)
            nid = got[1] if got else None
        return self._nodes[nid] if nid is not None else None

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of the task's kind on the node's accelerator model (1.0 default)."""
        row = self.speeds.get(task.task_kind)
        if not row:
            return 1.0
        model = node.labels.get(ACCELERATOR_LABEL) or node.node_type
        return row.get(model, row.get(node.node_type, 1.0))

    def running(self) -> list[TaskInfo]:
        """Tasks holding resources, in id order."""
        if self._running_sorted is None:
            self._running_sorted = [self._running[k][0] for k in sorted(self._running)]
        return list(self._running_sorted)

    def placement_of(self, task_id: int) -> str | None:
        """Node of a running task, or None."""
        entry = self._running.get(task_id)
        return entry[1] if entry else None

    # Extra queries (policies use them when the cluster is a NodeIndex) ---------
    def started_at(self, task_id: int) -> float | None:
        """When a running task was allocated (``now`` at ``allocate``), or None."""
        entry = self._running.get(task_id)
        return entry[2] if entry else None

    def tasks_on(self, node_id: str) -> list[TaskInfo]:
        """Running tasks on a node, in id order."""
        return [self._running[t][0] for t in sorted(self._tasks_on.get(node_id, ()))]

    def idle_nodes(self) -> list[tuple[str, float]]:
        """``(node id, idle since)`` of up nodes running no task, longest idle first."""
        return list(self._idle.items())

    def tenant_usage(self) -> dict[str, dict[str, float]]:
        """Resources held by running tasks, per tenant (sorted by tenant)."""
        return {t: dict(u) for t, u in sorted(self._usage.items())}

    def node_counts(self) -> dict[str, dict[str, int]]:
        """``{node type: {state: count}}`` over every node (states with 0 left out)."""
        out: dict[str, dict[str, int]] = {}
        for g in self._groups.values():
            row = out.setdefault(g.node_type, {})
            for s, c in g.n_state.items():
                if c:
                    row[s] = row.get(s, 0) + c
        return dict(sorted(out.items()))

    def groups(self) -> list[_Group]:
        """The node groups (shape, node type, cost), for policies that rank whole groups."""
        return list(self._groups.values())

    # Mutation (backends only) -------------------------------------------------
    def _changed(self) -> None:
        self.version += 1

    def add_node(self, node_id: str, node_type: str, total: Mapping[str, float],
                 labels: Mapping[str, str] | None = None, state: NodeState = "up",
                 cost_per_hour: float = 0.0) -> NodeInfo:
        """Register a node (all resources free)."""
        self._no_holds("add_node")
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} already exists")
        if state not in _STATES:
            raise ValueError(f"state={state!r}: expected one of {', '.join(_STATES)}")
        tot = total if isinstance(total, Resources) else Resources(total, where="node total")
        labels = dict(labels or {})
        info = NodeInfo(node_id, node_type, tot, tot, labels, state, cost_per_hour)
        self._nodes[node_id] = info
        accel = labels.get(ACCELERATOR_LABEL)
        key = (tot, accel, node_type, float(cost_per_hour))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, tot, accel, node_type, float(cost_per_hour))
            self._cands.clear()
        group.ids[node_id] = None
        group.n_state[state] += 1
        self._group_of[node_id] = group
        self._tasks_on[node_id] = {}
        if state == "up":
            group.insert(node_id, tot)
            insort(group.up_ids, node_id)
            self._idle[node_id] = self.now
        self._changed()
        return info

    def remove_node(self, node_id: str) -> list[int]:
        """Forget a node; returns the ids of tasks that were running on it (now released)."""
        self._no_holds("remove_node")
        info = self._nodes.pop(node_id)
        group = self._group_of.pop(node_id)
        if info.state == "up":
            group.discard(node_id, info.free)
            group.up_ids.remove(node_id)
        group.n_state[info.state] -= 1
        del group.ids[node_id]
        if not group.ids:
            del self._groups[group.key]
            self._cands.clear()
        self._idle.pop(node_id, None)
        lost = sorted(self._tasks_on.pop(node_id, ()))
        for t in lost:
            task, _, _, held = self._running.pop(t)
            self._use(task.tenant, held, -1.0)
        if lost:
            self._running_sorted = None
        self._changed()
        return lost

    def set_state(self, node_id: str, state: NodeState) -> None:
        """Change a node's state (booting -> up -> draining -> down)."""
        self._no_holds("set_state")
        if state not in _STATES:
            raise ValueError(f"state={state!r}: expected one of {', '.join(_STATES)}")
        info = self._nodes[node_id]
        if info.state == state:
            return
        group = self._group_of[node_id]
        if info.state == "up":
            group.discard(node_id, info.free)
            group.up_ids.remove(node_id)
            self._idle.pop(node_id, None)
        group.n_state[info.state] -= 1
        group.n_state[state] += 1
        self._nodes[node_id] = NodeInfo(info.id, info.node_type, info.total, info.free,
                                        info.labels, state, info.cost_per_hour)
        if state == "up":
            group.insert(node_id, info.free)
            insort(group.up_ids, node_id)
            if not self._tasks_on[node_id]:
                self._idle[node_id] = self.now
        self._changed()

    def _set_free(self, info: NodeInfo, free: Resources) -> NodeInfo:
        new = NodeInfo(info.id, info.node_type, info.total, free, info.labels, info.state,
                       info.cost_per_hour)
        if info.state == "up":
            group = self._group_of[info.id]
            group.discard(info.id, info.free)
            group.insert(info.id, free)
        self._nodes[info.id] = new
        return new

    def _use(self, tenant: str, amount: Mapping[str, float], sign: float) -> None:
        row = self._usage.setdefault(tenant, {})
        for k, v in amount.items():
            left = row.get(k, 0.0) + sign * v
            if abs(left) <= EPSILON:
                row.pop(k, None)
            else:
                row[k] = left
        if not row:
            del self._usage[tenant]

    def allocate(self, task: TaskInfo, node_id: str, amount: Mapping[str, float] | None = None) -> None:
        """Take ``amount`` (default: the task's request) on ``node_id`` for ``task``."""
        self._no_holds("allocate")
        info = self._nodes[node_id]
        amount = task.request if amount is None else amount
        free = info.free - amount  # raises on negative capacity
        assert all(v >= -EPSILON for v in free.values())
        self._set_free(info, free)
        entry = self._running.get(task.id)
        if entry is None:
            self._running[task.id] = [task, node_id, self.now, dict(amount)]
            self._tasks_on[node_id][task.id] = None
            self._idle.pop(node_id, None)
            self._running_sorted = None
        else:
            held = entry[3]
            for k, v in amount.items():
                held[k] = held.get(k, 0.0) + v
        self._use(task.tenant, amount, 1.0)
        self._changed()

    def release(self, task_id: int, amount: Mapping[str, float] | None = None, *,
                keep_running: bool = False) -> str | None:
        """Give back a task's resources (``amount``, default all it holds); returns its node."""
        self._no_holds("release")
        entry = self._running.get(task_id)
        if entry is None:
            return None
        task, node_id, _, held = entry
        amount = dict(held) if amount is None else dict(amount)
        if not keep_running:
            del self._running[task_id]
            self._running_sorted = None
            self._tasks_on.get(node_id, {}).pop(task_id, None)
            self._use(task.tenant, held, -1.0)
        else:
            self._use(task.tenant, amount, -1.0)
            for k, v in amount.items():
                held[k] = max(held.get(k, 0.0) - v, 0.0)
        info = self._nodes.get(node_id)
        if info is None:
            return node_id
        free = info.free + amount
        if any(free.get(k) > info.total.get(k) + EPSILON for k in free):
            raise AssertionError(f"node {node_id} free {free} exceeds total {info.total}")
        info = self._set_free(info, free)
        if not keep_running and info.state == "up" and not self._tasks_on[node_id]:
            self._idle[node_id] = self.now
        self._changed()
        return node_id

    def reacquire(self, task_id: int, amount: Mapping[str, float]) -> None:
        """Take back resources a blocked task lent (``amount``) on its own node."""
        self._no_holds("reacquire")
        entry = self._running[task_id]
        task, node_id, _, held = entry
        info = self._nodes[node_id]
        free = info.free - amount
        self._set_free(info, free)
        for k, v in amount.items():
            held[k] = held.get(k, 0.0) + v
        self._use(task.tenant, amount, 1.0)
        self._changed()

    # Tentative holds (one schedule call; see runtime.policies.ledger) ---------
    def _no_holds(self, what: str) -> None:
        if self._undo is not None:
            raise RuntimeError(f"NodeIndex.{what} called while a policy holds tentative "
                               f"placements (inside schedule); act after schedule returns")

    def _hold(self, node_id: str, amount: Mapping[str, float]) -> NodeInfo:
        """Tentatively take ``amount`` on a node (undone by ``_rollback``)."""
        if self._undo is None:
            self._undo = []
        info = self._nodes[node_id]
        new = self._set_free(info, info.free - amount)
        self._undo.append(info)
        return new

    def _rollback(self) -> None:
        """Undo every tentative hold, restoring the exact previous node values."""
        undo, self._undo = self._undo, None
        for old in reversed(undo or ()):
            cur = self._nodes[old.id]
            group = self._group_of[old.id]
            if cur.state == "up":
                group.discard(old.id, cur.free)
                group.insert(old.id, old.free)
            self._nodes[old.id] = old

    # Summaries ------------------------------------------------------------------
    def shapes(self) -> Iterable[tuple[str, Resources, Mapping[str, str]]]:
        """``(node id, total, labels)`` of every node (for feasibility checks)."""
        return [(n.id, n.total, n.labels) for n in self.nodes()]

    def totals(self) -> dict[str, float]:
        """Sum of total resources over up (and draining) nodes."""
        out: dict[str, float] = {}
        for g in self._groups.values():
            count = g.n_state["up"] + g.n_state["draining"]
            if count:
                for k, v in g.total.items():
                    out[k] = out.get(k, 0.0) + v * count
        return dict(sorted(out.items()))

    def available(self) -> dict[str, float]:
        """Sum of free resources over up nodes."""
        out: dict[str, float] = {}
        for g in self._groups.values():
            for b in g.buckets.values():
                for k, v in b.free.items():
                    out[k] = out.get(k, 0.0) + v * len(b.ids)
        return dict(sorted(out.items()))
