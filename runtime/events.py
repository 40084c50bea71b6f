"""The one event stream: every state change a backend or the simulator makes.

The monitor widget, ``%cluster status``, the simulator's metrics and the trace
export all read this stream, so each backend only has to *publish*. An
:class:`EventBus` fans events out to subscribers; a :class:`ClusterLog` folds
them into a table of tasks and nodes that anyone can read.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "Event",
    "EventKind",
    "EventBus",
    "TaskRecord",
    "ClusterLog",
    "TASK_STATES",
]


class EventKind:
    """The event kinds (plain strings, so traces stay readable)."""

    TASK_SUBMITTED: Final = "task_submitted"
    TASK_STARTED: Final = "task_started"  # data: attempt
    TASK_FINISHED: Final = "task_finished"
    TASK_FAILED: Final = "task_failed"  # data: error (type name), reason
    TASK_RETRIED: Final = "task_retried"  # data: attempt, reason
    TASK_CANCELLED: Final = "task_cancelled"
    TASK_BLOCKED: Final = "task_blocked"  # a task waits in get/wait and lends its CPU
    TASK_UNBLOCKED: Final = "task_unblocked"
    TASK_PREEMPTED: Final = "task_preempted"  # decision: stop it (data: reason)
    TASK_READY: Final = "task_ready"  # its inputs are ready: it joins the pending queue
    TASK_PLACED: Final = "task_placed"  # decision: it holds resources on ``node`` now
    TASK_RELEASED: Final = "task_released"  # gave back what it held (an actor that died)
    ACTOR_CREATED: Final = "actor_created"
    ACTOR_RESTARTED: Final = "actor_restarted"
    ACTOR_DIED: Final = "actor_died"
    NODE_ADDED: Final = "node_added"  # data: node_type, total, labels, state
    NODE_STATE: Final = "node_state"  # data: state
    NODE_REMOVED: Final = "node_removed"  # data: reason
    SCALE_DECISION: Final = "scale_decision"  # data: add, remove, infeasible, reason
    WORKER_DIED: Final = "worker_died"  # data: pid, reason
    DECISION_ROUND: Final = "decision_round"  # the control plane asked a policy (data: what)
    POLICY_ERROR: Final = "policy_error"  # a policy or autoscaler raised or decided wrongly


#: Task states as shown in tables (the order is the order of a task's life); every
#: backend's task records use these words.
TASK_STATES = ("pending", "running", "blocked", "finished", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Event:
    """One state change: when, what kind, which task and node, and details."""

    time: float
    kind: str
    task: int | None = None
    node: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for traces and logs)."""
        return {"time": self.time, "kind": self.kind, "task": self.task, "node": self.node,
                "data": dict(self.data)}


Subscriber = Callable[[Event], None]


class EventBus:
    """Thread-safe fan-out of events to subscribers, in publish order.

    A subscriber that raises is dropped (with the error kept in ``errors``) so a
    broken monitor never breaks the runtime.
    """

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []
        self._lock = threading.RLock()
        self.errors: list[BaseException] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(event)`` for every future event; returns an unsubscribe function."""
        with self._lock:
            self._subs = [*self._subs, fn]

        def unsubscribe() -> None:
            self.unsubscribe(fn)

        return unsubscribe

    def unsubscribe(self, fn: Subscriber) -> None:
        """Stop calling ``fn`` (no error when it was not subscribed)."""
        with self._lock:
            self._subs = [s for s in self._subs if s is not fn]

    @property
    def has_subscribers(self) -> bool:
        """Whether publishing would reach anyone (lets hot paths skip building events)."""
        return bool(self._subs)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber, in subscription order."""
        subs = self._subs
        if not subs:
            return
        with self._lock:
            for fn in subs:
                try:
                    fn(event)
                except Exception as exc:  # noqa: BLE001 - isolate broken subscribers
                    self.errors.append(exc)
                    self._subs = [s for s in self._subs if s is not fn]

    def emit(self, time: float, kind: str, task: int | None = None, node: str | None = None,
             **data: Any) -> None:
        """Build and publish an event, only when someone listens."""
        if self._subs:
            self.publish(Event(time, kind, task, node, data))


#: Events that may be the first a log hears of a task (others about unknown tasks are
#: decisions on tasks it pruned, or never saw).
_OPENING = frozenset({EventKind.TASK_SUBMITTED, EventKind.TASK_STARTED, EventKind.TASK_FAILED,
                      EventKind.TASK_FINISHED, EventKind.TASK_CANCELLED,
                      EventKind.TASK_RETRIED, EventKind.TASK_BLOCKED})


@dataclass(slots=True)
class TaskRecord:
    """What the cluster log knows about one task (or actor method call)."""

    id: int
    name: str
    state: str = "pending"
    node: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    error: str | None = None


class ClusterLog:
    """Folds the event stream into task and node tables (for status, monitor, tests).

    Subscribe it to a bus (``log.attach(bus)``); read ``tasks``, ``nodes``,
    ``counts()`` and ``scale_events``. Old finished tasks are pruned beyond
    ``keep_finished`` so a long session stays small.
    """

    def __init__(self, keep_finished: int = 10_000) -> None:
        self.tasks: dict[int, TaskRecord] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.scale_events: list[Event] = []
        self.events_seen = 0
        self.now = 0.0
        self.keep_finished = keep_finished
        self._finished_order: list[int] = []
        self._lock = threading.Lock()
        self._unsub: Callable[[], None] | None = None

    def attach(self, bus: EventBus) -> ClusterLog:
        """Start folding events from ``bus``; returns self."""
        self._unsub = bus.subscribe(self)
        return self

    def detach(self) -> None:
        """Stop listening."""
        if self._unsub is not None:
            self._unsub()
            self._unsub = None

    def counts(self) -> Counter[str]:
        """Number of tasks in each state."""
        with self._lock:
            return Counter(t.state for t in self.tasks.values())

    def __call__(self, ev: Event) -> None:  # the subscriber
        with self._lock:
            self.events_seen += 1
            self.now = max(self.now, ev.time)
            k = ev.kind
            if ev.task is not None and ev.task >= 0 and k.startswith("task_"):
                rec = self.tasks.get(ev.task)
                if rec is None:
                    if k not in _OPENING:  # a decision about a task pruned or never seen
                        return
                    rec = self.tasks[ev.task] = TaskRecord(ev.task, str(ev.data.get("name", "?")))
                if k == EventKind.TASK_SUBMITTED:
                    rec.submitted = ev.time
                    rec.resources = dict(ev.data.get("resources", {}))
                elif k == EventKind.TASK_STARTED:
                    rec.state, rec.started, rec.node = "running", ev.time, ev.node
                    rec.attempts = int(ev.data.get("attempt", rec.attempts + 1))
                elif k == EventKind.TASK_BLOCKED:
                    rec.state = "blocked"
                elif k == EventKind.TASK_UNBLOCKED:
                    rec.state = "running"
                elif k in (EventKind.TASK_RETRIED, EventKind.TASK_PREEMPTED):
                    rec.state = "pending"
                elif k in (EventKind.TASK_FINISHED, EventKind.TASK_FAILED,
                           EventKind.TASK_CANCELLED):
                    rec.state = {"task_finished": "finished", "task_failed": "failed",
                                 "task_cancelled": "cancelled"}[k]
                    rec.finished = ev.time
                    if k == EventKind.TASK_FAILED:
                        rec.error = str(ev.data.get("error", ""))
                    self._finished_order.append(ev.task)
                    if len(self._finished_order) > self.keep_finished * 2:
                        drop = self._finished_order[: -self.keep_finished]
                        self._finished_order = self._finished_order[-self.keep_finished:]
                        for tid in drop:
                            r = self.tasks.get(tid)
                            if r is not None and r.state in ("finished", "failed", "cancelled"):
                                del self.tasks[tid]
            elif ev.node is not None and k == EventKind.NODE_ADDED:
                self.nodes[ev.node] = {"id": ev.node, **dict(ev.data), "added": ev.time}
            elif ev.node is not None and k == EventKind.NODE_STATE:
                self.nodes.setdefault(ev.node, {"id": ev.node})["state"] = ev.data.get("state")
            elif ev.node is not None and k == EventKind.NODE_REMOVED:
                self.nodes.pop(ev.node, None)
            elif k == EventKind.SCALE_DECISION:
                self.scale_events.append(ev)
