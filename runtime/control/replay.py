"""Replay a recorded event stream into a fresh control plane and check its decisions.

Every input of a :class:`~runtime.control.ControlPlane` is published as an event
(nodes added, tasks submitted, ready, ended, blocked...), every decision too (marked
``decided=True``: placements, preemptions, scale decisions, policy errors) and every
round (``decision_round``). So a run recorded with ``runtime.subscribe`` on any
backend can be fed, event by event, into a new plane with the same policy and
autoscaler: :func:`replay` returns the decisions that plane makes next to the ones
the run made, and :meth:`Replay.mismatches` says where they differ (empty: the same
policy object, fed the same events, decided the same way).

    rec = Recorder(runtime.current_backend())   # starts with the nodes there are now
    ... the program ...
    result = replay(rec.events, policy="best_fit")
    assert not result.mismatches()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.cluster import NodeType, TaskInfo
from runtime.control.plane import ControlPlane
from runtime.events import Event
from runtime.events import EventKind as K
from runtime.resources import Resources

__all__ = ["Recorder", "Replay", "replay", "decisions"]

_ENDS = (K.TASK_FINISHED, K.TASK_FAILED, K.TASK_CANCELLED)


def _is_decision(ev: Event) -> bool:
    return ev.kind == K.DECISION_ROUND or bool(ev.data.get("decided"))


def _key(ev: Event) -> tuple[Any, ...]:
    data = {k: v for k, v in ev.data.items() if k != "decided"}
    return (round(ev.time, 9), ev.kind, ev.task, ev.node, repr(sorted(data.items())))


def decisions(events: Iterable[Event]) -> list[Event]:
    """The decisions (and rounds) of a recorded stream, in order."""
    return [ev for ev in events if _is_decision(ev)]


class Recorder:
    """Records a backend's event stream for :func:`replay`, starting with ``node_added``
    events for the nodes it has now (from its ``ClusterLog``)."""

    def __init__(self, backend: Any) -> None:
        self.events: list[Event] = []
        nodes = sorted(backend.log.nodes.items(), key=lambda kv: (kv[1].get("added", 0.0), kv[0]))
        for nid, rec in nodes:
            data = {k: v for k, v in rec.items() if k not in ("id", "added")}
            self.events.append(Event(float(rec.get("added", 0.0)), K.NODE_ADDED, None, nid, data))
        self._unsub = backend.events.subscribe(self.events.append)

    def stop(self) -> list[Event]:
        """Stop recording; returns the events."""
        self._unsub()
        return self.events


@dataclass
class Replay:
    """What a fresh plane decided when fed a recorded stream, beside what the run decided."""

    recorded: list[Event] = field(default_factory=list)
    replayed: list[Event] = field(default_factory=list)

    def mismatches(self, limit: int = 5) -> list[str]:
        """Where the two decision sequences differ (at most ``limit`` lines; empty: same)."""
        out = []
        a, b = self.recorded, self.replayed
        for i in range(max(len(a), len(b))):
            ka = _key(a[i]) if i < len(a) else None
            kb = _key(b[i]) if i < len(b) else None
            if ka != kb:
                out.append(f"decision {i}: the run made {ka}, the replay made {kb}")
                if len(out) >= limit:
                    break
        return out

    def counts(self) -> dict[str, int]:
        """How many decisions of each kind the run made (rounds included)."""
        out: dict[str, int] = {}
        for ev in self.recorded:
            out[ev.kind] = out.get(ev.kind, 0) + 1
        return out


def replay(events: Iterable[Event], policy: Any = "fifo", autoscaler: Any = None, *,
           node_types: Iterable[NodeType] = (), speeds: Mapping[str, Mapping[str, float]] | None
           = None, window: int | None = 256, send_ahead: Callable[[Any], int] | None = None,
           lookahead: bool = False, grace: float = 0.0) -> Replay:
    """Feed ``events`` (a recorded stream, in order) into a new control plane configured
    like the recorded one, and collect both decision sequences (see :class:`Replay`)."""
    events = list(events)
    now = [0.0]
    made: list[Event] = []

    def emit(kind: str, task: int | None, node: str | None, **data: Any) -> None:
        made.append(Event(plane.index.now, kind, task, node, data))

    plane = ControlPlane(policy, autoscaler, node_types=node_types, speeds=speeds, emit=emit,
                         clock=lambda: now[0], window=window, send_ahead=send_ahead,
                         lookahead=lookahead, grace=grace)
    for ev in events:
        now[0] = ev.time
        if ev.kind == K.DECISION_ROUND:
            _round(plane, ev)
        elif not ev.data.get("decided"):
            _feed(plane, ev)
    return Replay(decisions(events), decisions(made))


def _round(plane: ControlPlane, ev: Event) -> None:
    d = ev.data
    if d.get("what") == "ahead":
        plane.fill_ahead()
    elif d.get("what") == "autoscale":
        plane.autoscale([plane.tasks[t] for t in d.get("unmet", ()) if t in plane.tasks]
                        if plane.policy is None else None)
    elif "tasks" in d:
        plane.schedule([plane.tasks[t] for t in d["tasks"] if t in plane.tasks])
    else:
        plane.schedule()


def _feed(plane: ControlPlane, ev: Event) -> None:  # noqa: C901 - one branch per input
    """Apply one recorded input to the plane (the same call the backend made)."""
    k, d, tid = ev.kind, ev.data, ev.task
    if k == K.NODE_ADDED:
        plane.add_node(ev.node, d["node_type"], d.get("state", "up"), total=d["total"],  # type: ignore[arg-type]
                       labels=d.get("labels", {}), cost_per_hour=d.get("cost_per_hour", 0.0))
    elif k == K.NODE_STATE:
        if ev.node in plane.index:
            plane.set_node_state(ev.node, d["state"], d.get("reason", ""))  # type: ignore[arg-type]
    elif k == K.NODE_REMOVED:
        plane.remove_node(ev.node, d.get("reason", ""))  # type: ignore[arg-type]
    elif tid is None:
        return
    elif k == K.TASK_SUBMITTED:
        info = TaskInfo(tid, str(d.get("name", "?")), Resources(d.get("resources", {})),
                        d.get("task_kind", ""), d.get("accelerator_type"),
                        d.get("tenant", "default"), d.get("priority", 0), ev.time,
                        d.get("duration_hint"))
        plane.submit(info, ready=bool(d.get("ready")), preemptible=d.get("preemptible", True))
    elif k == K.TASK_READY:
        if d.get("resume"):
            plane.want_back(tid)
        elif d.get("recall"):
            plane.recall(tid)
        else:  # ready, or back in the queue (preempted, moved): what it held is free
            plane.requeue(tid, None)
    elif k == K.TASK_RETRIED:
        if not d.get("in_place"):
            plane.requeue(tid, K.TASK_RETRIED)
    elif k in _ENDS:
        plane.end(tid, k, keep=bool(d.get("keep")))
    elif k == K.TASK_RELEASED:
        plane.release(tid)
    elif k == K.TASK_BLOCKED:
        plane.lend(tid, d.get("lent", {}))
    elif k == K.TASK_UNBLOCKED:
        plane.reacquire(tid)
    elif k == K.TASK_STARTED and d.get("observed") and ev.node in plane.index:
        info = plane.tasks.get(tid)  # placed by someone else (dask's scheduler)
        if info is not None:
            plane.observe_start(info, ev.node)  # type: ignore[arg-type]
