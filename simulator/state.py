"""The simulator's :class:`~runtime.policies.base.ClusterState`: indexes for the hot path.

Nodes are grouped by node type (same totals, accelerator and speeds); within a
group, nodes sit in *buckets* keyed by their exact free-resource vector, each
bucket a lazy min-heap of node ids. ``fitting(task, order)`` walks only the
buckets whose free vector fits the request (sorted by free score for
``tightest``/``loosest``), so taking the first node costs O(#distinct free
vectors + log n), not O(n). Only the engine mutates it; policies read it.
Capacity never goes negative (asserted on every allocation).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from runtime.policies.base import FitOrder, NodeInfo, NodeState, TaskInfo
from runtime.resources import EPSILON, Resources
from simulator.nodes import NodeSpec

__all__ = ["SimClusterState", "SimNode"]

ReqVec = tuple[tuple[int, float], ...]


class _Bucket:
    """Nodes of one group with the same free vector: a lazy heap of ``(node id, version)``."""

    __slots__ = ("heap", "count", "score")

    def __init__(self, score: float) -> None:
        self.heap: list[tuple[str, int]] = []
        self.count = 0
        self.score = score


class SimNode:
    """One simulated node (mutable, engine-owned)."""

    __slots__ = ("id", "spec", "group", "free", "state", "version", "info", "tasks",
                 "up_since", "added_at", "draining_to_remove", "in_window", "ix")

    def __init__(self, node_id: str, spec: NodeSpec, group: _Group, state: NodeState,
                 now: float) -> None:
        self.id = node_id
        self.spec = spec
        self.group = group
        self.free = group.total
        self.state: NodeState = state
        self.version = 0
        self.info: NodeInfo | None = None
        self.tasks: dict[int, None] = {}
        self.up_since: float | None = None
        self.added_at = now
        self.draining_to_remove = False
        self.in_window = False
        self.ix = -1  # the engine's trace index for this node


class _Group:
    """All nodes of one node type."""

    __slots__ = ("spec", "names", "index", "total", "total_res", "accel", "labels", "buckets",
                 "keys", "req_cache", "res_cache", "cost", "nodes", "busy", "uptime", "model_of",
                 "fit", "ver", "first_cache", "head_cache", "sub_cache", "add_cache")

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.total_res = spec.resources
        self.names = tuple(self.total_res)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.total = tuple(self.total_res[n] for n in self.names)
        self.accel = spec.accelerator.model if spec.accelerator else None
        self.labels = spec.labels
        self.buckets: dict[tuple[float, ...], _Bucket] = {}
        self.keys: list[tuple[float, tuple[float, ...]]] = []  # (score, free) of non-empty buckets
        # per request vector: the (score, free) keys of non-empty buckets where it fits, sorted
        self.fit: dict[ReqVec, list[tuple[float, tuple[float, ...]]]] = {}
        self.ver = 0  # bumped whenever a node enters or leaves a bucket
        self.first_cache: dict[tuple[ReqVec, str], tuple[int, Any]] = {}
        self.head_cache: dict[tuple[ReqVec, str], tuple[int, Any, Any]] = {}  # first_fitting
        # free vector transitions already computed (and checked): (free, request) -> free
        self.sub_cache: dict[tuple[tuple[float, ...], ReqVec], tuple[float, ...]] = {}
        self.add_cache: dict[tuple[tuple[float, ...], ReqVec], tuple[float, ...]] = {}
        self.req_cache: dict[Resources, ReqVec | None] = {}
        self.res_cache: dict[tuple[float, ...], Resources] = {}
        self.cost = spec.hourly_cost
        self.nodes: dict[str, SimNode] = {}  # the state's node table, shared
        self.busy = [0.0] * len(self.names)  # resource-seconds used, per resource
        self.uptime = 0.0  # node-seconds up or draining (capacity = total x uptime)
        acc = spec.accelerator
        self.model_of = tuple(acc.model if acc is not None and n == acc.kind else
                              (spec.cpu_device.model if n == "CPU" else n) for n in self.names)

    def reqvec(self, req: Resources) -> ReqVec | None:
        """The request as ``(index, amount)`` pairs, or None when the type lacks a resource."""
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

    def score(self, free: tuple[float, ...]) -> float:
        """The contract's free score: sum of free/total."""
        return sum(f / t for f, t in zip(free, self.total, strict=True) if t > 0)

    def resources(self, free: tuple[float, ...]) -> Resources:
        """A cached :class:`Resources` for a free vector."""
        r = self.res_cache.get(free)
        if r is None:
            r = self.res_cache[free] = Resources._trusted(dict(zip(self.names, free, strict=True)))
        return r

    # bucket maintenance -----------------------------------------------------
    def insert(self, node: SimNode) -> None:
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

    def remove(self, node: SimNode) -> None:
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

    def move(self, node: SimNode, free: tuple[float, ...]) -> None:
        """``remove``, set the node's free vector (new version, no NodeInfo), ``insert``
        (the two inlined: this is the hot path of every start and finish)."""
        self.ver += 2
        key = node.free
        buckets = self.buckets
        b = buckets[key]
        b.count -= 1
        if b.count == 0:  # kept (with its score) for reuse; every heap entry is stale now
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

    def ordered(self, key: tuple[float, ...]) -> Iterator[SimNode]:
        """Nodes of bucket ``key`` in id order (the first is cheap)."""
        b = self.buckets.get(key)
        if b is None:
            return
        nodes = self.nodes
        heap = b.heap
        while heap:
            nid, ver = heap[0]
            n = nodes.get(nid)
            if n is not None and n.version == ver:
                break
            heapq.heappop(heap)
        if not heap:
            return
        first = heap[0]
        yield nodes[first[0]]
        rest = sorted(e for e in heap[1:] if (n := nodes.get(e[0])) is not None
                      and n.version == e[1])
        for nid, _ in rest:
            yield nodes[nid]


def _fits(free: tuple[float, ...], vec: ReqVec) -> bool:
    for i, a in vec:
        if free[i] + EPSILON < a:
            return False
    return True


class SimClusterState:
    """Implements :class:`ClusterState` for the simulator (plus the engine's mutators)."""

    def __init__(self, specs: list[NodeSpec]) -> None:
        self._now = 0.0
        self.groups: dict[str, _Group] = {s.name: _Group(s) for s in specs}
        self._nodes: dict[str, SimNode] = {}
        for g in self.groups.values():
            g.nodes = self._nodes
        self._running: dict[int, tuple[TaskInfo, str]] = {}
        self._eligible: dict[tuple[Any, ...], list[tuple[_Group, ReqVec, float]]] = {}
        self._eligible_map: dict[tuple[Any, ...], dict[_Group, tuple[ReqVec, float]]] = {}
        self._eligible_id: dict[tuple[int, str | None, str], tuple[Any, Any]] = {}
        self.free_total: dict[str, float] = {}
        self.version = 0
        # tentative holds of the policy's Ledger within one schedule call (see _hold)
        self._undo: list[tuple[SimNode, tuple[float, ...]]] | None = None

    # ClusterState --------------------------------------------------------------
    @property
    def now(self) -> float:
        """Current virtual time."""
        return self._now

    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        n = self._nodes[node_id]
        info = n.info
        if info is None:
            g = n.group
            info = n.info = NodeInfo(n.id, g.spec.name, g.total_res, g.resources(n.free),
                                     g.labels, n.state, g.cost)
        return info

    def nodes(self) -> list[NodeInfo]:
        """Every node (booting, up, draining, down), in id order."""
        return [self.node(k) for k in sorted(self._nodes)]

    def __len__(self) -> int:
        return len(self._nodes)

    def eligible(self, task: TaskInfo) -> list[tuple[_Group, ReqVec, float]]:
        """Groups that could ever host ``task`` (resources, accelerator, speed > 0), cached."""
        req = task.request
        fast = (id(req), task.accelerator_type, task.kind or task.name)
        c = self._eligible_id.get(fast)
        if c is not None and c[0] is req:
            return c[1]
        key = (req, task.accelerator_type, task.task_kind)
        out = self._eligible.get(key)
        if out is None:
            out = []
            for g in self.groups.values():
                if task.accelerator_type is not None and g.accel != task.accelerator_type:
                    continue
                vec = g.reqvec(task.request)
                if vec is None:
                    continue
                sp = g.spec.speed_for(task.task_kind, task.request)
                if sp <= 0:
                    continue
                out.append((g, vec, sp))
            self._eligible[key] = out
        if len(self._eligible_id) > 4096:  # bounded: workloads with a request object per task
            self._eligible_id.clear()
        self._eligible_id[fast] = (req, out)  # holds ``req``, so its id is not reused
        return out

    def eligible_by_group(self, task: TaskInfo) -> dict[_Group, tuple[ReqVec, float]]:
        """``eligible`` as a mapping group -> (request vector, speed), cached."""
        key = (task.request, task.accelerator_type, task.task_kind)
        out = self._eligible_map.get(key)
        if out is None:
            out = self._eligible_map[key] = {g: (v, sp) for g, v, sp in self.eligible(task)}
        return out

    def room(self, task: TaskInfo, cap: int) -> int:
        """How many copies of ``task`` the up nodes could host now (counting stops at ``cap``)."""
        return self.room_in(self.eligible(task), cap)

    @staticmethod
    def room_in(elig: list[tuple[_Group, ReqVec, float]], cap: int) -> int:
        """``room`` for a task whose ``eligible`` groups are ``elig``."""
        k = 0
        for g, vec, _ in elig:
            buckets = g.buckets
            keys = g.fit[vec]
            for j in range(len(keys) - 1, -1, -1):  # emptiest first: reaches ``cap`` soonest
                key = keys[j][1]
                per = cap
                for i, a in vec:
                    q = int(key[i] / a + 1e-9)
                    if q < per:
                        per = q
                k += per * buckets[key].count
                if k >= cap:
                    return cap
        return k

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterator[NodeInfo]:
        """Up nodes where ``task`` fits now (and runs at speed > 0), in ``order``."""
        if order not in ("id", "tightest", "loosest"):
            raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
        heads = []
        for i, (g, vec, _) in enumerate(self.eligible(task)):
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

    def first_fitting(self, task: TaskInfo, order: FitOrder = "id") -> NodeInfo | None:
        """The first node ``fitting(task, order)`` would yield, or None (no generator; the
        :class:`~runtime.policies.ledger.Ledger` uses it when a ClusterState has it)."""
        best: Any = None
        best_node: SimNode | None = None
        for g, vec, _ in self.eligible(task):
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
                for _, key in keys:
                    h = _head(g, key)
                    if h is not None and (k is None or h.id < k):
                        k, n = h.id, h
            else:
                raise ValueError(f"order={order!r}: expected 'id', 'tightest' or 'loosest'")
            g.head_cache[ck] = (g.ver, k, n)
            if n is not None and (best_node is None or k < best):
                best, best_node = k, n
        return None if best_node is None else self.node(best_node.id)

    def _group_iter(self, g: _Group, vec: ReqVec, order: str) -> Iterator[tuple[Any, SimNode]]:
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
                    yield from self._emit_run(g, run, sign * run_score)  # type: ignore[operator]
                    run = []
                run_score = score
            run.append(key)
        if run:
            yield from self._emit_run(g, run, sign * run_score)  # type: ignore[operator]

    @staticmethod
    def _emit_run(g: _Group, run: list[tuple[float, ...]], skey: float
                  ) -> Iterator[tuple[Any, SimNode]]:
        """Nodes of buckets with one free score, merged by id."""
        if len(run) == 1:
            for n in g.ordered(run[0]):
                yield ((skey, n.id), n)
            return
        its = [((n.id, n) for n in g.ordered(k)) for k in run]
        for nid, n in heapq.merge(*its, key=_first):
            yield ((skey, nid), n)

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of the task's kind on the node's device (1.0 when unknown)."""
        n = self._nodes.get(node.id)
        spec = n.spec if n is not None else None
        if spec is None:
            return 1.0
        return spec.speed_for(task.task_kind, task.request)

    def running(self) -> list[TaskInfo]:
        """Tasks holding resources, in id order."""
        return [self._running[k][0] for k in sorted(self._running)]

    def placement_of(self, task_id: int) -> str | None:
        """The node a running task holds resources on."""
        e = self._running.get(task_id)
        return e[1] if e else None

    # Engine-side mutation ------------------------------------------------------
    def sim_node(self, node_id: str) -> SimNode:
        """The engine's mutable node."""
        return self._nodes[node_id]

    def add_node(self, node_id: str, spec: NodeSpec, state: NodeState, now: float) -> SimNode:
        """Create a node with every resource free."""
        if node_id in self._nodes:
            raise ValueError(f"node {node_id!r} already exists")
        g = self.groups[spec.name]
        n = SimNode(node_id, spec, g, "down", now)
        self._nodes[node_id] = n
        self.set_state(n, state, now)
        n.added_at = now
        return n

    def set_state(self, n: SimNode, state: NodeState, now: float) -> None:
        """Move a node between booting / up / draining / down (only up nodes are indexed)."""
        old = n.state
        if old == state:
            return
        alive_old, alive_new = old in ("up", "draining"), state in ("up", "draining")
        if alive_old and not alive_new:
            n.group.uptime += now - n.up_since if n.up_since is not None else 0.0
            n.up_since = None
        elif alive_new and not alive_old:
            n.up_since = now
        if old == "up":
            n.group.remove(n)
            self._add_free(n, -1.0)
        n.state = state
        n.version += 1
        n.info = None
        if state == "up":
            n.group.insert(n)
            self._add_free(n, 1.0)
        self.version += 1

    def remove_node(self, n: SimNode, now: float) -> None:
        """Forget a node that holds no tasks."""
        assert not n.tasks, f"node {n.id} removed while running {list(n.tasks)}"
        self.set_state(n, "down", now)
        del self._nodes[n.id]

    def _add_free(self, n: SimNode, sign: float) -> None:
        ft = self.free_total
        for name, v in zip(n.group.names, n.free, strict=True):
            ft[name] = ft.get(name, 0.0) + sign * v

    def allocate(self, task: TaskInfo, n: SimNode, vec: ReqVec) -> None:
        """Take ``task``'s request on node ``n`` (asserts capacity stays >= 0)."""
        g = n.group
        names = g.names
        tk = (n.free, vec)
        new = g.sub_cache.get(tk)
        if new is None:  # first time this transition is seen: compute and check it
            free = list(n.free)
            for i, a in vec:
                v = round(free[i] - a, 9)
                assert v >= -EPSILON, f"capacity of {names[i]} on {n.id} would go negative"
                free[i] = v if v > 0 else 0.0
            if len(g.sub_cache) > 65536:  # bounded, for workloads with many distinct amounts
                g.sub_cache.clear()
            new = g.sub_cache[tk] = tuple(free)
        if n.state == "up":
            ft = self.free_total
            for i, a in vec:
                ft[names[i]] -= a
            g.move(n, new)
        else:
            n.free = new
            n.version += 1
            n.info = None
        n.tasks[task.id] = None
        self._running[task.id] = (task, n.id)
        self.version += 1

    def release(self, task_id: int, n: SimNode, vec: ReqVec) -> None:
        """Give back a task's resources on node ``n`` (asserts free never exceeds total)."""
        g = n.group
        names = g.names
        tk = (n.free, vec)
        new = g.add_cache.get(tk)
        if new is None:  # first time this transition is seen: compute and check it
            free = list(n.free)
            tot = g.total
            for i, a in vec:
                v = round(free[i] + a, 9)
                assert v <= tot[i] + EPSILON, f"free {names[i]} on {n.id} would exceed its total"
                free[i] = v if v < tot[i] else tot[i]
            if len(g.add_cache) > 65536:  # bounded, for workloads with many distinct amounts
                g.add_cache.clear()
            new = g.add_cache[tk] = tuple(free)
        if n.state == "up":
            ft = self.free_total
            for i, a in vec:
                ft[names[i]] += a
            g.move(n, new)
        else:
            n.free = new
            n.version += 1
            n.info = None
        del n.tasks[task_id]
        del self._running[task_id]
        self.version += 1

    # Ledger hooks: tentative holds within one schedule call ---------------------------
    def _hold(self, node_id: str, amount: Any) -> NodeInfo:
        """Tentatively take ``amount`` on a node for the rest of a ``schedule`` call (the
        :class:`~runtime.policies.ledger.Ledger` calls it; undone by :meth:`_rollback`).

        A hold never makes capacity negative: amounts beyond what is free are clamped
        (the engine's validation rejects such a placement after the call anyway)."""
        if self._undo is None:
            self._undo = []
        n = self._nodes[node_id]
        g = n.group
        idx = g.index
        old = n.free
        free = list(old)
        for k, a in amount.items():
            i = idx.get(k)
            if i is not None:
                free[i] = max(round(free[i] - a, 9), 0.0)
        self._undo.append((n, old))
        self._set_free(n, tuple(free))
        return self.node(node_id)

    def _rollback(self) -> None:
        """Undo every tentative hold, restoring the exact previous free vectors."""
        undo, self._undo = self._undo, None
        for n, old in reversed(undo or ()):
            self._set_free(n, old)

    def _set_free(self, n: SimNode, free: tuple[float, ...]) -> None:
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
        self.version += 1

    def available(self) -> dict[str, float]:
        """Free resources over up nodes."""
        return {k: v for k, v in sorted(self.free_total.items()) if v > EPSILON}

    def totals(self) -> dict[str, float]:
        """Total resources over up and draining nodes."""
        out: dict[str, float] = {}
        for n in self._nodes.values():
            if n.state in ("up", "draining"):
                for k, v in zip(n.group.names, n.group.total, strict=True):
                    out[k] = out.get(k, 0.0) + v
        return dict(sorted(out.items()))

    def count_by_type(self) -> dict[str, int]:
        """Live (not down) nodes per node type, booting included."""
        out = dict.fromkeys(self.groups, 0)
        for n in self._nodes.values():
            if n.state != "down":
                out[n.spec.name] += 1
        return out

    def all_nodes(self) -> Mapping[str, SimNode]:
        """The engine's node table (read-only use)."""
        return self._nodes


def _head(g: _Group, key: tuple[float, ...]) -> SimNode | None:
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


def _head_run(g: _Group, keys: list[tuple[float, tuple[float, ...]]], j: int, step: int
              ) -> tuple[Any, SimNode | None]:
    """Sort key and node of the first node of the run of equal scores starting at ``keys[j]``
    (``step`` 1: tightest, -1: loosest), as ``fitting`` orders them."""
    score = keys[j][0]
    best: SimNode | None = None
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
