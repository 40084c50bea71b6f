"""Bin packing by free capacity: best fit (tightest node first) and spread (loosest first).

A node's *free score* is the sum over its resources of free/total; ties go to
the smaller node id. Both are first-fit in submission order otherwise, and use
the index, so one decision costs about O(log n) on a
:class:`~runtime.policies.state.NodeIndex`.
"""

from __future__ import annotations

from runtime.policies.fifo import FirstFit


class _Greedy(FirstFit):
    """First fit in some node order; declares ``greedy_by_shape`` unless ``strict``."""

    @property
    def greedy_by_shape(self) -> bool:
        """True (unless ``strict``, or a subclass overrides ``schedule``): tasks are placed
        greedily in ``(submitted_at, id)`` order and where one goes depends only on its
        shape and earlier placements, so a backend may batch pending tasks of one shape
        (see ``simulator.engine``)."""
        return not self.strict and type(self).schedule is FirstFit.schedule

__all__ = ["BestFit", "Spread"]


class BestFit(_Greedy):
    """Best-fit bin packing: each task goes to the fitting node with the least free capacity.

    Packs work onto few nodes, leaving whole nodes free for big tasks and for
    the autoscaler to remove.
    """

    name = "best_fit"
    order = "tightest"


class Spread(_Greedy):
    """Spread (least loaded): each task goes to the fitting node with the most free capacity.

    Balances load and keeps headroom on every node (fewer hot spots).
    """

    name = "spread"
    order = "loosest"
