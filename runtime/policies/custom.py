"""Policies written as plain functions: ``from_function(fn, name=...)``.

``fn(pending, cluster)`` returns (or yields) ``Place`` / ``Preempt`` decisions.
The adapter turns it into a policy object, materialises the decisions before
returning (so a lazy generator cannot see the cluster change under it) and
undoes any tentative :class:`~runtime.policies.ledger.Ledger` holds ``fn`` left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from runtime.cluster import ClusterState, Decision, Place, Preempt, TaskInfo

__all__ = ["FunctionPolicy", "from_function"]

PolicyFn = Callable[[Sequence[TaskInfo], ClusterState], Iterable[Decision]]


class FunctionPolicy:
    """A scheduling policy backed by a function of ``(pending, cluster)``."""

    def __init__(self, fn: PolicyFn, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"from_function: fn must be callable as fn(pending, cluster), "
                            f"got {fn!r} ({type(fn).__name__})")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"from_function: name must be a non-empty string, got {name!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def schedule(self, pending: Sequence[TaskInfo], cluster: ClusterState) -> Iterable[Decision]:
        """Call the function and return its decisions as a list."""
        try:
            out = list(self.fn(pending, cluster) or ())
        finally:
            if cluster.holding:
                cluster.rollback()
        for d in out:
            if not isinstance(d, (Place, Preempt)):
                raise TypeError(f"policy {self.name!r} returned {d!r} ({type(d).__name__}); "
                                f"expected Place(task_id, node_id) or Preempt(task_id)")
        return out

    def __repr__(self) -> str:
        return f"from_function({getattr(self.fn, '__name__', self.fn)!r}, name={self.name!r})"


def from_function(fn: PolicyFn, name: str | None = None) -> FunctionPolicy:
    """Wrap ``fn(pending, cluster) -> decisions`` as a policy object named ``name``."""
    return FunctionPolicy(fn, name)
