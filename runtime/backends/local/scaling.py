"""Scaling on the local backend: the control plane's scale planner decides, this acts.

With ``init(autoscaler="demand", node_types=[...])`` the backend asks the plane to
run the autoscaler (at most every ``SCALE_PERIOD`` seconds while tasks wait, and
periodically for scale-down); ``scale(node_type, count)`` sets the number of up
nodes of a type by hand, with the planner's rules (draining nodes revived first,
idle ones removed at once, busy ones drained and removed once idle, a count that
would strand a queued task refused). What this module adds: each added node is a
new virtual node with its own worker processes; a removed node's workers exit.
"""

from __future__ import annotations

import math

__all__ = ["ScalingMixin", "SCALE_PERIOD"]

#: Least seconds between two autoscaler decisions.
SCALE_PERIOD = 0.05


class ScalingMixin:
    """The scaling half of :class:`~runtime.backends.local.backend.LocalBackend`."""

    def _init_scaling(self) -> None:
        self._scaling = self.plane.autoscaler is not None
        self._last_scale = -math.inf

    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Set the number of up nodes of ``node_type`` to ``count``.

        Adds nodes (with their workers), or removes idle ones and drains busy ones
        (no new tasks; removed when idle). ``node_type`` may be left out when the
        cluster has one node type.
        """
        with self._lock:
            self._check_open()
            self.plane.scale(node_type, count)
            self._schedule()

    def _maybe_autoscale(self, force: bool = False) -> None:
        """Ask the autoscaler through the plane (throttled; under the lock)."""
        if not self._scaling or self._closed:
            return
        now = self.now()
        if not force and now - self._last_scale < SCALE_PERIOD:
            return
        self._last_scale = now
        self.plane.autoscale()

    def _remove_node(self, nid: str, reason: str) -> bool:
        """Remove an idle node and its idle workers; False when it still holds work."""
        if nid not in self.index:
            return False
        if self.index.tasks_on(nid):
            return False
        for w in self._idle.pop(nid, []):
            w.retiring = True
            w.send(("exit",))
        self.plane.remove_node(nid, reason)
        self.plane.planner.fail_stranded()
        return True

    def _scale_tick(self) -> int | None:
        """The reader's poll timeout (ms): periodic decisions only while autoscaling."""
        return 500 if self._scaling else None
