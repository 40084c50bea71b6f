"""Error hierarchy and the event stream."""

import pickle

import runtime
from runtime.errors import make_task_error
from runtime.events import ClusterLog, Event, EventBus, EventKind


class Custom(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


def test_task_error_is_both_types_and_survives_pickle():
    """get()'s error is a TaskError and the cause's type, before and after pickling."""
    err = make_task_error(KeyError("k"), "Traceback: here", task_name="f", task_id=7, node="n1")
    assert isinstance(err, KeyError) and isinstance(err, runtime.TaskError)
    assert "Traceback: here" in str(err) and "'f'" in str(err) and "n1" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, KeyError) and again.task_id == 7


def test_task_error_with_custom_constructor():
    """Exceptions whose __init__ takes several arguments still wrap."""
    err = make_task_error(Custom(1, 2), "tb")
    assert isinstance(err, Custom) and err.args == (1, 2)


def test_timeout_error_is_a_builtin_timeout():
    """GetTimeoutError can be caught as the built-in TimeoutError."""
    assert issubclass(runtime.GetTimeoutError, TimeoutError)


def test_bus_drops_a_broken_subscriber_and_keeps_others():
    """A subscriber that raises is removed; the others still get every event."""
    bus = EventBus()
    seen = []

    def broken(ev):
        raise RuntimeError("boom")

    bus.subscribe(broken)
    unsub = bus.subscribe(seen.append)
    bus.emit(1.0, EventKind.TASK_SUBMITTED, 1, name="f")
    bus.emit(2.0, EventKind.TASK_STARTED, 1, "n1")
    assert [e.kind for e in seen] == ["task_submitted", "task_started"]
    assert len(bus.errors) == 1
    unsub()
    bus.emit(3.0, EventKind.TASK_FINISHED, 1)
    assert len(seen) == 2


def test_cluster_log_folds_task_lifecycle():
    """The log tracks each task's state, node and attempts from events."""
    log = ClusterLog()
    for ev in [
        Event(0.0, "node_added", node="n1", data={"node_type": "cpu"}),
        Event(0.0, "task_submitted", 1, data={"name": "f", "resources": {"CPU": 1}}),
        Event(0.5, "task_started", 1, "n1", {"attempt": 1}),
        Event(0.7, "task_retried", 1, data={"attempt": 2}),
        Event(0.8, "task_started", 1, "n1", {"attempt": 2}),
        Event(1.0, "task_finished", 1, "n1"),
        Event(1.0, "task_submitted", 2, data={"name": "g"}),
    ]:
        log(ev)
    rec = log.tasks[1]
    assert (rec.state, rec.node, rec.attempts, rec.finished) == ("finished", "n1", 2, 1.0)
    assert log.counts() == {"finished": 1, "pending": 1}
    assert "n1" in log.nodes
