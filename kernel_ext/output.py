"""Relaying a remote task's stdout/stderr into the notebook cell that ran it.

The local backend calls ``backend.on_output(task_id, stream_name, text)`` from a
reader thread. :class:`OutputRouter` replaces that hook once per backend and
hands each task's text to the :class:`StreamRelay` of the cell that submitted it
(other tasks keep the backend's default). A relay buffers text and a single
flusher thread writes it out every ``interval`` seconds, so a flood of prints
becomes a few large ``stream`` messages, not one per line.

Since ipykernel 7, output written from a thread no longer lands in "the current
cell": the relay records the cell's parent message when the cell starts and
sets it explicitly (``set_thread_parent``) around every write.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["StreamRelay", "OutputRouter", "current_parent"]

DEFAULT_INTERVAL = 0.05
#: Text kept per cell before further output is dropped (with a note).
DEFAULT_MAX_CHARS = 10_000_000


def current_parent(shell: Any) -> Any:
    """The parent message of the cell now running (None outside a kernel)."""
    get = getattr(shell, "get_parent", None)
    if get is not None:
        try:
            return get()
        except Exception:  # noqa: BLE001 - older shells
            return None
    return None


class StreamRelay:
    """Buffers one cell's remote output and writes it, coalesced, to that cell."""

    def __init__(self, parent: Any = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.parent = parent
        self.streams = {"stdout": stdout or sys.stdout, "stderr": stderr or sys.stderr}
        self.max_chars = max_chars
        self.chars = 0
        self.writes = 0  # how many times text was handed on (after coalescing)
        self._buf: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._truncated = False

    @property
    def pending(self) -> bool:
        """Whether text waits to be written."""
        return bool(self._buf["stdout"] or self._buf["stderr"])

    def write(self, stream: str, text: str) -> None:
        """Queue ``text`` for ``stream`` ("stdout" or "stderr"; others go to stdout)."""
        name = stream if stream in self._buf else "stdout"
        with self._lock:
            if self.chars >= self.max_chars:
                if not self._truncated:
                    self._truncated = True
                    self._buf["stderr"].append(
                        f"\n[%%remote: output truncated after {self.max_chars:,} characters]\n")
                return
            self.chars += len(text)
            self._buf[name].append(text)

    def flush(self) -> None:
        """Write everything queued now (from any thread)."""
        with self._write_lock:
            for name in ("stdout", "stderr"):
                with self._lock:
                    chunks, self._buf[name] = self._buf[name], []
                if not chunks:
                    continue
                self._emit(self.streams[name], "".join(chunks))

    def _emit(self, target: Any, text: str) -> None:
        self.writes += 1
        set_tp = getattr(target, "set_thread_parent", None)
        token: Any = None
        use_parent = set_tp is not None and self.parent is not None
        if use_parent:
            token = set_tp(self.parent)
        try:
            target.write(text)
            if set_tp is None:  # a plain terminal stream; OutStream flushes itself
                target.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not kill the relay
            pass
        finally:
            if use_parent:
                target.reset_thread_parent(token)


class OutputRouter:
    """Replaces ``backend.on_output`` and sends each task's output to its cell's relay."""

    def __init__(self, backend: Any, interval: float = DEFAULT_INTERVAL) -> None:
        self.backend = backend
        self.interval = interval
        self._fallback: Callable[[int, str, str], None] | None = getattr(backend, "on_output",
                                                                         None)
        self._routes: dict[Any, StreamRelay] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel_ext-output-relay",
                                        daemon=True)
        self.installed = False

    def install(self) -> OutputRouter:
        """Put this router in place of the backend's ``on_output`` hook and start flushing."""
        if hasattr(self.backend, "on_output"):
            self.backend.on_output = self
            self.installed = True
        self._thread.start()
        return self

    def uninstall(self) -> None:
        """Restore the backend's hook, flush what is left and stop the flusher thread."""
        if self.installed and getattr(self.backend, "on_output", None) is self:
            if self._fallback is not None:
                self.backend.on_output = self._fallback
        self.installed = False
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for relay in list(self._routes.values()):
            relay.flush()

    @property
    def lock(self) -> threading.RLock:
        """Hold it around submit + :meth:`route`, so early output cannot miss its cell."""
        return self._lock

    def route(self, task_id: Any, relay: StreamRelay) -> None:
        """Send the output of ``task_id`` to ``relay`` from now on."""
        with self._lock:
            self._routes[task_id] = relay

    def unroute(self, task_id: Any) -> None:
        """Stop routing ``task_id`` and flush its relay."""
        with self._lock:
            relay = self._routes.pop(task_id, None)
        if relay is not None:
            relay.flush()

    def __call__(self, task_id: Any, stream: str, text: str) -> None:
        with self._lock:
            relay = self._routes.get(task_id)
        if relay is None:
            if self._fallback is not None:
                self._fallback(task_id, stream, text)
            else:
                (sys.stderr if stream == "stderr" else sys.stdout).write(text)
            return
        relay.write(stream, text)
        self._dirty.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.wait(self.interval):  # let more text gather: coalescing
                break
            self._dirty.clear()
            with self._lock:
                relays = list(self._routes.values())
            for relay in relays:
                if relay.pending:
                    relay.flush()
