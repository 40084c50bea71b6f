"""Placement checks beside the vocabulary: can a node host a task, is a decision valid,
can a request ever be met.

Every decision a policy returns is checked with :func:`check_placement` by the
control plane before anything acts on it; :func:`check_feasible` is the
submit-time check that turns a request no node (or addable node type) can meet
into a clear error instead of a hang.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from runtime.cluster.state import ClusterState
from runtime.cluster.types import ACCELERATOR_LABEL, NodeInfo, TaskInfo
from runtime.errors import InfeasibleRequestError, PolicyError
from runtime.resources import EPSILON, Resources, format_resources

__all__ = ["free_score", "score_of", "node_can_host", "check_placement", "policy_name",
           "infeasible_message", "check_feasible"]


def policy_name(policy: object) -> str:
    """The name a policy or autoscaler goes by in messages: its ``name``, else its class."""
    if isinstance(policy, str):
        return policy
    return str(getattr(policy, "name", None) or type(policy).__name__)


def free_score(node: NodeInfo) -> float:
    """Sum over the node's resources of free/total (0 = full, n = empty): the fit order key."""
    return sum(node.free.get(k, 0.0) / v for k, v in node.total.items() if v > 0)


def score_of(free: Mapping[str, float], total: Mapping[str, float]) -> float:
    """The free score the index orders nodes by: :func:`free_score` rounded to 9 digits, so
    equal states tie exactly."""
    return round(sum(free.get(k, 0.0) / v for k, v in total.items() if v > 0), 9)


def node_can_host(task: TaskInfo, node: NodeInfo, *, free: bool = True) -> bool:
    """True when ``node`` is up, has the accelerator and (free or total) room for ``task``."""
    if node.state != "up":
        return False
    if task.accelerator_type is not None and node.accelerator_type != task.accelerator_type:
        return False
    return task.request.fits(node.free if free else node.total)


def check_placement(policy: object, task: TaskInfo, node_id: str, cluster: ClusterState) -> NodeInfo:
    """Validate one ``Place`` decision; raise :class:`PolicyError` naming policy and task."""
    pname = policy_name(policy)
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
