"""Scaling on the local backend: by hand (``scale``) and by an autoscaler.

With ``init(autoscaler="demand", node_types=[...])`` the backend asks the
autoscaler (at most every ``SCALE_PERIOD`` seconds while tasks wait, and
periodically for scale-down) and acts: each added node is a new virtual node
with its own worker processes; a removed node must hold no task or actor. Every
decision is published as a ``scale_decision`` event; tasks the autoscaler calls
infeasible fail with ``InfeasibleRequestError``.

``scale(node_type, count)`` sets the number of up nodes of a type by hand: it
adds nodes (reviving draining ones first), removes idle ones at once, and
*drains* busy ones (state ``draining``: no new tasks; removed, with their
workers, as soon as nothing runs there). It refuses a count that would leave a
queued task with no node that could ever take it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from runtime.backends.local.protocol import sys_error_record
from runtime.errors import InfeasibleRequestError
from runtime.events import EventKind as K
from runtime.policies.base import infeasible_message

__all__ = ["ScalingMixin", "SCALE_PERIOD"]

#: Least seconds between two autoscaler decisions.
SCALE_PERIOD = 0.05
_ERR = 2
_BY_HAND = "scale by hand"


def _seq(node_id: str) -> tuple[int, str]:
    """Sort key of a node id ``type-N``: by its number, then by the id."""
    tail = node_id.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, node_id)


class ScalingMixin:
    """The scaling half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _init_scaling(self) -> None:
        self._scaling = getattr(self.autoscaler, "name", "none") != "none"
        self._last_scale = -math.inf
        self._draining: set[str] = set()
        self._prefetch_saved: bool | None = None

    # ------------------------------------------------------------- by hand
    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Set the number of up nodes of ``node_type`` to ``count``.

        Adds nodes (with their workers), or removes idle ones and drains busy ones
        (no new tasks; removed when idle). ``node_type`` may be left out when the
        cluster has one node type.
        """
        known = sorted(self._node_types)
        if node_type is None:
            if len(known) != 1:
                raise ValueError(f"node_type=None: name one of the node types "
                                 f"{', '.join(map(repr, known))}")
            node_type = known[0]
        if node_type not in self._node_types:
            raise ValueError(f"node_type={node_type!r}: unknown node type; known: "
                             f"{', '.join(map(repr, known)) or '(none)'}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r}: expected an int >= 0")
        nt = self._node_types[node_type]
        if count > nt.max_count:
            raise ValueError(f"count={count}: node type {node_type!r} allows at most "
                             f"max_count={nt.max_count} nodes")
        with self._lock:
            self._check_open()
            mine = [n for n in self.index.nodes() if n.node_type == node_type]
            up = sorted((n.id for n in mine if n.state == "up"), key=_seq)
            draining = sorted((n.id for n in mine if n.state == "draining"), key=_seq)
            revive = draining[:max(0, count - len(up))]
            new = max(0, count - len(up) - len(revive))
            idle = [nid for nid in reversed(up) if not self.index.tasks_on(nid)]
            busy = [nid for nid in reversed(up) if self.index.tasks_on(nid)]
            going = (idle + busy)[:max(0, len(up) - count)]
            remove = [nid for nid in going if nid in idle]
            drain = [nid for nid in going if nid not in idle]
            if not (revive or new or going):
                return  # already there: no decision to publish
            if going:
                self._check_leaves_room(node_type, set(going))
            self.events.emit(self.now(), K.SCALE_DECISION, None, None,
                             add={node_type: new} if new else {}, remove=list(going),
                             infeasible=[], reason=_BY_HAND, node_type=node_type, count=count,
                             drain=list(drain), revive=list(revive))
            for nid in revive:
                self._draining.discard(nid)
                self.index.set_state(nid, "up")
                self.events.emit(self.now(), K.NODE_STATE, None, nid, state="up",
                                 reason=_BY_HAND)
            for _ in range(new):
                self._add_node(nt)
            for nid in remove:
                self._remove_node(nid, _BY_HAND)
            for nid in drain:
                self.index.set_state(nid, "draining")
                self._draining.add(nid)
                self.events.emit(self.now(), K.NODE_STATE, None, nid, state="draining",
                                 reason=_BY_HAND)
            self._sync_prefetch()
            if revive or new:
                self._no_room.clear()
                self._schedule()

    def _fits_nowhere(self, going: set[str]) -> Any:
        """A test ``(request, accelerator) -> bool``: True when no up node outside
        ``going`` (draining ones do not count) nor an addable node type fits."""
        left = [s for s in self.index.shapes() if s[0] not in going
                and s[0] not in self._draining]
        types = [] if not self._scaling else [nt.shape() for nt in self._node_types.values()]
        verdict: dict[Any, bool] = {}

        def test(key: Any) -> bool:
            """Whether the request ``key`` fits nowhere (cached per call)."""
            bad = verdict.get(key)
            if bad is None:
                bad = verdict[key] = (
                    infeasible_message(key[0], key[1], left) is not None
                    and (not types or infeasible_message(key[0], key[1], types) is not None))
            return bad

        return test

    def _stranded(self, going: set[str]) -> list[Any]:
        """Queued tasks (waiting or ready) that would fit nowhere without ``going``."""
        nowhere = self._fits_nowhere(going)
        return [t for t in list(self._tasks.values())
                if t.info is not None and t.actor is None and t.state in ("waiting", "ready")
                and nowhere((t.info.request, t.info.accelerator_type))]

    def _fail_stranded(self, tasks: list[Any]) -> None:
        """Fail queued tasks whose only fitting nodes drain or went (instead of a hang)."""
        for t in tasks:
            self._unready(t)
            self.events.emit(self.now(), K.TASK_FAILED, t.id, None, name=t.name,
                             error="InfeasibleRequestError", reason=_BY_HAND)
            self._finish(t, _ERR, sys_error_record(InfeasibleRequestError(
                f"task {t.name!r} (id {t.id}) needs {t.info.request.to_dict()}"
                f"{' on ' + t.info.accelerator_type if t.info.accelerator_type else ''}, "
                f"and the nodes that fit it are draining or were removed by scale()"),
                self._pid))

    def _check_leaves_room(self, node_type: str, going: set[str]) -> None:
        """Refuse to take away the last nodes some queued task could use."""
        for t in self._stranded(going)[:1]:
            info = t.info
            raise ValueError(
                f"node_type={node_type!r}: scaling down would leave task {info.name!r} "
                f"(id {info.id}, queued, needs {info.request.to_dict()}"
                f"{', ' + info.accelerator_type if info.accelerator_type else ''}) with no "
                f"node that fits it; wait for it or cancel it first")

    def _sync_prefetch(self) -> None:
        """No tasks sent ahead while a node drains (they would land on it)."""
        if self._draining and self._prefetch_saved is None:
            self._prefetch_saved, self._prefetch = self._prefetch, False
        elif not self._draining and self._prefetch_saved is not None:
            self._prefetch, self._prefetch_saved = self._prefetch_saved, None

    def _reap_drained(self) -> None:
        """Remove draining nodes that have become idle, and fail ready tasks that only
        draining nodes could take (a task blocked on such a child would never end)."""
        removed = False
        for nid in sorted(self._draining, key=_seq):
            if nid not in self.index:
                self._draining.discard(nid)
            elif not self.index.tasks_on(nid):
                removed |= self._remove_node(nid, f"drained ({_BY_HAND})")
        if removed:
            self._fail_stranded(self._stranded(set()))
        elif self._draining and self._shapes:
            nowhere = self._fits_nowhere(set())
            self._fail_stranded([t for key, group in list(self._shapes.items())
                                 if nowhere(key) for t in list(group.values())])
        self._sync_prefetch()

    # ------------------------------------------------------------ autoscaler
    def _maybe_autoscale(self, force: bool = False) -> None:
        """Ask the autoscaler (throttled) and apply its decision (under the lock)."""
        if not self._scaling or self._closed:
            return
        now = self.now()
        if not force and now - self._last_scale < SCALE_PERIOD:
            return
        self._last_scale = now
        unmet = [t.info for g in self._shapes.values() for t in itertools.islice(g.values(), 1000)]
        try:
            d = self.autoscaler.decide(unmet, self.index, self._node_types)
        except Exception as exc:  # noqa: BLE001 - a broken autoscaler must not stop tasks
            self.errors.append(exc)
            return
        if d.empty and not d.infeasible:
            return
        self.events.emit(now, K.SCALE_DECISION, None, None, add=dict(d.add),
                         remove=list(d.remove), infeasible=list(d.infeasible), reason=d.reason)
        for name, k in sorted(d.add.items()):
            nt = self._node_types.get(name)
            if nt is None:
                continue
            have = sum(1 for n in self.index.nodes() if n.node_type == name)
            for _ in range(max(0, min(k, nt.max_count - have))):
                self._add_node(nt)
        for nid in d.remove:
            self._remove_node(nid, d.reason or "autoscaler")
        for tid in d.infeasible:
            t = self._tasks.get(tid)
            if t is not None and t.state == "ready":
                self._unready(t)
                self._finish(t, _ERR, sys_error_record(InfeasibleRequestError(
                    f"task {t.name!r} (id {tid}) fits no node type the autoscaler "
                    f"{getattr(self.autoscaler, 'name', '?')!r} can add"), self._pid))
        if d.add:
            self._no_room.clear()
            self._schedule_pass()

    def _remove_node(self, nid: str, reason: str) -> bool:
        """Remove an idle node and its idle workers; False when it still holds work."""
        if nid not in self.index:
            self._draining.discard(nid)
            return False
        if self.index.tasks_on(nid):
            return False
        self.index.remove_node(nid)
        self._draining.discard(nid)
        for w in self._idle.pop(nid, []):
            w.retiring = True
            w.send(("exit",))
        self._feasible.clear()
        self._no_room.clear()
        self.events.emit(self.now(), K.NODE_REMOVED, None, nid, reason=reason)
        return True

    def _scale_tick(self) -> Any:
        """The reader's poll timeout (ms): periodic decisions only while autoscaling."""
        return 500 if self._scaling else None
