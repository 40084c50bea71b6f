"""The monitor as text: for plain IPython terminals and kernels without ipywidgets.

:func:`snapshot` gathers what the monitor shows (nodes with per-device usage,
tasks by state, autoscaler actions, the clock) from the backend's node list and
its event-fed :class:`~runtime.events.ClusterLog`; :func:`render_text` prints it.
The widget (``kernel_ext.monitor``) renders the same snapshot as HTML.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

from runtime.events import TASK_STATES

__all__ = ["snapshot", "render_text", "bar", "TextMonitor"]


def _fmt(v: float) -> str:
    return f"{v:g}"


def snapshot(backend: Any, max_actions: int = 5) -> dict[str, Any]:
    """What the monitor shows, as plain data (same on every backend)."""
    nodes = []
    for n in backend.nodes():
        devices = []
        for k, total in n.total.items():
            if k == "memory" or total <= 0:
                continue
            used = total - n.free.get(k, 0.0)
            devices.append({"name": k, "used": used, "total": total})
        nodes.append({"id": n.id, "type": n.node_type, "state": n.state,
                      "accelerator": n.accelerator_type or "", "devices": devices})
    counts = backend.log.counts()
    actions = []
    for ev in list(backend.log.scale_events)[-max_actions:]:
        d = ev.data
        add = d.get("add") or {}
        remove = d.get("remove") or ()
        parts = [f"+{c} {t}" for t, c in dict(add).items()] + [f"-{r}" for r in remove]
        text = ", ".join(parts) or "no change"
        if d.get("reason"):
            text += f" ({d['reason']})"
        actions.append({"time": ev.time, "text": text})
    try:
        now = float(backend.now())
    except Exception:  # noqa: BLE001 - a backend that shut down
        now = float(backend.log.now)
    from kernel_ext.holders import book_for, clock_words, fmt_res, holders

    held = []
    for h in holders(backend, book_for(backend, create=False)):
        since = "" if h.since is None else \
            f" since {clock_words(backend, round(max(now - h.since, 0.0)))}"
        held.append({"node": h.node, "resources": fmt_res(h.resources), "who": h.who + since})
    return {
        "backend": getattr(backend, "kind", "?"),
        "describe": backend.describe(),
        "virtual": getattr(backend, "kind", "") == "sim",
        "now": now,
        "nodes": nodes,
        "tasks": {s: counts.get(s, 0) for s in TASK_STATES},
        "actions": actions,
        "held": held,
        "events": backend.log.events_seen,
    }


def bar(used: float, total: float, width: int = 10) -> str:
    """A text usage bar such as ``[####------]``."""
    frac = 0.0 if total <= 0 else min(max(used / total, 0.0), 1.0)
    full = round(frac * width)
    return "[" + "#" * full + "-" * (width - full) + "]"


def render_text(snap: dict[str, Any]) -> str:
    """The snapshot as a few lines of text."""
    clock = f"virtual time {snap['now']:.3f} s" if snap["virtual"] else \
        f"up {snap['now']:.1f} s"
    lines = [f"{snap['backend']} cluster, {clock}, {len(snap['nodes'])} node(s)"]
    for n in snap["nodes"]:
        acc = f" [{n['accelerator']}]" if n["accelerator"] else ""
        devs = "  ".join(f"{d['name']} {bar(d['used'], d['total'])} "
                         f"{_fmt(d['used'])}/{_fmt(d['total'])}" for d in n["devices"])
        lines.append(f"  {n['id']} ({n['type']}, {n['state']}){acc}  {devs}")
    lines.append("  tasks: " + ", ".join(f"{k} {v}" for k, v in snap["tasks"].items()))
    for h in snap.get("held", ()):
        lines.append(f"  held: {h['node']} {h['resources']} by {h['who']}")
    if snap["actions"]:
        lines.append("  autoscaler: " + "; ".join(
            f"t={a['time']:.1f} {a['text']}" for a in snap["actions"]))
    return "\n".join(lines)


class TextMonitor:
    """Prints the snapshot whenever it changes, at most every ``interval`` seconds.

    ``follow(seconds)`` blocks (interruptible); ``follow_in_background`` does the
    same from a thread (what ``%cluster monitor --follow S`` uses, so the prompt
    stays free); ``render()`` is one snapshot.
    """

    def __init__(self, backend: Any, interval: float = 1.0, out: TextIO | None = None) -> None:
        self.backend = backend
        self.interval = interval
        self.out = out
        self._changed = threading.Event()
        self._changed.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def render(self) -> str:
        """One snapshot as text."""
        return render_text(snapshot(self.backend))

    def _on_event(self, _ev: Any) -> None:
        self._changed.set()

    def follow(self, seconds: float, relay: Any = None) -> int:
        """Print a snapshot on each change for ``seconds``; returns how many were printed.

        With ``relay`` (a :class:`~kernel_ext.output.StreamRelay`) the text goes there.
        """
        import sys

        out = self.out or sys.stdout
        unsub = self.backend.events.subscribe(self._on_event)
        printed = 0
        deadline = time.monotonic() + seconds
        try:
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._changed.wait(min(left, self.interval)):
                    self._changed.clear()
                    try:
                        text = self.render()
                    except Exception:  # noqa: BLE001 - the backend shut down
                        break
                    if relay is not None:
                        relay.write("stdout", text + "\n")
                        relay.flush()
                    else:
                        print(text, file=out, flush=True)
                    printed += 1
                    self._stop.wait(min(self.interval, max(deadline - time.monotonic(), 0)))
        finally:
            unsub()
        return printed

    def follow_in_background(self, seconds: float, relay: Any = None) -> threading.Thread:
        """Run :meth:`follow` in a daemon thread; :meth:`close` stops it."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.follow, args=(seconds, relay),
                                        name="kernel_ext-monitor-follow", daemon=True)
        self._thread.start()
        return self._thread

    @property
    def running(self) -> bool:
        """Whether a background :meth:`follow` is printing."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop a background :meth:`follow` (waits up to 2 s for its thread)."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
