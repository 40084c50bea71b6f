"""FIFO first-fit: the default policy, in submission order, on the first node that fits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.cluster import ClusterState, Decision, TaskInfo
from runtime.policies.ledger import Ledger, fifo_key

__all__ = ["FirstFit"]


class FirstFit:
    """Place each pending task, in submission order, on the first node (by id) where it fits.

    Tasks that fit nowhere stay pending; later, smaller tasks may still start
    (no head-of-line blocking; use ``strict=True`` for strict FIFO).
    Subclasses change only ``order`` (the node order of :meth:`Ledger.place`).
    """

    name = "fifo"
    order = "id"

    def __init__(self, strict: bool = False) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"{type(self).__name__}: strict must be True or False, got {strict!r}")
        self.strict = strict

    @property
    def greedy_by_shape(self) -> bool:
        """True unless ``strict`` or a subclass overrides ``schedule``: tasks are placed
        greedily in ``(submitted_at, id)`` order and where one goes depends only on its
        shape and earlier placements, so a backend may batch pending tasks of one shape
        (see ``runtime.control``)."""
        return not self.strict and type(self).schedule is FirstFit.schedule

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return a placement for each task that fits somewhere now."""
        out: list[Decision] = []
        with Ledger(cluster) as ledger:
            for task in sorted(pending, key=fifo_key):
                placed = ledger.place(task, self.order)
                if placed is not None:
                    out.append(placed)
                elif self.strict:
                    break
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strict={self.strict})"
