"""Bin packing by free capacity: best fit (tightest node first) and spread (loosest first).

A node's *free score* is the sum over its resources of free/total; ties go to
the smaller node id. Both are first-fit in submission order otherwise (they
inherit ``greedy_by_shape`` from :class:`FirstFit`), and use the index, so one
decision costs about O(log n) on the control plane's index.
"""

from __future__ import annotations

from runtime.policies.fifo import FirstFit

__all__ = ["BestFit", "Spread"]


class BestFit(FirstFit):
    """Best-fit bin packing: each task goes to the fitting node with the least free capacity.

    Packs work onto few nodes, leaving whole nodes free for big tasks and for
    the autoscaler to remove.
    """

    name = "best_fit"
    order = "tightest"


class Spread(FirstFit):
    """Spread (least loaded): each task goes to the fitting node with the most free capacity.

    Balances load and keeps headroom on every node (fewer hot spots).
    """

    name = "spread"
    order = "loosest"
