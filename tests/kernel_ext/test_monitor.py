"""The monitor widget and its text fallback, fed by a real EventBus."""

from __future__ import annotations

import threading

import pytest

from kernel_ext.monitor import ClusterMonitor, make_monitor, render_html
from kernel_ext.text import TextMonitor, render_text, snapshot
from runtime.cluster import NodeInfo
from runtime.events import ClusterLog, EventBus, EventKind
from runtime.resources import Resources


class EventBackend:
    """A backend's observable surface (events, log, nodes) driven by hand."""

    kind = "sim"

    def __init__(self) -> None:
        self.events = EventBus()
        self.log = ClusterLog().attach(self.events)
        self.t = 0.0
        self.used = 0.0
        self.closed = False

    def now(self) -> float:
        """The hand-driven clock."""
        return self.t

    def describe(self):
        """The summary a backend gives."""
        return {"backend": self.kind}

    def nodes(self):
        """One A100 node; raises once the backend is 'shut down'."""
        if self.closed:
            raise RuntimeError("backend is shut down")
        total = Resources({"CPU": 4, "GPU": 2})
        return [NodeInfo("n0", "a100", total, total - {"GPU": self.used},
                         {"accelerator_type": "A100"})]

    def emit(self, kind, task=None, node=None, **data):
        """Publish one event, one virtual second after the last."""
        self.t += 1.0
        self.events.emit(self.t, kind, task, node, **data)


def wait_for(cond, timeout=5.0):
    """Poll ``cond()`` until true or ``timeout`` seconds pass."""
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    return cond()


def test_snapshot_and_text_show_devices_tasks_actions_and_clock():
    """The snapshot has per-device usage, tasks by state, autoscaler actions, virtual time."""
    b = EventBackend()
    b.used = 1
    b.emit(EventKind.TASK_SUBMITTED, 1, name="f")
    b.emit(EventKind.TASK_STARTED, 1, "n0", attempt=1)
    b.emit(EventKind.SCALE_DECISION, add={"a100": 2}, remove=[], reason="demand")
    snap = snapshot(b)
    assert snap["tasks"]["running"] == 1
    assert {"name": "GPU", "used": 1.0, "total": 2.0} in snap["nodes"][0]["devices"]
    text = render_text(snap)
    assert "virtual time 3.000 s" in text and "+2 a100 (demand)" in text
    assert "GPU [#####-----] 1/2" in text and "[A100]" in text
    html = render_html(snap)
    assert "virtual clock" in html["header"] and "running 1" in html["tasks"]


@pytest.mark.timeout(30)
def test_widget_updates_live_throttled_and_stops_when_closed():
    """A burst of events gives few redraws; the last one is current; close stops the thread."""
    b = EventBackend()
    mon = ClusterMonitor(b, interval=0.1)
    try:
        start = mon.redraws
        for i in range(1, 501):
            b.emit(EventKind.TASK_SUBMITTED, i, name="f")
            b.emit(EventKind.TASK_FINISHED, i, "n0")
        assert wait_for(lambda: "finished 500" in mon._tasks.value)
        assert mon.redraws - start < 100  # 1000 events, throttled redraws
        # the view is the final state, not a mid-burst one: nothing left pending, and
        # the clock is the last event's time (1000 events, one virtual second apart)
        assert ">pending 0<" in mon._tasks.value and ">running 0<" in mon._tasks.value
        assert b.t == 1000.0
        assert wait_for(lambda: "1000.000 s" in mon._header.value)
        assert mon.running
    finally:
        mon.close()
    assert not mon.running
    assert len(b.events._subs) == 1  # only the cluster log is left


@pytest.mark.timeout(30)
def test_widget_survives_comm_closed_by_frontend():
    """When the browser drops the comm, updates keep flowing without errors reaching the bus."""
    b = EventBackend()
    mon = ClusterMonitor(b, interval=0.05)
    try:
        comm = mon.widget.comm
        comm._closed = True
        comm.handle_close({"content": {"data": {}}})
        for i in range(1, 11):
            b.emit(EventKind.TASK_SUBMITTED, i, name="f")
        assert wait_for(lambda: "pending 10" in mon._tasks.value)
        assert mon.running and not b.events.errors
    finally:
        mon.close()


@pytest.mark.timeout(30)
def test_widget_thread_stops_when_widget_closed_or_backend_gone():
    """Closing the widget itself, or the backend shutting down, ends the updater thread."""
    b = EventBackend()
    mon = ClusterMonitor(b, interval=0.05)
    mon.widget.close()
    b.emit(EventKind.TASK_SUBMITTED, 1, name="f")
    assert wait_for(lambda: not mon.running)
    b2 = EventBackend()
    mon2 = ClusterMonitor(b2, interval=0.05)
    b2.closed = True
    b2.emit(EventKind.TASK_SUBMITTED, 1, name="f")
    assert wait_for(lambda: not mon2.running)
    mon2.close()


@pytest.mark.timeout(30)
def test_text_fallback_follows_changes():
    """Without widgets the monitor prints a snapshot on each change."""
    import io

    b = EventBackend()
    out = io.StringIO()
    mon = make_monitor(b, text=True)
    assert isinstance(mon, TextMonitor)
    mon.out = out
    mon.interval = 0.05
    threading.Timer(0.1, lambda: b.emit(EventKind.TASK_SUBMITTED, 1, name="f")).start()
    printed = mon.follow(0.6)
    assert printed >= 2 and "pending 1" in out.getvalue()
    assert len(b.events._subs) == 1


def test_falls_back_to_text_without_ipywidgets(monkeypatch):
    """With ipywidgets not importable, make_monitor returns the text monitor."""
    import sys

    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    mon = make_monitor(EventBackend())
    assert isinstance(mon, TextMonitor)
    assert "sim cluster" in mon.render()
