"""The one scale planner: asks the autoscaler, clamps, drains, and scales by hand.

One set of rules for every backend and the simulator: additions are clamped to
each node type's ``max_count`` (nodes booting count, so nothing is launched twice);
removals keep ``min_count``; a busy node is drained (no new tasks) and retired once
idle; an unknown node type or node is a :class:`PolicyError` naming the autoscaler;
tasks the autoscaler calls infeasible are reported once and fail with
:class:`InfeasibleRequestError`. ``scale(node_type, count)`` by hand follows the same
path (draining nodes are revived first when growing, idle ones go first when
shrinking) and refuses a count that would strand a queued task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runtime.cluster.checks import infeasible_message, policy_name
from runtime.cluster.types import ScaleDecision, TaskInfo
from runtime.control.index import IndexNode
from runtime.errors import InfeasibleRequestError, PolicyError
from runtime.events import EventKind as K

if TYPE_CHECKING:
    from runtime.control.plane import ControlPlane

__all__ = ["ScalePlanner", "BY_HAND"]

BY_HAND = "scale by hand"


def _seq(node_id: str) -> tuple[int, str]:
    """Sort key of a node id ``type-N``: by its number, then by the id."""
    tail = node_id.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, node_id)


class ScalePlanner:
    """Carries out scale decisions for one control plane (see the module docstring)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.reported: set[int] = set()
        self.decisions = 0
        #: nodes draining to be removed once idle
        self.removing: set[str] = set()

    # ------------------------------------------------------------------ the autoscaler
    def autoscale(self, unmet: list[TaskInfo]) -> None:
        """Ask the autoscaler about ``unmet`` demand and apply what it decides."""
        plane = self.plane
        a = plane.autoscaler
        name = policy_name(a)
        plane.emit(K.DECISION_ROUND, what="autoscale", unmet=[t.id for t in unmet])
        try:
            dec = a.decide(unmet, plane.index, plane.node_types)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a broken autoscaler must not stop the run
            if plane.index.holding:
                plane.index.rollback()
            self._raised(name, exc, unmet)
            return
        for attr in ("add", "remove", "infeasible"):
            if not hasattr(dec, attr):
                plane._reject(PolicyError(f"autoscaler {name!r} returned {dec!r}, expected a "
                                          f"ScaleDecision (missing {attr!r})"))
                return
        self.apply(dec, who=f"autoscaler {name!r}")

    def _raised(self, name: str, exc: Exception, unmet: list[TaskInfo]) -> None:
        """The autoscaler raised: the unmet tasks only a new node could host fail (they would
        wait forever); the others keep waiting for room."""
        plane = self.plane
        shapes = plane.index.shapes()
        stuck = [t for t in unmet
                 if infeasible_message(t.request, t.accelerator_type, shapes) is not None]
        if not stuck:
            plane._reject(PolicyError(f"autoscaler {name!r} raised: {type(exc).__name__}: "
                                      f"{exc}"))
            return
        for t in stuck:
            plane._give_up(t.id, PolicyError(
                f"autoscaler {name!r} raised while deciding for task {t.name!r} (id {t.id}), "
                f"which no present node can host: {type(exc).__name__}: {exc}"), cause=exc)

    def apply(self, dec: ScaleDecision, *, who: str = "scale decision",
              extra: Mapping[str, Any] | None = None) -> None:
        """Validate, clamp and carry out one scale decision, then publish what was done."""
        plane = self.plane
        idx = plane.index
        types = plane.node_types
        live = idx.count_by_type()
        launches: list[tuple[str, int]] = []
        for tname, count in sorted(dict(dec.add).items()):
            if tname not in types:
                plane._reject(PolicyError(f"{who} asked for unknown node type {tname!r}; "
                                          f"known: {', '.join(sorted(types)) or '(none)'}"))
                continue
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                plane._reject(PolicyError(f"{who} asked for {count!r} nodes of {tname!r}; "
                                          f"expected an int >= 0"))
                continue
            n = min(count, max(types[tname].max_count - live.get(tname, 0), 0))
            if n:
                launches.append((tname, n))
                live[tname] = live.get(tname, 0) + n
        removed: list[str] = []
        drains: list[str] = []
        retires: list[str] = []
        nodes = idx.records()
        for nid in sorted(dict.fromkeys(dec.remove)):
            n = nodes.get(nid)
            if n is None:
                plane._reject(PolicyError(f"{who} asked to remove unknown node {nid!r}"))
                continue
            nt = types.get(n.group.name)
            if nt is None or n.removing or live.get(n.group.name, 0) - 1 < nt.min_count:
                continue
            live[n.group.name] -= 1
            removed.append(nid)
            (drains if n.tasks else retires).append(nid)
        new_inf = [t for t in dec.infeasible if t not in self.reported]
        self.reported.update(new_inf)
        if launches or removed or new_inf:
            self.decisions += 1
            plane.emit(K.SCALE_DECISION, add=dict(launches), remove=removed,
                       infeasible=sorted(new_inf), reason=str(getattr(dec, "reason", "")),
                       decided=True, **dict(extra or {}))
        for tid in sorted(new_inf):
            info = plane.tasks.get(tid)
            if info is not None and tid in plane.queue:
                plane._give_up(tid, InfeasibleRequestError(  # type: ignore[arg-type]
                    f"task {info.name!r} (id {tid}) fits no node type the {who} can add"))
        for nid in drains:
            self._drain(nodes[nid], "scale down")
        for tname, n in launches:
            plane.actuator.launch(types[tname], n)
        for nid in retires:
            plane.actuator.retire(nid)

    def _drain(self, n: IndexNode, reason: str) -> None:
        n.removing = True
        self.removing.add(n.id)
        if n.state == "up":
            self.plane.set_node_state(n.id, "draining", reason, decided=True)

    def idle(self, n: IndexNode) -> None:
        """A node being removed has become idle: retire it now."""
        self.plane.actuator.retire(n.id)

    def node_gone(self, node_id: str) -> None:
        """A node left: it is no longer being removed."""
        self.removing.discard(node_id)

    # ------------------------------------------------------------------ by hand
    def scale(self, node_type: str | None, count: int | None) -> None:
        """Set the number of up nodes of ``node_type`` to ``count`` (see the module docstring).

        ``node_type`` may be left out when there is one node type."""
        plane = self.plane
        types = plane.node_types
        known = sorted(types)
        if node_type is None:
            if len(known) != 1:
                raise ValueError(f"node_type=None: name one of the node types "
                                 f"{', '.join(map(repr, known)) or '(none)'}")
            node_type = known[0]
        if node_type not in types:
            raise ValueError(f"node_type={node_type!r}: unknown node type; known: "
                             f"{', '.join(map(repr, known)) or '(none)'}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r}: expected an int >= 0")
        nt = types[node_type]
        if count > nt.max_count:
            raise ValueError(f"count={count}: node type {node_type!r} allows at most "
                             f"max_count={nt.max_count} nodes")
        nodes = plane.index.records()
        mine = [n for n in nodes.values() if n.group.name == node_type]
        up = sorted((n.id for n in mine if n.state in ("up", "booting") and not n.removing),
                    key=_seq)
        draining = sorted((n.id for n in mine if n.removing), key=_seq)
        revive = draining[:max(0, count - len(up))]
        new = max(0, count - len(up) - len(revive))
        idle = [nid for nid in reversed(up) if not nodes[nid].tasks]
        busy = [nid for nid in reversed(up) if nodes[nid].tasks]
        going = (idle + busy)[:max(0, len(up) - count)]
        if not (revive or new or going):
            return
        if going:
            self._check_leaves_room(node_type, set(going))
        drain = [nid for nid in going if nodes[nid].tasks]
        self.decisions += 1
        plane.emit(K.SCALE_DECISION, add={node_type: new} if new else {}, remove=list(going),
                   infeasible=[], reason=BY_HAND, node_type=node_type, count=count,
                   drain=list(drain), revive=list(revive), decided=True)
        for nid in revive:
            self.removing.discard(nid)
            plane.set_node_state(nid, "up", BY_HAND, decided=True)
        if new:
            plane.actuator.launch(nt, new)
        for nid in going:
            if nid in drain:
                self._drain(nodes[nid], BY_HAND)
            else:
                plane.actuator.retire(nid)

    def stranded(self, going: set[str]) -> list[TaskInfo]:
        """Tasks not yet running that would fit nowhere without the nodes ``going`` (nor
        draining ones, nor a node type an autoscaler could add)."""
        plane = self.plane
        idx = plane.index
        left = [s for s in idx.shapes() if s[0] not in going and not idx.record(s[0]).removing]
        types = [nt.shape() for nt in plane.node_types.values()] \
            if plane.autoscaler is not None else []
        verdict: dict[Any, bool] = {}
        out = []
        for t in sorted(plane.tasks.values(), key=lambda t: t.id):
            if idx.placement_of(t.id) is not None or t.id in plane._fixed:
                continue
            key = (t.request, t.accelerator_type)
            bad = verdict.get(key)
            if bad is None:
                bad = verdict[key] = (
                    infeasible_message(key[0], key[1], left) is not None
                    and (not types or infeasible_message(key[0], key[1], types) is not None))
            if bad:
                out.append(t)
        return out

    def _check_leaves_room(self, node_type: str, going: set[str]) -> None:
        for info in self.stranded(going)[:1]:
            raise ValueError(
                f"node_type={node_type!r}: scaling down would leave task {info.name!r} "
                f"(id {info.id}, queued, needs {info.request.to_dict()}"
                f"{', ' + info.accelerator_type if info.accelerator_type else ''}) with no "
                f"node that fits it; wait for it or cancel it first")

    def fail_stranded(self) -> None:
        """Fail queued tasks whose only fitting nodes drain or went (instead of a hang)."""
        plane = self.plane
        for info in self.stranded(set()):
            if info.id not in plane.queue:
                continue
            plane._give_up(info.id, InfeasibleRequestError(  # type: ignore[arg-type]
                f"task {info.name!r} (id {info.id}) needs {info.request.to_dict()}"
                f"{' on ' + info.accelerator_type if info.accelerator_type else ''}, and the "
                f"nodes that fit it are draining or were removed by scale()"))
