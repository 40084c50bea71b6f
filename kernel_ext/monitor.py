"""A live ipywidgets monitor of the cluster, fed by the event stream.

Subscribing to ``backend.events`` only marks the view dirty; an updater thread
redraws at most every ``interval`` seconds (throttled, so a burst of a thousand
events is one redraw). It shows the nodes with per-device usage bars, task
counts by state, the last autoscaler actions and the clock (virtual on the sim
backend). The thread stops when the monitor or its widget is closed, or when
the backend goes away; a comm closed by the browser (reload) is survived:
updates to it are dropped and displaying the monitor again shows a fresh view.
Without ipywidgets, :func:`make_monitor` returns a text monitor instead.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from kernel_ext.text import TextMonitor, render_text, snapshot

__all__ = ["ClusterMonitor", "make_monitor", "render_html", "widgets_available"]

_STATE_COLOURS = {"pending": "#b0b0b0", "running": "#2b7bb9", "blocked": "#e0a030",
                  "finished": "#3a9d5d", "failed": "#c0392b", "cancelled": "#7f7f7f"}


def widgets_available() -> bool:
    """Whether ipywidgets can be imported."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _bar_html(used: float, total: float) -> str:
    pct = 0.0 if total <= 0 else min(max(used / total, 0.0), 1.0) * 100
    colour = "#c0392b" if pct >= 99.9 else "#2b7bb9"
    return (f"<div style='display:inline-block;width:80px;height:9px;background:#e6e6e6;"
            f"vertical-align:middle;margin:0 4px'><div style='width:{pct:.0f}%;height:100%;"
            f"background:{colour}'></div></div>")


def render_html(snap: dict[str, Any]) -> dict[str, str]:
    """The snapshot as HTML fragments: ``header``, ``nodes``, ``tasks``, ``actions``."""
    e = html.escape
    clock = (f"virtual clock <b>{snap['now']:.3f} s</b>" if snap["virtual"]
             else f"up {snap['now']:.1f} s")
    header = (f"<b>{e(snap['backend'])} cluster</b> &middot; {clock} &middot; "
              f"{len(snap['nodes'])} node(s) &middot; {snap['events']} events")
    rows = []
    for n in snap["nodes"]:
        devs = " ".join(f"<span class='nbc-dev'>{e(d['name'])}{_bar_html(d['used'], d['total'])}"
                        f"{d['used']:g}/{d['total']:g}</span>" for d in n["devices"])
        acc = f" [{e(n['accelerator'])}]" if n["accelerator"] else ""
        rows.append(f"<tr><td>{e(n['id'])}</td><td>{e(n['type'])}{acc}</td>"
                    f"<td>{e(n['state'])}</td><td>{devs}</td></tr>")
    nodes = ("<table class='nbc-nodes'><thead><tr><th>node</th><th>type</th><th>state</th>"
             f"<th>usage</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
             if rows else "<i>no nodes</i>")
    held = "".join(f"<tr><td>{e(h['node'])}</td><td>{e(h['resources'])}</td>"
                   f"<td>{e(h['who'])}</td></tr>" for h in snap.get("held", ()))
    if held:  # who holds what: running tasks, then actors
        nodes += ("<table class='nbc-held'><thead><tr><th>node</th><th>held</th><th>by</th>"
                  f"</tr></thead><tbody>{held}</tbody></table>")
    tasks = " ".join(
        f"<span class='nbc-task nbc-{k}' style='padding:1px 6px;margin-right:4px;color:white;"
        f"background:{_STATE_COLOURS.get(k, '#999')}'>{k} {v}</span>"
        for k, v in snap["tasks"].items())
    actions = "<br>".join(f"t={a['time']:.1f}: {e(a['text'])}" for a in snap["actions"]) \
        or "<i>no autoscaler actions</i>"
    return {"header": header, "nodes": nodes, "tasks": tasks, "actions": actions}


class ClusterMonitor:
    """An ipywidgets view of one backend, redrawn from its events (throttled)."""

    def __init__(self, backend: Any, interval: float = 0.5) -> None:
        import ipywidgets as w

        self.backend = backend
        self.interval = interval
        self.redraws = 0
        self.errors: list[BaseException] = []
        self._header = w.HTML()
        self._nodes = w.HTML()
        self._tasks = w.HTML()
        self._actions = w.HTML()
        self.widget = w.VBox([self._header, self._nodes, self._tasks,
                              w.HTML("<b>autoscaler</b>"), self._actions])
        self.widget.add_class("nbcluster-monitor")
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._unsub = backend.events.subscribe(self._on_event)
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="kernel_ext-monitor",
                                        daemon=True)
        self._thread.start()

    # -- updating -------------------------------------------------------------
    def _on_event(self, _ev: Any) -> None:
        self._dirty.set()

    def refresh(self) -> dict[str, Any]:
        """Redraw now; returns the snapshot shown."""
        snap = snapshot(self.backend)
        parts = render_html(snap)
        self._header.value = parts["header"]
        self._nodes.value = parts["nodes"]
        self._tasks.value = parts["tasks"]
        self._actions.value = parts["actions"]
        self.redraws += 1
        self.last = snap
        return snap

    def _widget_closed(self) -> bool:
        return getattr(self.widget, "comm", None) is None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(self.interval * 4)  # also redraw now and then (the clock)
            if self._stop.is_set():
                break
            if self._widget_closed():
                break
            self._dirty.clear()
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - comm gone, backend gone
                self.errors.append(exc)
                if len(self.errors) > 20 or _backend_gone(self.backend):
                    break
            self._stop.wait(self.interval)  # throttle
        self._detach()

    def _detach(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None

    # -- lifecycle ------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the updater thread is alive."""
        return self._thread.is_alive()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the updater thread, unsubscribe and close the widgets."""
        self._stop.set()
        self._dirty.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._detach()
        try:
            self.widget.close()
            for child in (self._header, self._nodes, self._tasks, self._actions):
                child.close()
        except Exception:  # noqa: BLE001 - comm already gone
            pass

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            try:
                bundle["text/plain"] = render_text(snapshot(self.backend))
            except Exception:  # noqa: BLE001 - keep the widget even if the text fails
                pass
        return bundle

    def __repr__(self) -> str:
        return render_text(snapshot(self.backend))


def _backend_gone(backend: Any) -> bool:
    try:
        backend.nodes()
    except Exception:  # noqa: BLE001
        return True
    return False


def make_monitor(backend: Any, interval: float = 0.5, text: bool = False) -> Any:
    """A :class:`ClusterMonitor`, or a :class:`~kernel_ext.text.TextMonitor` when
    ``text`` is set or ipywidgets is missing."""
    if text or not widgets_available():
        return TextMonitor(backend, interval=max(interval, 0.5))
    return ClusterMonitor(backend, interval=interval)
