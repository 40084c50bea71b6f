"""The output relay: routing by task, coalescing, explicit parent headers."""

from __future__ import annotations

import io
import threading

import pytest

from kernel_ext.output import OutputRouter, StreamRelay


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
