"""The scheduling contract: policies *decide*, backends *do*.

A policy sees immutable :class:`TaskInfo` and :class:`NodeInfo` values and a
read-only :class:`ClusterState` with index-backed queries; it returns
:class:`Place` (and possibly :class:`Preempt`) decisions. The same policy object
places tasks in the simulator and on the local and dask backends. Every backend
checks each decision with :func:`check_placement` before acting on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from runtime.errors import InfeasibleRequestError, PolicyError
from runtime.resources import EPSILON, Resources, format_resources

__all__ = [
    "NodeState",
    "FitOrder",
    "free_score",
    "TaskInfo",
    "NodeInfo",
    "Place",
    "Preempt",
    "Decision",
    "ClusterState",
    "SchedulingPolicy",
    "check_placement",
    "node_can_host",
    "infeasible_message",
    "check_feasible",
    "ACCELERATOR_LABEL",
]

NodeState = Literal["booting", "up", "draining", "down"]
FitOrder = Literal["id", "tightest", "loosest"]

#: The node label that names its accelerator model (matched by ``accelerator_type``).
ACCELERATOR_LABEL = "accelerator_type"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a policy may know about a pending task."""

    id: int
    name: str
    request: Resources
    kind: str = ""  # keys the throughput matrix; defaults to the name
    accelerator_type: str | None = None
    tenant: str = "default"
    priority: int = 0
    submitted_at: float = 0.0
    duration_hint: float | None = None  # expected run time, when known (backfill uses it)

    @property
    def task_kind(self) -> str:
        """The key into speed tables: ``kind`` or, when empty, ``name``."""
        return self.kind or self.name


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a policy may know about one node."""

    id: str
    node_type: str
    total: Resources
    free: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    state: NodeState = "up"
    cost_per_hour: float = 0.0

    @property
    def accelerator_type(self) -> str | None:
        """The node's accelerator model label, if any."""
        return self.labels.get(ACCELERATOR_LABEL)


@dataclass(frozen=True, slots=True)
class Place:
    """Decision: start ``task`` on ``node``."""

    task: int
    node: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Decision: stop running ``task`` (it goes back to pending, or is retried)."""

    task: int
    reason: str = "preempted"


Decision = Place | Preempt


@runtime_checkable
class ClusterState(Protocol):
    """A read-only view of the cluster; the backend keeps the indexes behind it."""

    @property
    def now(self) -> float:
        """Current time (virtual in the simulator, seconds since init elsewhere)."""
        ...

    def node(self, node_id: str) -> NodeInfo:
        """The node with this id (``KeyError`` when unknown)."""
        ...

    def nodes(self) -> Iterable[NodeInfo]:
        """Every node, in id order."""
        ...

    def fitting(self, task: TaskInfo, order: FitOrder = "id") -> Iterable[NodeInfo]:
        """Only the up nodes where ``task`` fits now (resources and accelerator), lazily.

        ``order``: ``"id"`` (node id), ``"tightest"`` (least free first: best fit),
        ``"loosest"`` (most free first: spread). The free *score* of a node is the
        sum over its resources of free/total; ties are broken by node id. Taking the
        first item must be cheap (an index, not a scan of every node).
        """
        ...

    def speed(self, task: TaskInfo, node: NodeInfo) -> float:
        """Relative speed of ``task``'s kind on ``node``'s device model (1.0 when unknown)."""
        ...

    def running(self) -> Iterable[TaskInfo]:
        """Tasks currently holding resources (for preemption and fairness)."""
        ...

    def placement_of(self, task_id: int) -> str | None:
        """The node a running task holds resources on (None when not running)."""
        ...


class SchedulingPolicy(Protocol):
    """Decides placements; deterministic for a given input, ties broken by ids.

    Optional attributes a backend may use: ``greedy_by_shape`` (placement depends
    only on a task's shape and its order) and ``lookahead_safe`` (``schedule`` has
    no side effects, so it may be asked about a hypothetical cluster state).
    """

    name: str

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return placements for some of ``pending`` (others stay pending)."""
        ...


def free_score(node: NodeInfo) -> float:
    """Sum over the node's resources of free/total (0 = full, n = empty): the fit order key."""
    return sum(node.free.get(k, 0.0) / v for k, v in node.total.items() if v > 0)


def node_can_host(task: TaskInfo, node: NodeInfo, *, free: bool = True) -> bool:
    """True when ``node`` is up, has the accelerator and (free or total) room for ``task``."""
    if node.state != "up":
        return False
    if task.accelerator_type is not None and node.accelerator_type != task.accelerator_type:
        return False
    return task.request.fits(node.free if free else node.total)


def check_placement(policy: object, task: TaskInfo, node_id: str, cluster: ClusterState) -> NodeInfo:
    """Validate one ``Place`` decision; raise :class:`PolicyError` naming policy and task."""
    pname = getattr(policy, "name", type(policy).__name__)
    try:
        node = cluster.node(node_id)
    except KeyError:
        raise PolicyError(
            f"policy {pname!r} placed task {task.name!r} (id {task.id}) on unknown node "
            f"{node_id!r}"
        ) from None
    if node.state != "up":
        raise PolicyError(
            f"policy {pname!r} placed task {task.name!r} (id {task.id}) on node {node_id!r} "
            f"which is {node.state}, not up"
        )
    if task.accelerator_type is not None and node.accelerator_type != task.accelerator_type:
        raise PolicyError(
            f"policy {pname!r} placed task {task.name!r} (id {task.id}) needing accelerator "
            f"{task.accelerator_type!r} on node {node_id!r} which has "
            f"{node.accelerator_type or 'none'}"
        )
    if not task.request.fits(node.free):
        raise PolicyError(
            f"policy {pname!r} placed task {task.name!r} (id {task.id}) needing "
            f"{format_resources(task.request)} on node {node_id!r} with only "
            f"{format_resources(node.free)} free (over capacity)"
        )
    return node


def infeasible_message(
    request: Mapping[str, float],
    accelerator_type: str | None,
    shapes: Iterable[tuple[str, Mapping[str, float], Mapping[str, str]]],
    *,
    what: str = "the cluster",
    task_name: str | None = None,
) -> str | None:
    """Why no node shape in ``shapes`` can ever run the request, or None when one can.

    ``shapes`` are ``(name, total resources, labels)`` of nodes or node types.
    """
    shapes = list(shapes)
    req = request if isinstance(request, Resources) else Resources(request)
    for _name, total, labels in shapes:
        if accelerator_type is not None and labels.get(ACCELERATOR_LABEL) != accelerator_type:
            continue
        if req.fits(total):
            return None
    who = f"task {task_name!r} " if task_name else ""
    if not shapes:
        return f"{who}requests {format_resources(req)} but {what} has no nodes"
    if accelerator_type is not None:
        models = sorted({lb.get(ACCELERATOR_LABEL) or "(no accelerator)" for _, _, lb in shapes})
        with_acc = [s for s in shapes if s[2].get(ACCELERATOR_LABEL) == accelerator_type]
        if not with_acc:
            return (f"{who}requests accelerator_type={accelerator_type!r} but no node in {what} "
                    f"has it; accelerator types there: {', '.join(models)}")
        shapes = with_acc
    # name the first resource no shape has enough of
    for rname, amount in req.items():
        best = max((t.get(rname, 0.0) for _, t, _ in shapes), default=0.0)
        if best + EPSILON < amount:
            have = ", ".join(f"{n}: {format_resources(t)}" for n, t, _ in shapes[:6])
            more = f" (and {len(shapes) - 6} more)" if len(shapes) > 6 else ""
            return (f"{who}requests {rname}={amount:g} but no node in {what} has more than "
                    f"{rname}={best:g}; nodes have {have}{more}")
    have = ", ".join(f"{n}: {format_resources(t)}" for n, t, _ in shapes[:6])
    return f"{who}requests {format_resources(req)} which no single node has; nodes have {have}"


def check_feasible(
    task: TaskInfo,
    nodes: Iterable[tuple[str, Mapping[str, float], Mapping[str, str]]],
    node_types: Iterable[tuple[str, Mapping[str, float], Mapping[str, str]]] = (),
) -> None:
    """Raise :class:`InfeasibleRequestError` when neither a node nor an addable node type fits."""
    nodes = list(nodes)
    msg = infeasible_message(task.request, task.accelerator_type, nodes, task_name=task.name)
    if msg is None:
        return
    node_types = list(node_types)
    if node_types:
        if infeasible_message(task.request, task.accelerator_type, node_types) is None:
            return
        msg += ", and no node type the autoscaler can add fits it either"
    raise InfeasibleRequestError(msg)
