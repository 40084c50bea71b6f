"""What a backend (or the simulator's engine) does for the control plane: :class:`Actuator`.

The plane decides (through the policy and the autoscaler) and keeps the books; an
actuator only carries decisions out and reports back through the plane's input
methods (``end``, ``requeue``, ``add_node``...). Every method is called with the
backend's lock held (or on the engine's thread), after the plane's books already
show the decision.
"""

from __future__ import annotations

from typing import Protocol

from runtime.cluster.nodetypes import NodeType

__all__ = ["Actuator", "NullActuator"]


class Actuator(Protocol):
    """The small interface through which the control plane's decisions are carried out."""

    def start(self, task_id: int, node_id: str) -> None:
        """Start a placed task on ``node_id`` (its resources are already held there)."""
        ...

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """Queue a task on ``node_id`` behind running task ``behind``: it starts there the
        moment a slot of its shape frees, without a round trip (only with send-ahead on)."""
        ...

    def preempt(self, task_id: int, reason: str) -> None:
        """Stop a running task; report with ``plane.requeue`` once it has stopped."""
        ...

    def resume(self, task_id: int) -> None:
        """A task that lent resources while blocked has them back: let it go on."""
        ...

    def fail(self, task_id: int, error: BaseException) -> None:
        """Settle a task the plane gave up on with ``error`` (the plane already published
        ``task_failed`` and dropped it from its books)."""
        ...

    def launch(self, node_type: NodeType, count: int) -> None:
        """Add ``count`` nodes of ``node_type`` (report each with ``plane.add_node``)."""
        ...

    def retire(self, node_id: str) -> None:
        """Remove a node that holds nothing (report with ``plane.remove_node`` when gone)."""
        ...


class NullActuator:
    """An actuator that does nothing: for replaying a recorded run, and for tests."""

    def start(self, task_id: int, node_id: str) -> None:
        """Nothing to start."""

    def send_ahead(self, task_id: int, node_id: str, behind: int) -> None:
        """Nothing to send."""

    def preempt(self, task_id: int, reason: str) -> None:
        """Nothing to stop."""

    def resume(self, task_id: int) -> None:
        """Nothing to resume."""

    def fail(self, task_id: int, error: BaseException) -> None:
        """Nothing to settle."""

    def launch(self, node_type: NodeType, count: int) -> None:
        """Nothing to launch."""

    def retire(self, node_id: str) -> None:
        """Nothing to remove."""
