"""The output relay: routing by task, coalescing, explicit parent headers."""

from __future__ import annotations

import io
import threading

import pytest

from kernel_ext.output import LabelRelay, OutputRouter, StreamRelay


class ParentStream(io.StringIO):
    """Records each write with the thread parent set at that moment (like ipykernel's OutStream)."""

    def __init__(self) -> None:
        super().__init__()
        self.parent = None
        self.writes: list[tuple[object, str]] = []

    def set_thread_parent(self, parent):
        """Set the parent; returns the old one as the reset token."""
        old, self.parent = self.parent, parent
        return old

    def reset_thread_parent(self, token):
        """Restore the parent saved in ``token``."""
        self.parent = token

    def write(self, text):
        """Record the write with the parent in force."""
        self.writes.append((self.parent, text))
        return super().write(text)


class HookBackend:
    """Just the on_output hook of a backend."""

    def __init__(self) -> None:
        self.default: list[tuple[int, str, str]] = []
        self.on_output = lambda t, s, x: self.default.append((t, s, x))


def wait_for(cond, timeout=5.0):
    """Poll ``cond()`` until true or ``timeout`` seconds pass."""
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    return cond()


@pytest.mark.timeout(20)
def test_router_routes_by_task_and_falls_back():
    """Output of a routed task reaches its relay; other tasks keep the backend's hook."""
    backend = HookBackend()
    out, err = ParentStream(), ParentStream()
    router = OutputRouter(backend).install()
    try:
        relay = StreamRelay({"header": {"msg_id": "cell-1"}}, out, err)
        router.route(7, relay)
        writer = threading.Thread(target=lambda: (backend.on_output(7, "stdout", "hi\n"),
                                                  backend.on_output(7, "stderr", "oops\n"),
                                                  backend.on_output(8, "stdout", "other\n")))
        writer.start()
        writer.join()
        assert wait_for(lambda: out.getvalue() == "hi\n" and err.getvalue() == "oops\n")
        assert backend.default == [(8, "stdout", "other\n")]
        # written from the relay thread, with the cell's parent set explicitly
        assert out.writes[0][0] == {"header": {"msg_id": "cell-1"}}
        assert wait_for(lambda: out.parent is None)  # reset after the write
    finally:
        router.uninstall()
    assert callable(backend.on_output) and not isinstance(backend.on_output, OutputRouter)


@pytest.mark.timeout(20)
def test_flood_is_coalesced():
    """Ten thousand small writes become a handful of writes to the stream."""
    backend = HookBackend()
    out = ParentStream()
    router = OutputRouter(backend, interval=0.05).install()
    try:
        relay = StreamRelay(None, out, ParentStream())
        router.route(1, relay)
        for i in range(10_000):
            backend.on_output(1, "stdout", f"line {i}\n")
        router.unroute(1)
    finally:
        router.uninstall()
    text = out.getvalue()
    assert text.count("\n") == 10_000 and text.endswith("line 9999\n")
    assert len(out.writes) < 50


def test_relay_truncates_runaway_output():
    """Past max_chars, output is dropped with one note on stderr."""
    out, err = io.StringIO(), io.StringIO()
    relay = StreamRelay(None, out, err, max_chars=100)
    for _ in range(50):
        relay.write("stdout", "0123456789")
    relay.flush()
    assert len(out.getvalue()) == 100
    assert err.getvalue().count("output truncated") == 1


class Publisher:
    """Records display_data publishes with the thread parent in force (like ipykernel's)."""

    def __init__(self) -> None:
        self.parent = None
        self.published: list[tuple[object, dict]] = []

    def set_thread_parent(self, parent):
        """Set the parent; returns the old one as the reset token."""
        old, self.parent = self.parent, parent
        return old

    def reset_thread_parent(self, token):
        """Restore the parent saved in ``token``."""
        self.parent = token

    def publish(self, data, metadata=None, transient=None):
        """Record one display."""
        self.published.append((self.parent, data))


def test_relay_cuts_displays_out_of_stdout_in_order():
    """A marked display line becomes a display publish between the text around it, also
    when it arrives in pieces; the cell's parent is set for it."""
    from kernel_ext.richout import encode

    out, pub = ParentStream(), Publisher()
    order: list[str] = []
    out.write = lambda text: (order.append(f"text:{text}"), io.StringIO.write(out, text))[1]
    pub.publish = lambda data, metadata=None, transient=None: (
        order.append(f"display:{sorted(data)}"), pub.published.append((pub.parent, data)))
    relay = StreamRelay({"header": {"msg_id": "cell-2"}}, out, ParentStream(), display_pub=pub)
    line = encode({"text/html": "<b>x</b>", "text/plain": "x", "image/png": b"\x89PNG"})
    relay.write("stdout", "before\n" + line[:10])
    relay.write("stdout", line[10:] + "after\n")
    relay.flush()
    assert order == ["text:before\n", "display:['image/png', 'text/html', 'text/plain']",
                     "text:after\n"]
    parent, data = pub.published[0]
    assert parent == {"header": {"msg_id": "cell-2"}} and data["text/html"] == "<b>x</b>"
    assert data["image/png"] == "iVBORw=="  # bytes travel base64-encoded, as Jupyter wants


def test_relay_without_a_publisher_writes_the_plain_text():
    """In a terminal a display shows its text/plain."""
    from kernel_ext.richout import encode

    out = io.StringIO()
    relay = StreamRelay(None, out, io.StringIO())
    relay.write("stdout", encode({"text/plain": "<Figure>", "image/png": b"x"}))
    relay.flush()
    assert out.getvalue() == "<Figure>\n"


def test_label_relay_prefixes_each_line():
    """Every line gets the node label, also a line continued over several writes."""
    out = io.StringIO()
    relay = StreamRelay(None, out, io.StringIO())
    labelled = LabelRelay(relay, "[w1] ")
    labelled.write("stdout", "a\nb")
    labelled.write("stdout", "c\nd\n")
    relay.flush()
    assert out.getvalue() == "[w1] a\n[w1] bc\n[w1] d\n"


@pytest.mark.timeout(20)
def test_router_sends_nested_output_to_the_root_cell():
    """Output of a task that names its root (dask) or whose parent chain reaches a routed
    task (the local backend's parent links) goes to that cell."""
    backend = HookBackend()
    backend._children = {7: [70], 70: [700]}
    out = ParentStream()
    router = OutputRouter(backend).install()
    try:
        router.route(7, StreamRelay(None, out, ParentStream()))
        backend.on_output(99, "stdout", "via root\n", root=7)
        backend.on_output(700, "stdout", "grandchild\n")
        backend.on_output(5, "stdout", "unrelated\n")
        router.unroute(7)
    finally:
        router.uninstall()
    assert out.getvalue() == "via root\ngrandchild\n"
    assert backend.default == [(5, "stdout", "unrelated\n")]


def test_router_installs_on_a_backend_without_the_hook():
    """A backend with no on_output (dask) gets one while routed, and loses it after."""
    class Bare:
        pass

    b = Bare()
    router = OutputRouter(b).install()
    assert b.on_output is router
    router.uninstall()
    assert not hasattr(b, "on_output")


def test_unrouted_display_falls_back_to_plain_text():
    """A display from a task no cell routes reaches the backend's hook as its text/plain."""
    from kernel_ext.richout import encode

    backend = HookBackend()
    router = OutputRouter(backend).install()
    try:
        backend.on_output(3, "stdout", "a\n" + encode({"text/plain": "<HTML>"}) + "b\n")
    finally:
        router.uninstall()
    assert backend.default == [(3, "stdout", "a\n<HTML>\nb\n")]
