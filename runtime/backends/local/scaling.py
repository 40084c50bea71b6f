"""Autoscaling on the local backend: the autoscaler recommends, the backend adds nodes.

With ``init(autoscaler="demand", node_types=[...])`` the backend asks the
autoscaler (at most every ``SCALE_PERIOD`` seconds while tasks wait, and
periodically for scale-down) and acts: each added node is a new virtual node
with its own worker processes; a removed node must hold no task or actor. Every
decision is published as a ``scale_decision`` event; tasks the autoscaler calls
infeasible fail with ``InfeasibleRequestError``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from runtime.backends.local.protocol import sys_error_record
from runtime.errors import InfeasibleRequestError
from runtime.events import EventKind as K

__all__ = ["ScalingMixin", "SCALE_PERIOD"]

#: Least seconds between two autoscaler decisions.
SCALE_PERIOD = 0.05
_ERR = 2


class ScalingMixin:
    """The autoscaling half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _init_scaling(self) -> None:
        self._scaling = getattr(self.autoscaler, "name", "none") != "none"
        self._last_scale = -math.inf

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
            return False
        if any(self.index.placement_of(t.id) == nid for t in self.index.running()):
            return False
        self.index.remove_node(nid)
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
