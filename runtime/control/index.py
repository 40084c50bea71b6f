"""The one index of nodes and free resources: :class:`ClusterIndex` (a :class:`ClusterState`).

Every backend and the simulator keep their cluster in one of these, through the
control plane, so every policy reads the same structure everywhere.

Layout (for speed at 100k nodes): nodes are grouped by *shape* (node type, total
resources, accelerator, cost); a group keeps its resource amounts as tuples in a
fixed order and its up nodes in *buckets* of equal free vectors, each bucket a lazy
min-heap of ``(node id, version)``. Per request vector a group keeps the sorted
``(score, free)`` keys of the buckets where it fits, so ``fitting`` walks buckets,
not nodes, and taking the first node costs about O(log n). Free-vector transitions
are computed (and checked: capacity never goes negative) once per distinct
``(free, request)`` pair and cached.

Who mutates it: only the control plane (:mod:`runtime.control.plane`) and, inside
one ``schedule`` call, the Ledger's tentative holds (``hold`` / ``rollback``).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from runtime.cluster.checks import score_of
from runtime.cluster.nodetypes import NodeType, with_changes
from runtime.cluster.types import (
    ACCELERATOR_LABEL,
    FIT_ORDERS,
    NODE_STATES,
    FitOrder,
    GroupInfo,
    NodeInfo,
    NodeState,
    TaskInfo,
)
from runtime.resources import EPSILON, Resources

__all__ = ["ClusterIndex", "IndexNode", "IndexGroup", "SpeedTable", "score_of", "RUN_INFO",
           "RUN_NODE", "RUN_START", "RUN_VEC"]

ReqVec = tuple[tuple[int, float], ...]
SpeedTable = Mapping[str, Mapping[str, float]]
"""``{task kind: {device model or node type: relative speed}}``; missing entries mean 1.0."""
_WALK = 16  # up nodes the id order checks one by one before looking at the buckets


def _fits(free: tuple[float, ...], vec: ReqVec) -> bool:
    for i, a in vec:
        if free[i] + EPSILON < a:
            return False
    return True


class _Bucket:
    """Up nodes of one group with the same free vector: a lazy heap of ``(node id, version)``."""

    __slots__ = ("heap", "count", "score")

    def __init__(self, score: float) -> None:
        self.heap: list[tuple[str, int]] = []
        self.count = 0
        self.score = score


class IndexNode:
    """One node as the index keeps it (mutable; the control plane's)."""

    __slots__ = ("id", "group", "free", "state", "version", "info", "tasks", "up_since",
                 "added_at", "removing", "in_window", "ix")

    def __init__(self, node_id: str, group: IndexGroup, now: float) -> None:
        self.id = node_id
        self.group = group
        self.free = group.total
        self.state: NodeState = "down"
        self.version = 0
        self.info: NodeInfo | None = None
        self.tasks: dict[int, None] = {}
        self.up_since: float | None = None
        self.added_at = now
        self.removing = False  # draining, to be removed once idle (scale down)
        self.in_window = False  # draining for a device's unavailability window
        self.ix = -1  # the owner's tag (the simulator's trace index)

    @property
    def spec(self) -> NodeType:
        """The node's type."""
        return self.group.spec


class IndexGroup:
    """All nodes of one shape: node type, total resources, accelerator and cost."""

    __slots__ = ("key", "spec", "name", "names", "index", "total", "total_res", "accel",
                 "labels", "buckets", "keys", "fit", "ver", "first_cache", "head_cache",
                 "sub_cache", "add_cache", "req_cache", "res_cache", "cost", "nodes", "busy",
                 "uptime", "model_of", "n_state", "ids", "up_ids")

    def __init__(self, key: int, spec: NodeType, nodes: dict[str, IndexNode]) -> None:
        self.key = key
        self.spec = spec
        self.name = spec.name
        self.total_res = spec.resources
        self.names = tuple(self.total_res)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.total = tuple(self.total_res[n] for n in self.names)
        self.labels = dict(spec.labels)
        self.accel = self.labels.get(ACCELERATOR_LABEL)
        self.cost = spec.cost_per_hour
        self.buckets: dict[tuple[float, ...], _Bucket] = {}
        self.keys: list[tuple[float, tuple[float, ...]]] = []  # (score, free), non-empty buckets
        # per request vector: the (score, free) keys of non-empty buckets where it fits
        self.fit: dict[ReqVec, list[tuple[float, tuple[float, ...]]]] = {}
        self.ver = 0  # bumped whenever a node enters or leaves a bucket
        self.first_cache: dict[tuple[ReqVec, str], tuple[int, Any]] = {}
        self.head_cache: dict[tuple[ReqVec, str], tuple[int, Any, Any]] = {}
        self.sub_cache: dict[tuple[tuple[float, ...], ReqVec], tuple[float, ...]] = {}
        self.add_cache: dict[tuple[tuple[float, ...], ReqVec], tuple[float, ...]] = {}
        self.req_cache: dict[Resources, ReqVec | None] = {}
        self.res_cache: dict[tuple[float, ...], Resources] = {}
        self.nodes = nodes  # the index's node table, shared
        self.busy = [0.0] * len(self.names)  # resource-seconds used (the simulator's books)
        self.uptime = 0.0  # node-seconds up or draining
        acc = spec.accelerator
        cpu = spec.cpu_device
        self.model_of = tuple(acc.model if acc is not None and n == acc.kind else
                              (cpu.model if cpu is not None and n == "CPU" else n)
                              for n in self.names)
        self.n_state = dict.fromkeys(NODE_STATES, 0)
        self.ids: dict[str, None] = {}  # the group's nodes, any state
        self.up_ids: list[str] = []  # its up nodes, sorted by id

    def reqvec(self, req: Resources) -> ReqVec | None:
        """The request as ``(index, amount)`` pairs, or None when no node of the group
        could ever hold it."""
        try:
            return self.req_cache[req]
        except KeyError:
            pass
        idx = self.index
        vec: ReqVec | None = tuple((idx[k], v) for k, v in req.items()) \
            if all(k in idx for k in req) else None
        if vec is not None and not _fits(self.total, vec):
            vec = None
        self.req_cache[req] = vec
        if vec is not None and vec not in self.fit:
            self.fit[vec] = [k for k in self.keys if _fits(k[1], vec)]
        return vec

    def vec_of(self, amount: Mapping[str, float]) -> ReqVec:
        """Any amount (of resources the group has) as an ``(index, amount)`` vector."""
        idx = self.index
        return tuple((idx[k], float(v)) for k, v in amount.items() if k in idx)

    def score(self, free: tuple[float, ...]) -> float:
        """The free score of a free vector: sum of free/total, rounded to 9 digits."""
        return round(sum(f / t for f, t in zip(free, self.total, strict=True) if t > 0), 9)

    def resources(self, free: tuple[float, ...]) -> Resources:
        """A cached :class:`Resources` for a free vector."""
        r = self.res_cache.get(free)
        if r is None:
            if len(self.res_cache) > 65536:
                self.res_cache.clear()
            r = self.res_cache[free] = Resources._trusted(dict(zip(self.names, free,
                                                                   strict=True)))
        return r

    # bucket maintenance -----------------------------------------------------------
    def insert(self, node: IndexNode) -> None:
        """Put an up node into the bucket of its free vector."""
        self.ver += 1
        key = node.free
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = _Bucket(self.score(key))
        if b.count == 0:
            entry = (b.score, key)
            bisect.insort(self.keys, entry)
            for vec, lst in self.fit.items():
                if _fits(key, vec):
                    bisect.insort(lst, entry)
        b.count += 1
        heapq.heappush(b.heap, (node.id, node.version))
        if len(b.heap) > 2 * b.count + 32:
            self._compact(b)

    def remove(self, node: IndexNode) -> None:
        """Take an up node out of the bucket of its free vector."""
        self.ver += 1
        key = node.free
        b = self.buckets[key]
        b.count -= 1
        if b.count == 0:  # kept (with its score) for reuse; every heap entry is stale now
            b.heap.clear()
            entry = (b.score, key)
            del self.keys[bisect.bisect_left(self.keys, entry)]
            for vec, lst in self.fit.items():
                if _fits(key, vec):
                    del lst[bisect.bisect_left(lst, entry)]

    def move(self, node: IndexNode, free: tuple[float, ...]) -> None:
        """``remove``, set the node's free vector (new version), ``insert`` (inlined: the
        hot path of every start and end)."""
        self.ver += 2
        key = node.free
        buckets = self.buckets
        b = buckets[key]
        b.count -= 1
        if b.count == 0:
            b.heap.clear()
            entry = (b.score, key)
            del self.keys[bisect.bisect_left(self.keys, entry)]
            for vec, lst in self.fit.items():
                if _fits(key, vec):
                    del lst[bisect.bisect_left(lst, entry)]
        node.free = free
        ver = node.version = node.version + 1
        node.info = None
        b = buckets.get(free)
        if b is None:
            b = buckets[free] = _Bucket(self.score(free))
        if b.count == 0:
            entry = (b.score, free)
            bisect.insort(self.keys, entry)
            for vec, lst in self.fit.items():
                if _fits(free, vec):
                    bisect.insort(lst, entry)
        b.count += 1
        heapq.heappush(b.heap, (node.id, ver))
        if len(b.heap) > 2 * b.count + 32:
            self._compact(b)

    def _compact(self, b: _Bucket) -> None:
        nodes = self.nodes
        b.heap = [e for e in b.heap if (n := nodes.get(e[0])) is not None and n.version == e[1]]
        heapq.heapify(b.heap)

    def ordered(self, key: tuple[float, ...]) -> Iterator[IndexNode]:
        """Nodes of bucket ``key`` in id order (the first is cheap)."""
        b = self.buckets.get(key)
        if b is None:
            return
        first = _head(self, key)
        if first is None:
            return
        yield first
        nodes = self.nodes
        rest = sorted(e for e in b.heap[1:] if (n := nodes.get(e[0])) is not None
                      and n.version == e[1])
        for nid, _ in rest:
            yield nodes[nid]

    def used(self) -> dict[str, float]:
        """What running tasks hold on the group's up nodes."""
        up = self.n_state["up"]
        out = {k: v * up for k, v in zip(self.names, self.total, strict=True)}
        for key, b in self.buckets.items():
            if b.count:
                for k, v in zip(self.names, key, strict=True):
                    out[k] -= v * b.count
        return {k: round(v, 9) for k, v in out.items() if v > EPSILON}


#: A task holding resources is a tuple ``(info, node record, start time, held vector)``
#: in ``ClusterIndex._running`` (a tuple, not an object: this is the hot path).
RUN_INFO, RUN_NODE, RUN_START, RUN_VEC = 0, 1, 2, 3
_Run = tuple


class ClusterIndex:
    """Nodes, free resources and running tasks, with index-backed queries (a ClusterState)."""

    def __init__(self, speeds: SpeedTable | None = None) -> None:
        self.now = 0.0  # set by the control plane before every decision
        self.speeds: dict[str, dict[str, float]] = {k: dict(v) for k, v in (speeds or {}).items()}
        self._nodes: dict[str, IndexNode] = {}
        self._groups: dict[tuple[Any, ...], IndexGroup] = {}
        self._group_list: list[IndexGroup] = []
        self._types: dict[str, NodeType] = {}
        self._running: dict[int, _Run] = {}
        self._running_sorted: list[TaskInfo] | None = None
        self._idle: dict[str, float] = {}  # up nodes running nothing, in idle-since order
        self._usage: dict[str, dict[str, float]] | None = None  # per tenant, once asked for
        self._eligible: dict[tuple[Any, ...], list[tuple[IndexGroup, ReqVec, float]]] = {}
        self._eligible_id: dict[tuple[int, str | None, str], tuple[Any, Any]] = {}
        self.free_total: dict[str, float] = {}
        self.version = 0  # bumped on every change (lets callers cache)
        self._undo: list[tuple[IndexNode, tuple[float, ...]]] | None = None

    # ClusterState: nodes ------------------------------------------------------------
    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        n = self._nodes[node_id]
        info = n.info
        if info is None:
            g = n.group
            info = n.info = NodeInfo(n.id, g.name, g.total_res, g.resources(n.free), g.labels,
                                     n.state, g.cost)
        return info

    def nodes(self) -> list[NodeInfo]:
        """Every node (any state), in id order."""
        return [self.node(k) for k in sorted(self._nodes)]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def eligible(self, task: TaskInfo) -> list[tuple[IndexGroup, ReqVec, float]]:
        """``(group, request vector, speed)`` of the groups that could ever host ``task``
        (resources, accelerator, speed > 0), cached per shape."""
        req = task.request
        fast = (id(req), task.accelerator_type, task.kind or task.name)
        c = self._eligible_id.get(fast)
        if c is not None and c[0] is req:
            return c[1]
        key = (req, task.accelerator_type, task.task_kind)
        out = self._eligible.get(key)
        if out is None:
            out = []
            for g in self._group_list:
                if task.accelerator_type is not None and g.accel != task.accelerator_type:
                    continue
                vec = g.reqvec(req)
                if vec is None:
                    continue
                sp = self._group_speed(task, g)
                if sp > 0:
                    out.append((g, vec, sp))
            self._eligible[key] = out
        if len(self._eligible_id) > 4096:  # bounded: workloads with a request object per task
            self._eligible_id.clear()
        self._eligible_id[fast] = (req, out)  # holds ``req``, so its id is not reused
        return out

    def room(self, task: TaskInfo, cap: int) -> int:
        """How many copies of ``task`` the up nodes could host now (counting stops at ``cap``)."""
        return self.room_in(self.eligible(task), cap)

    @staticmethod
    def room_in(elig: list[tuple[IndexGroup, ReqVec, float]], cap: int) -> int:
        """``room`` for a task whose ``eligible`` groups are ``elig``."""
        k = 0
        for g, vec, _ in elig:
            buckets = g.buckets
            keys = g.fit[vec]
            for j in range(len(keys) - 1, -1, -1):  # emptiest first: reaches ``cap`` soonest
                key = keys[j][1]
                per = cap
                for i, a in vec:
                    q = int(key[i] / a + 1e-9) if a > 0 else cap
                    if q < per:
                        per = q
                k += per * buckets[key].count
                if k >= cap:
                    return cap
        return k

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Up nodes where ``task`` fits now (and runs at speed > 0), in ``order``, lazily.

        Do not change the index while iterating: take what you need, then act."""
        if order not in FIT_ORDERS:
            raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
        return self._fitting(self.eligible(task), order)

    def _fitting(self, elig: list[tuple[IndexGroup, ReqVec, float]],
                 order: str) -> Iterator[NodeInfo]:
        heads = []
        for i, (g, vec, _) in enumerate(elig):
            ck = (vec, order)
            c = g.first_cache.get(ck)
            if c is not None and c[0] == g.ver:
                first, it = c[1], None  # the group's head is unchanged since last asked
            else:
                it = self._group_iter(g, vec, order)
                first = next(it, None)
                g.first_cache[ck] = (g.ver, first)
            if first is not None:
                heads.append((first[0], i, first[1], it, g, vec))
        if not heads:
            return
        node = self.node
        if len(heads) == 1:
            _, _, n, it, g, vec = heads[0]
            yield node(n.id)
            if it is None:
                it = self._group_iter(g, vec, order)
                next(it, None)
            for _, n in it:
                yield node(n.id)
            return
        heapq.heapify(heads)
        while heads:
            _, i, n, it, g, vec = heads[0]
            yield node(n.id)
            if it is None:
                it = self._group_iter(g, vec, order)
                next(it, None)
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (nxt[0], i, nxt[1], it, g, vec))

    def first_fitting(self, task: TaskInfo, order: FitOrder = "id",
                      group: int | None = None) -> NodeInfo | None:
        """The first node ``fitting(task, order)`` would yield (within group ``group`` when
        given), or None, without building an iterator."""
        best: Any = None
        best_node: IndexNode | None = None
        for g, vec, _ in self.eligible(task):
            if group is not None and g.key != group:
                continue
            ck = (vec, order)
            c = g.head_cache.get(ck)
            if c is not None and c[0] == g.ver:  # nothing entered or left the group's buckets
                k, n = c[1], c[2]
                if n is not None and (best_node is None or k < best):
                    best, best_node = k, n
                continue
            keys = g.fit[vec]
            if not keys:
                g.head_cache[ck] = (g.ver, None, None)
                continue
            if order == "tightest":
                k, n = _head_run(g, keys, 0, 1)
            elif order == "loosest":
                k, n = _head_run(g, keys, len(keys) - 1, -1)
            elif order == "id":
                k, n = None, None
                nodes = g.nodes
                for nid in g.up_ids[:_WALK]:  # usually one of the first few fits
                    m = nodes[nid]
                    if _fits(m.free, vec):
                        k, n = nid, m
                        break
                for _, key in keys if n is None else ():
                    h = _head(g, key)
                    if h is not None and (k is None or h.id < k):
                        k, n = h.id, h
            else:
                raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
            g.head_cache[ck] = (g.ver, k, n)
            if n is not None and (best_node is None or k < best):
                best, best_node = k, n
        return None if best_node is None else self.node(best_node.id)

    def _group_iter(self, g: IndexGroup, vec: ReqVec, order: str) -> Iterator[tuple[Any, IndexNode]]:
        keys = g.fit[vec]
        if order == "id":
            its = [((n.id, n) for n in g.ordered(key)) for _, key in keys]
            if len(its) == 1:
                yield from its[0]
            elif its:
                yield from heapq.merge(*its, key=_first)
            return
        nk = len(keys)
        sign = 1.0 if order == "tightest" else -1.0
        idx = range(nk) if order == "tightest" else range(nk - 1, -1, -1)
        run: list[tuple[float, ...]] = []
        run_score = None
        for i in idx:
            score, key = keys[i]
            if score != run_score:
                if run:
                    yield from _emit_run(g, run, sign * run_score)  # type: ignore[operator]
                    run = []
                run_score = score
            run.append(key)
        if run:
            yield from _emit_run(g, run, sign * run_score)  # type: ignore[operator]

    def hosts(self, task: TaskInfo) -> list[NodeInfo]:
        """Up nodes that could ever host ``task`` (total fits, accelerator, speed > 0)."""
        nodes = self._nodes
        ids = [nid for g, _, _ in self.eligible(task) if g.n_state["up"]
               for nid in g.ids if nodes[nid].state == "up"]
        return [self.node(nid) for nid in sorted(ids)]

    def groups(self, task: TaskInfo | None = None) -> list[GroupInfo]:
        """Node groups with counts by state and use; with ``task``, those that could host it."""
        gs = self._group_list if task is None else [g for g, _, _ in self.eligible(task)]
        return [GroupInfo(g.key, g.name, g.total_res, g.labels, g.cost,
                          {s: c for s, c in g.n_state.items() if c}, g.used(), next(iter(g.ids)))
                for g in sorted(gs, key=lambda g: g.key) if g.ids]

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of the task's kind on the node's devices (1.0 when unknown)."""
        n = self._nodes.get(node.id)
        if n is None:
            return 1.0
        return self._group_speed(task, n.group)

    def _group_speed(self, task: TaskInfo, g: IndexGroup) -> float:
        sp = g.spec.speed_for(task.task_kind, task.request)
        if sp is not None:
            return sp
        row = self.speeds.get(task.task_kind)
        if not row:
            return 1.0
        return row.get(g.accel or g.name, row.get(g.name, 1.0))

    def node_type(self, name: str) -> NodeType | None:
        """The node type of that name the index knows (registered or seen), if any."""
        return self._types.get(name)

    def register_type(self, node_type: NodeType) -> None:
        """Know ``node_type`` by name, so nodes added by name alone keep its devices."""
        self._types[node_type.name] = node_type

    # ClusterState: running tasks ----------------------------------------------------------
    def running(self) -> list[TaskInfo]:
        """Tasks holding resources, in id order."""
        if self._running_sorted is None:
            self._running_sorted = [self._running[k][0] for k in sorted(self._running)]
        return list(self._running_sorted)

    def placement_of(self, task_id: int) -> str | None:
        """The node a running task holds resources on."""
        r = self._running.get(task_id)
        return r[1].id if r is not None else None

    def started_at(self, task_id: int) -> float | None:
        """When a running task was placed (``now`` at its allocation), or None."""
        r = self._running.get(task_id)
        return r[2] if r is not None else None

    def held(self, task_id: int) -> dict[str, float]:
        """What a running task holds now (less what it lent while blocked)."""
        r = self._running.get(task_id)
        if r is None:
            return {}
        names = r[1].group.names
        return {names[i]: a for i, a in r[3] if a > EPSILON}

    def tasks_on(self, node_id: str) -> list[TaskInfo]:
        """Running tasks on a node, in id order."""
        n = self._nodes.get(node_id)
        if n is None:
            return []
        return [self._running[t][0] for t in sorted(n.tasks)]

    def tenant_usage(self) -> dict[str, dict[str, float]]:
        """Resources held by running tasks, per tenant (kept up to date once asked for)."""
        if self._usage is None:
            self._usage = {}
            for info, node, _, vec in self._running.values():
                self._use(info.tenant, node.group, vec, 1.0)
        return {t: dict(u) for t, u in sorted(self._usage.items())}

    def _use(self, tenant: str, g: IndexGroup, vec: ReqVec, sign: float) -> None:
        usage = self._usage
        if usage is None:
            return
        row = usage.setdefault(tenant, {})
        names = g.names
        for i, a in vec:
            k = names[i]
            left = round(row.get(k, 0.0) + sign * a, 9)
            if abs(left) <= EPSILON:
                row.pop(k, None)
            else:
                row[k] = left
        if not row:
            del usage[tenant]

    # ClusterState: sums -------------------------------------------------------------------
    def totals(self) -> dict[str, float]:
        """Total resources of the up and draining nodes."""
        out: dict[str, float] = {}
        for g in self._group_list:
            count = g.n_state["up"] + g.n_state["draining"]
            if count:
                for k, v in zip(g.names, g.total, strict=True):
                    out[k] = out.get(k, 0.0) + v * count
        return dict(sorted(out.items()))

    def available(self) -> dict[str, float]:
        """Free resources of the up nodes."""
        return {k: round(v, 9) for k, v in sorted(self.free_total.items()) if v > EPSILON}

    def idle_nodes(self) -> list[tuple[str, float]]:
        """``(node id, idle since)`` of up nodes running nothing, longest idle first."""
        return list(self._idle.items())

    def node_counts(self) -> dict[str, dict[str, int]]:
        """``{node type: {state: count}}`` over every node (states with 0 left out)."""
        out: dict[str, dict[str, int]] = {}
        for g in self._group_list:
            row = out.setdefault(g.name, {})
            for s, c in g.n_state.items():
                if c:
                    row[s] = row.get(s, 0) + c
        return dict(sorted(out.items()))

    def shapes(self) -> list[tuple[str, Resources, Mapping[str, str]]]:
        """``(node id, total, labels)`` of every node that is not down (feasibility checks)."""
        return [(n.id, n.group.total_res, n.group.labels)
                for _, n in sorted(self._nodes.items()) if n.state != "down"]

    # tentative holds (the Ledger's) ------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Whether holds of a ``schedule`` call are in place."""
        return self._undo is not None

    def open_holds(self) -> None:
        """Start a ``schedule`` call's tentative holds (changes are refused until rollback)."""
        if self._undo is None:
            self._undo = []

    def hold(self, node_id: str, amount: Mapping[str, float]) -> NodeInfo:
        """Tentatively take ``amount`` on a node for the rest of a ``schedule`` call (clamped
        at 0; undone by :meth:`rollback`)."""
        if self._undo is None:
            self._undo = []
        n = self._nodes[node_id]
        idx = n.group.index
        old = n.free
        free = list(old)
        for k, a in amount.items():
            i = idx.get(k)
            if i is not None:
                free[i] = max(round(free[i] - a, 9), 0.0)
        self._undo.append((n, old))
        self._set_free(n, tuple(free))
        return self.node(node_id)

    def rollback(self) -> None:
        """Undo every tentative hold, restoring the exact previous free vectors."""
        undo, self._undo = self._undo, None
        for n, old in reversed(undo or ()):
            self._set_free(n, old)

    def _no_holds(self, what: str) -> None:
        if self._undo is not None:
            raise RuntimeError(f"ClusterIndex.{what} called while a policy holds tentative "
                               f"placements (inside schedule); act after schedule returns")

    # mutation (the control plane only) ----------------------------------------------------------
    def _group_for(self, spec: NodeType) -> IndexGroup:
        key = (spec.name, spec.resources, spec.labels.get(ACCELERATOR_LABEL),
               float(spec.cost_per_hour))
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = IndexGroup(len(self._group_list), spec, self._nodes)
            self._group_list.append(g)
            self._eligible.clear()
            self._eligible_id.clear()
        self._types.setdefault(spec.name, spec)
        return g

    def add_node(self, node_id: str, node_type: NodeType | str, total: Mapping[str, float]
                 | None = None, labels: Mapping[str, str] | None = None,
                 state: NodeState = "up", cost_per_hour: float | None = None) -> IndexNode:
        """Register a node of ``node_type`` (a NodeType, or a name with ``total``,
        ``labels`` and ``cost_per_hour``) with every resource free."""
        self._no_holds("add_node")
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} already exists")
        if state not in NODE_STATES:
            raise ValueError(f"state={state!r}: expected one of {', '.join(NODE_STATES)}")
        if isinstance(node_type, NodeType):
            spec = node_type
            if total is not None or labels is not None or cost_per_hour is not None:
                spec = with_changes(
                    spec, resources=spec.resources if total is None else total,
                    labels=spec.labels if labels is None else labels,
                    cost_per_hour=spec.cost_per_hour if cost_per_hour is None else cost_per_hour)
        else:
            known = self._types.get(node_type)
            tot = total if total is not None else (known.resources if known else {})
            spec = NodeType(node_type, tot if isinstance(tot, Resources)  # type: ignore[arg-type]
                            else Resources(tot, where="node total"),
                            dict(labels or {}), float(cost_per_hour or 0.0))
            if known is not None and known.resources == spec.resources and \
                    dict(known.labels) == spec.labels and known.cost_per_hour == spec.cost_per_hour:
                spec = known  # keep what the type says of its devices
        g = self._group_for(spec)
        n = IndexNode(node_id, g, self.now)
        self._nodes[node_id] = n
        g.ids[node_id] = None
        g.n_state["down"] += 1
        self._set_state(n, state)
        n.added_at = self.now
        self.version += 1
        return n

    def remove_node(self, node_id: str) -> list[int]:
        """Forget a node; returns the ids of tasks that held resources there (released)."""
        self._no_holds("remove_node")
        n = self._nodes[node_id]
        lost = sorted(n.tasks)
        for tid in lost:
            self.release(tid)
        self._set_state(n, "down")
        n.group.n_state["down"] -= 1
        del n.group.ids[node_id]
        del self._nodes[node_id]
        self.version += 1
        return lost

    def set_state(self, node_id: str, state: NodeState) -> None:
        """Move a node between booting / up / draining / down (only up nodes are offered)."""
        self._no_holds("set_state")
        if state not in NODE_STATES:
            raise ValueError(f"state={state!r}: expected one of {', '.join(NODE_STATES)}")
        self._set_state(self._nodes[node_id], state)

    def _set_state(self, n: IndexNode, state: NodeState) -> None:
        old = n.state
        if old == state:
            return
        now = self.now
        alive_old, alive_new = old in ("up", "draining"), state in ("up", "draining")
        if alive_old and not alive_new:
            n.group.uptime += now - n.up_since if n.up_since is not None else 0.0
            n.up_since = None
        elif alive_new and not alive_old:
            n.up_since = now
        g = n.group
        if old == "up":
            g.remove(n)
            del g.up_ids[bisect.bisect_left(g.up_ids, n.id)]
            self._add_free(n, -1.0)
            self._idle.pop(n.id, None)
        g.n_state[old] -= 1
        g.n_state[state] += 1
        n.state = state
        n.version += 1
        n.info = None
        if state == "up":
            g.insert(n)
            bisect.insort(g.up_ids, n.id)
            self._add_free(n, 1.0)
            if not n.tasks:
                self._idle[n.id] = now
        self.version += 1

    def _add_free(self, n: IndexNode, sign: float) -> None:
        ft = self.free_total
        for name, v in zip(n.group.names, n.free, strict=True):
            ft[name] = ft.get(name, 0.0) + sign * v

    def allocate(self, task: TaskInfo, node_id: str,
                 amount: Mapping[str, float] | None = None) -> None:
        """Take ``amount`` (default: the task's request) on ``node_id`` for ``task``."""
        self._no_holds("allocate")
        n = self._nodes[node_id]
        g = n.group
        if amount is None:
            vec = g.reqvec(task.request)
            if vec is None:
                vec = g.vec_of(task.request)
                if len(vec) != len(task.request):
                    missing = sorted(set(task.request) - set(g.names))
                    raise AssertionError(f"node {node_id} has no {', '.join(missing)}")
        else:
            vec = g.vec_of(amount)
        self.allocate_vec(task, n, vec)

    def allocate_vec(self, task: TaskInfo, n: IndexNode, vec: ReqVec) -> None:
        """``allocate`` with the node record and the request vector already known."""
        g = n.group
        tk = (n.free, vec)
        new = g.sub_cache.get(tk)
        if new is None:  # first time this transition is seen: compute and check it
            free = list(n.free)
            for i, a in vec:
                v = round(free[i] - a, 9)
                if v < -EPSILON:
                    raise ValueError(f"capacity of {g.names[i]} on node {n.id} would go "
                                     f"negative ({free[i]:g} free, {a:g} asked)")
                free[i] = v if v > 0 else 0.0
            if len(g.sub_cache) > 65536:  # bounded, for workloads with many distinct amounts
                g.sub_cache.clear()
            new = g.sub_cache[tk] = tuple(free)
        if n.state == "up":
            ft = self.free_total
            names = g.names
            for i, a in vec:
                ft[names[i]] -= a
            g.move(n, new)
        else:
            n.free = new
            n.version += 1
            n.info = None
        run = self._running.get(task.id)
        if run is None:
            if not n.tasks:
                self._idle.pop(n.id, None)
            n.tasks[task.id] = None
            self._running[task.id] = (task, n, self.now, vec)
            self._running_sorted = None
        else:  # more for a task that already holds resources here
            self._running[task.id] = (run[0], run[1], run[2], _vec_add(run[3], vec, 1.0))
        if self._usage is not None:
            self._use(task.tenant, g, vec, 1.0)
        self.version += 1

    def release(self, task_id: int, amount: Mapping[str, float] | None = None, *,
                keep_running: bool = False) -> str | None:
        """Give back a task's resources (``amount``, default all it holds); returns its
        node. With ``keep_running`` the task keeps its place (it lends ``amount``)."""
        if self._undo is not None:
            self._no_holds("release")
        if amount is None and not keep_running:
            n = self._release(task_id)
            return None if n is None else n.id
        run = self._running.get(task_id)
        if run is None:
            return None
        info, n, start, held = run
        g = n.group
        vec = held if amount is None else g.vec_of(amount)
        if keep_running:
            self._running[task_id] = (info, n, start, _vec_add(held, vec, -1.0))
        else:
            del self._running[task_id]
            self._running_sorted = None
            del n.tasks[task_id]
        self._give_back(n, vec)
        if self._usage is not None:
            self._use(info.tenant, g, vec, -1.0)
        if not keep_running and not n.tasks and n.state == "up":
            self._idle[n.id] = self.now
        self.version += 1
        return n.id

    def _release(self, task_id: int) -> IndexNode | None:
        """``release`` of everything a task holds (the hot path); returns its node record."""
        run = self._running.pop(task_id, None)
        if run is None:
            return None
        if self._undo is not None:
            self._running[task_id] = run
            self._no_holds("release")
        self._running_sorted = None
        info, n, _, vec = run
        del n.tasks[task_id]
        self._give_back(n, vec)
        if self._usage is not None:
            self._use(info.tenant, n.group, vec, -1.0)
        if not n.tasks and n.state == "up":
            self._idle[n.id] = self.now
        self.version += 1
        if n.id not in self._nodes:  # pragma: no cover - a removed node's task
            return None
        return n

    def _give_back(self, n: IndexNode, vec: ReqVec) -> None:
        g = n.group
        tk = (n.free, vec)
        new = g.add_cache.get(tk)
        if new is None:
            free = list(n.free)
            tot = g.total
            for i, a in vec:
                v = round(free[i] + a, 9)
                if v > tot[i] + EPSILON:
                    raise AssertionError(f"free {g.names[i]} on node {n.id} would exceed its "
                                         f"total ({v:g} > {tot[i]:g})")
                free[i] = v if v < tot[i] else tot[i]
            if len(g.add_cache) > 65536:
                g.add_cache.clear()
            new = g.add_cache[tk] = tuple(free)
        if n.state == "up":
            ft = self.free_total
            names = g.names
            for i, a in vec:
                ft[names[i]] += a
            g.move(n, new)
        else:
            n.free = new
            n.version += 1
            n.info = None

    def reacquire(self, task_id: int, amount: Mapping[str, float]) -> None:
        """Take back resources a blocked task lent (``amount``) on its own node."""
        self._no_holds("reacquire")
        info, n, _, _ = self._running[task_id]
        self.allocate_vec(info, n, n.group.vec_of(amount))

    def _set_free(self, n: IndexNode, free: tuple[float, ...]) -> None:
        if free == n.free:
            return
        up = n.state == "up"
        if up:
            n.group.remove(n)
            ft = self.free_total
            for name, a, b in zip(n.group.names, n.free, free, strict=True):
                if a != b:
                    ft[name] += b - a
        n.free = free
        n.version += 1
        n.info = None
        if up:
            n.group.insert(n)

    # the owner's view -------------------------------------------------------------------------
    def record(self, node_id: str) -> IndexNode:
        """The index's record of a node (for the control plane and the simulator's books)."""
        return self._nodes[node_id]

    def records(self) -> Mapping[str, IndexNode]:
        """Every node record, by id (read-only use)."""
        return self._nodes

    def group_records(self) -> list[IndexGroup]:
        """Every group record, in creation order (read-only use)."""
        return list(self._group_list)

    def count_by_type(self) -> dict[str, int]:
        """Nodes per node type that are not down (booting included)."""
        out: dict[str, int] = {}
        for g in self._group_list:
            out[g.name] = out.get(g.name, 0) + g.n_state["booting"] + g.n_state["up"] \
                + g.n_state["draining"]
        return out


def _vec_add(a: ReqVec, b: ReqVec, sign: float) -> ReqVec:
    out = dict(a)
    for i, v in b:
        out[i] = round(out.get(i, 0.0) + sign * v, 9)
    return tuple(sorted((i, v) for i, v in out.items() if abs(v) > EPSILON))


def _emit_run(g: IndexGroup, run: list[tuple[float, ...]], skey: float
              ) -> Iterator[tuple[Any, IndexNode]]:
    """Nodes of buckets with one free score, merged by id."""
    if len(run) == 1:
        for n in g.ordered(run[0]):
            yield ((skey, n.id), n)
        return
    its = [((n.id, n) for n in g.ordered(k)) for k in run]
    for nid, n in heapq.merge(*its, key=_first):
        yield ((skey, nid), n)


def _head(g: IndexGroup, key: tuple[float, ...]) -> IndexNode | None:
    """The smallest-id live node of bucket ``key`` (drops stale heap entries)."""
    b = g.buckets.get(key)
    if b is None:
        return None
    heap = b.heap
    nodes = g.nodes
    while heap:
        nid, ver = heap[0]
        n = nodes.get(nid)
        if n is not None and n.version == ver:
            return n
        heapq.heappop(heap)
    return None


def _head_run(g: IndexGroup, keys: list[tuple[float, tuple[float, ...]]], j: int, step: int
              ) -> tuple[Any, IndexNode | None]:
    """Sort key and node of the first node of the run of equal scores starting at ``keys[j]``
    (``step`` 1: tightest, -1: loosest), as ``fitting`` orders them."""
    score = keys[j][0]
    best: IndexNode | None = None
    nk = len(keys)
    while 0 <= j < nk and keys[j][0] == score:
        h = _head(g, keys[j][1])
        if h is not None and (best is None or h.id < best.id):
            best = h
        j += step
    if best is None:  # pragma: no cover - a listed bucket always has a live node
        return None, None
    return ((score if step == 1 else -score), best.id), best


def _first(item: tuple[Any, Any]) -> Any:
    return item[0]
