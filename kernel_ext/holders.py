"""Who holds what: the running tasks and actors behind each node's used resources.

Built only from what every backend publishes: ``backend.nodes()`` (total and
free per node) and ``backend.log`` (task records with state, node, resources,
start time), plus the actor events of the event stream (:class:`ActorBook`).
What is used on a node but not explained by a running task is shown as held by
the node's actors (or "other work" when none is known). Used by the pending
notice of ``%%remote``, ``%cluster status`` and the monitor.
"""

from __future__ import annotations

import html
import re
import threading
from dataclasses import dataclass
from typing import Any

from runtime.events import EventKind

__all__ = ["clock_words", "book_for", "forget_book", "ActorBook", "Holder", "holders",
           "pending_notice", "describe", "fmt_res", "holders_text", "holders_html",
           "StatusView"]

_EPS = 1e-9


def clock_words(backend: Any, seconds: float) -> str:
    """``"3 s"``, or ``"3 virtual s"`` on the sim backend (its clock is virtual)."""
    virtual = " virtual" if getattr(backend, "kind", "") == "sim" else ""
    return f"{seconds:g}{virtual} s"


def fmt_res(res: dict[str, float]) -> str:
    """``GPU=1, CPU=2`` (memory left out)."""
    return ", ".join(f"{k}={v:g}" for k, v in res.items() if k != "memory" and v > _EPS)


def describe(name: str, task_id: Any) -> str:
    """A task as people know it: ``%%remote [12] (task 41)`` or ``train (task 7)``."""
    m = re.fullmatch(r"%%remote\[(.+)\]", name or "")
    label = f"%%remote [{m.group(1)}]" if m else (name or "task")
    return f"{label} (task {task_id})"


class ActorBook:
    """Live actors (id -> name, node), kept from the ``actor_*`` events of a backend."""

    def __init__(self, backend: Any) -> None:
        self.actors: dict[Any, tuple[str, str | None]] = {}
        self._lock = threading.Lock()
        self._unsub = backend.events.subscribe(self)

    def __call__(self, ev: Any) -> None:
        if ev.kind not in (EventKind.ACTOR_CREATED, EventKind.ACTOR_DIED):
            return
        aid = ev.task if ev.task is not None else ev.data.get("actor")
        with self._lock:
            if ev.kind == EventKind.ACTOR_CREATED:
                self.actors[aid] = (str(ev.data.get("name") or "actor"), ev.node)
            else:
                self.actors.pop(aid, None)

    def close(self) -> None:
        """Stop listening."""
        self._unsub()


_books: dict[int, tuple[Any, ActorBook]] = {}


def book_for(backend: Any, create: bool = True) -> ActorBook | None:
    """The shared :class:`ActorBook` of ``backend`` (created and subscribed on first use;
    with ``create=False`` None when there is none yet)."""
    entry = _books.get(id(backend))
    if entry is None or entry[0] is not backend:
        if not create:
            return None
        entry = _books[id(backend)] = (backend, ActorBook(backend))
    return entry[1]


def forget_book(backend: Any) -> None:
    """Drop ``backend``'s book (at disconnect)."""
    entry = _books.pop(id(backend), None)
    if entry is not None:
        entry[1].close()


@dataclass(frozen=True, slots=True)
class Holder:
    """Something holding resources on a node: a running task or actors."""

    node: str
    who: str
    resources: dict[str, float]
    since: float | None = None  # when it started (backend clock), for tasks
    task_id: Any = None


def holders(backend: Any, actors: ActorBook | None = None) -> list[Holder]:
    """Every holder of resources, node by node (tasks first, then actors / other work)."""
    nodes = {n.id: n for n in backend.nodes()}
    out: list[Holder] = []
    explained: dict[str, dict[str, float]] = {nid: {} for nid in nodes}
    for rec in sorted(backend.log.tasks.values(), key=lambda r: (r.started or 0.0, r.id)):
        if rec.state not in ("running", "blocked") or rec.node not in nodes:
            continue
        res = {k: float(v) for k, v in rec.resources.items()
               if not (k == "CPU" and rec.state == "blocked")}  # blocked tasks lend CPUs
        if not any(v > _EPS for v in res.values()):
            continue
        for k, v in res.items():
            explained[rec.node][k] = explained[rec.node].get(k, 0.0) + v
        out.append(Holder(rec.node, describe(rec.name, rec.id), res, rec.started, rec.id))
    known = dict(actors.actors) if actors is not None else {}
    for nid, n in nodes.items():
        rest = {k: (t - n.free.get(k, 0.0)) - explained[nid].get(k, 0.0)
                for k, t in n.total.items() if k != "memory"}
        rest = {k: v for k, v in rest.items() if v > 1e-6}
        if not rest:
            continue
        here = [f"{name} (id {aid})" for aid, (name, where) in known.items()
                if where in (nid, None)]
        who = ("actor " + ", ".join(here)) if here else "actors or other work"
        out.append(Holder(nid, who, rest))
    return out


def _since(backend: Any, t: float | None) -> str:
    if t is None:
        return ""
    return f" since {clock_words(backend, round(max(backend.now() - t, 0.0)))}"


def pending_notice(backend: Any, task_id: Any, waited: float,
                   actors: ActorBook | None = None) -> str | None:
    """What a pending task waits for and what holds it (None if it is not pending)."""
    rec = backend.log.tasks.get(task_id)
    if rec is None or rec.state != "pending":
        return None
    need = {k: float(v) for k, v in rec.resources.items() if k != "memory"}
    up = [n for n in backend.nodes() if n.state == "up"]
    short = {k: v for k, v in need.items()
             if not any(n.free.get(k, 0.0) + _EPS >= v for n in up)}
    head = f"pending for {clock_words(backend, round(waited, 1))}: needs {fmt_res(need)}"
    if not short:
        ahead = sum(1 for r in backend.log.tasks.values()
                    if r.state == "pending" and r.id != task_id
                    and (r.submitted or 0.0) <= (rec.submitted or 0.0))
        if ahead:
            return f"{head}; queued behind {ahead} earlier pending task(s)"
        return f"{head} together on one node; none has them all free right now"
    held = [h for h in holders(backend, actors)
            if any(h.resources.get(k, 0.0) > _EPS for k in short)]
    if not held:
        return f"{head}; {fmt_res(short)} is not free"
    parts = [f"{h.who}{_since(backend, h.since)}" for h in held[:4]]
    if len(held) > 4:
        parts.append(f"and {len(held) - 4} more")
    return f"{head}; {fmt_res(short)} held by " + ", ".join(parts)


def holders_text(backend: Any, actors: ActorBook | None = None) -> str:
    """The "held by" lines of ``%cluster status`` (empty when nothing is held)."""
    rows = holders(backend, actors)
    if not rows:
        return ""
    lines = ["  held by:"]
    for h in rows:
        lines.append(f"    {h.node}  {fmt_res(h.resources)}  {h.who}{_since(backend, h.since)}")
    return "\n".join(lines)


def holders_html(backend: Any, actors: ActorBook | None = None) -> str:
    """The same as an HTML table (empty when nothing is held)."""
    rows = holders(backend, actors)
    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(h.node)}</td><td>{html.escape(fmt_res(h.resources))}"
                   f"</td><td>{html.escape(h.who + _since(backend, h.since))}</td></tr>"
                   for h in rows)
    return ("<table><thead><tr><th>node</th><th>held</th><th>by</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


class StatusView:
    """``%cluster status``: the runtime's status table plus who holds what."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        from runtime.view import status_text

        extra = holders_text(self.backend, book_for(self.backend, create=False))
        return status_text(self.backend) + (f"\n{extra}" if extra else "")

    def _repr_html_(self) -> str:
        from runtime.view import status_html

        extra = holders_html(self.backend, book_for(self.backend, create=False))
        return status_html(self.backend) + (f"<p><b>held by</b></p>{extra}" if extra else "")
