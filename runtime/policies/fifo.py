"""FIFO first-fit: the default policy, in submission order, on the first node that fits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runtime.policies.base import ClusterState, Decision, Place, TaskInfo

__all__ = ["FirstFit"]


class FirstFit:
    """Place each pending task, in order, on the first node (by id) where it fits.

    Tasks that fit nowhere stay pending; later, smaller tasks may still start
    (no head-of-line blocking; use ``strict=True`` for strict FIFO).
    """

    name = "fifo"

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Return a placement for each task that fits somewhere now."""
        # Track what this call has already handed out, so two tasks are not both
        # placed into the last free slot of a node.
        taken: dict[str, dict[str, float]] = {}
        out: list[Decision] = []
        for task in pending:
            placed = False
            for node in cluster.fitting(task, "id"):
                used = taken.get(node.id)
                if used and not task.request.fits(_left(node.free, used)):
                    continue
                slot = taken.setdefault(node.id, {})
                for k, v in task.request.items():
                    slot[k] = slot.get(k, 0.0) + v
                out.append(Place(task.id, node.id))
                placed = True
                break
            if not placed and self.strict:
                break
        return out

    def __repr__(self) -> str:
        return f"FirstFit(strict={self.strict})"


def _left(free, used):  # noqa: ANN001, ANN202
    return {k: free.get(k, 0.0) - used.get(k, 0.0) for k in set(free) | set(used)}
