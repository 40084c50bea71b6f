"""The simulation's event trace: compact, deterministic, hashable, exportable.

Events are stored column-wise in :mod:`array` arrays (time, kind, task, node,
aux), so a million-task run records ~3M events cheaply; rare details (task
metadata, scale decisions, error names) live in interned side tables. The same
inputs and seed give the same bytes, hence the same :meth:`Trace.digest`, on any
machine. :meth:`Trace.events` replays the trace as :class:`runtime.events.Event`
objects (what the runtime's monitor and ``ClusterLog`` read);
:meth:`Trace.to_chrome` writes Chrome/Perfetto JSON with one track per device.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runtime.events import Event, EventKind

__all__ = ["Trace", "KINDS", "K"]

#: Event kinds the simulator records, by code.
KINDS: tuple[str, ...] = (
    EventKind.TASK_SUBMITTED, EventKind.TASK_STARTED, EventKind.TASK_FINISHED,
    EventKind.TASK_FAILED, EventKind.TASK_RETRIED, EventKind.TASK_PREEMPTED,
    EventKind.NODE_ADDED, EventKind.NODE_STATE, EventKind.NODE_REMOVED,
    EventKind.SCALE_DECISION, EventKind.TASK_CANCELLED,
)


_DEVS = ("node", "CPU", "GPU", "TPU", "QPU")


class K:
    """Kind codes (indexes into :data:`KINDS`)."""

    SUBMITTED, STARTED, FINISHED, FAILED, RETRIED, PREEMPTED = 0, 1, 2, 3, 4, 5
    NODE_ADDED, NODE_STATE, NODE_REMOVED, SCALE, CANCELLED = 6, 7, 8, 9, 10


class Trace:
    """Column-wise event log. ``aux`` is per kind: submitted -> task meta index;
    started/finished/retried/preempted -> attempt; failed -> note index; node
    events -> note index; scale -> note index."""

    def __init__(self) -> None:
        self.time = array("d")
        self.kind = array("b")
        self.task = array("q")
        self.node = array("l")
        self.aux = array("q")
        self.node_ids: list[str] = []
        self.metas: list[tuple[str, str, str, tuple[tuple[str, float], ...]]] = []
        self._meta_ix: dict[tuple, int] = {}
        self._meta_fast: dict[tuple, int] = {}  # keyed by the (hashable) request itself
        self.notes: list[str] = []  # canonical JSON of rare event details
        self._note_ix: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.time)

    # recording ----------------------------------------------------------------
    def meta(self, name: str, kind: str, tenant: str, request: Mapping[str, float]) -> int:
        """Intern a task's (name, kind, tenant, request) and return its index."""
        try:
            return self._meta_fast[(name, kind, tenant, request)]
        except (KeyError, TypeError):  # new, or an unhashable request mapping
            pass
        key = (name, kind, tenant, tuple(request.items()))
        ix = self._meta_ix.get(key)
        if ix is None:
            ix = self._meta_ix[key] = len(self.metas)
            self.metas.append(key)  # type: ignore[arg-type]
        try:
            self._meta_fast[(name, kind, tenant, request)] = ix
        except TypeError:
            pass
        return ix

    def note(self, data: Mapping[str, Any]) -> int:
        """Intern event details (as canonical JSON) and return their index."""
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        ix = self._note_ix.get(text)
        if ix is None:
            ix = self._note_ix[text] = len(self.notes)
            self.notes.append(text)
        return ix

    def add_node(self, node_id: str) -> int:
        """Register a node id; returns its index for the ``node`` column."""
        self.node_ids.append(node_id)
        return len(self.node_ids) - 1

    def record(self, time: float, kind: int, task: int = -1, node: int = -1, aux: int = 0) -> int:
        """Append one event; returns its index."""
        self.time.append(time)
        self.kind.append(kind)
        self.task.append(task)
        self.node.append(node)
        self.aux.append(aux)
        return len(self.time) - 1

    # reading ------------------------------------------------------------------
    def event(self, i: int) -> Event:
        """Event ``i`` as a :class:`runtime.events.Event`."""
        k = self.kind[i]
        task = self.task[i]
        nix = self.node[i]
        node = self.node_ids[nix] if nix >= 0 else None
        aux = self.aux[i]
        data: dict[str, Any]
        if k == K.SUBMITTED:
            name, kind, tenant, req = self.metas[aux]
            data = {"name": name, "kind": kind, "tenant": tenant, "resources": dict(req)}
        elif k in (K.STARTED, K.FINISHED, K.RETRIED, K.PREEMPTED):
            data = {"attempt": aux}
        else:
            data = json.loads(self.notes[aux])
        return Event(self.time[i], KINDS[k], task if task >= 0 else None, node, data)

    def events(self) -> Iterator[Event]:
        """Every event, in order."""
        for i in range(len(self.time)):
            yield self.event(i)

    def digest(self) -> str:
        """sha256 of the trace's canonical bytes (little-endian arrays + side tables)."""
        h = hashlib.sha256(b"nbcluster-sim-trace-v1\n")
        h.update(json.dumps([self.node_ids, self.metas, self.notes],
                            separators=(",", ":")).encode())
        for arr in (self.time, self.kind, self.task, self.node, self.aux):
            if sys.byteorder == "big":  # pragma: no cover - canonical byte order
                arr = array(arr.typecode, arr)
                arr.byteswap()
            h.update(arr.typecode.encode())
            h.update(arr.tobytes() if arr.typecode != "l" else array("q", arr).tobytes())
        return h.hexdigest()

    # export -------------------------------------------------------------------
    def attempts(self) -> list[tuple[int, int, float, float, str]]:
        """``(task, node index, start, end, outcome)`` for every attempt that started."""
        open_: dict[int, tuple[int, float]] = {}
        out = []
        time, kind, task, node = self.time, self.kind, self.task, self.node
        ends = {K.FINISHED: "finished", K.FAILED: "failed", K.RETRIED: "retried",
                K.PREEMPTED: "preempted", K.CANCELLED: "cancelled"}
        for i in range(len(time)):
            k = kind[i]
            if k == K.STARTED:
                open_[task[i]] = (node[i], time[i])
            elif k in ends:
                st = open_.pop(task[i], None)
                if st is not None:
                    out.append((task[i], st[0], st[1], time[i], ends[k]))
        end = time[-1] if len(time) else 0.0
        for t, (n, s) in open_.items():
            out.append((t, n, s, end, "running"))
        return out

    def to_chrome(self, path: str | Path | None = None, *, max_events: int = 200_000) -> dict:
        """Chrome/Perfetto trace JSON (one process per node, one track per device lane).

        Each attempt is placed on the lowest free lane of its node's device kind
        (``GPU 0``, ``GPU 1``... or ``CPU 0``...). Writes to ``path`` when given.
        """
        task_meta: dict[int, int] = {}
        for i in range(len(self.time)):
            if self.kind[i] == K.SUBMITTED:
                task_meta[self.task[i]] = self.aux[i]
        lanes: dict[tuple[int, str], list[float]] = {}
        tnames: dict[tuple[int, int], str] = {}
        evs: list[dict[str, Any]] = []
        for t, n, s, e, outcome in sorted(self.attempts(), key=lambda a: (a[2], a[0])):
            if len(evs) >= max_events:
                break
            name, kind, tenant, req = self.metas[task_meta[t]]
            rq = dict(req)
            dev = next((k for k in ("QPU", "TPU", "GPU") if rq.get(k)), "CPU")
            ends = lanes.setdefault((n, dev), [])
            lane = next((j for j, free_at in enumerate(ends) if free_at <= s), len(ends))
            if lane == len(ends):
                ends.append(e)
            else:
                ends[lane] = e
            tid = _DEVS.index(dev) * 10_000 + lane
            tnames[(n, tid)] = f"{dev} {lane}"
            evs.append({"name": name, "cat": outcome, "ph": "X", "ts": s * 1e6,
                        "dur": max(e - s, 0.0) * 1e6, "pid": n, "tid": tid,
                        "args": {"task": t, "tenant": tenant, "kind": kind, "outcome": outcome}})
        for i in range(len(self.time)):
            k = self.kind[i]
            if k in (K.NODE_STATE, K.NODE_REMOVED, K.SCALE):
                evs.append({"name": KINDS[k], "ph": "i", "s": "p" if k != K.SCALE else "g",
                            "ts": self.time[i] * 1e6, "pid": max(self.node[i], 0), "tid": 0,
                            "args": json.loads(self.notes[self.aux[i]])})
        meta = [{"name": "process_name", "ph": "M", "pid": i, "args": {"name": nid}}
                for i, nid in enumerate(self.node_ids)]
        meta += [{"name": "thread_name", "ph": "M", "pid": p, "tid": t, "args": {"name": nm}}
                 for (p, t), nm in sorted(tnames.items())]
        doc = {"traceEvents": meta + evs, "displayTimeUnit": "ms",
               "otherData": {"generator": "nbcluster simulator", "digest": self.digest()}}
        if path is not None:
            Path(path).write_text(json.dumps(doc))
        return doc
