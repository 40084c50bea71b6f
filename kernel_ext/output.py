"""Relaying a remote task's stdout/stderr and displays into the notebook cell that ran it.

The backends call ``backend.on_output(task_id, stream_name, text)`` from a reader
thread (local: the worker's pipe; dask: the ``nbcluster`` event topic, see
:mod:`runtime.backends.dask._remote`). :class:`OutputRouter` replaces that hook
once per backend and hands each task's text to the :class:`StreamRelay` of the
cell that submitted it; output of tasks a cell submits itself (nested tasks) goes
to the same cell (dask says which cell's task is their root; on local the
backend's parent links tell). Other tasks keep the backend's default.

A relay buffers text and a single flusher thread writes it out every
``interval`` seconds, so a flood of prints becomes a few large ``stream``
messages. Marked display lines (:mod:`kernel_ext.richout`) are cut out of stdout
and published as ``display_data``, in order with the text around them.

Since ipykernel 7, output written from a thread no longer lands in "the current
cell": the relay records the cell's parent message when the cell starts and
sets it explicitly (``set_thread_parent``) around every write.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from kernel_ext.richout import END, MARK, decode

__all__ = ["StreamRelay", "LabelRelay", "OutputRouter", "current_parent"]

DEFAULT_INTERVAL = 0.05
#: Text kept per cell before further output is dropped (with a note).
DEFAULT_MAX_CHARS = 10_000_000
#: An unfinished display line longer than this is shown as text.
_MAX_CARRY = 64 << 20


def current_parent(shell: Any) -> Any:
    """The parent message of the cell now running (None outside a kernel)."""
    get = getattr(shell, "get_parent", None)
    if get is not None:
        try:
            return get()
        except Exception:  # noqa: BLE001 - older shells
            return None
    return None


def _plain(text: str) -> str:
    """``text`` with each display line replaced by its ``text/plain`` (for the backend's
    default printing, which knows no displays)."""
    out, rest = [], text
    while MARK in rest:
        head, _, tail = rest.partition(MARK)
        payload, sep, rest = tail.partition(END)
        out.append(head)
        if not sep:
            return "".join(out)
        try:
            out.append(str(decode(payload)["data"].get("text/plain", "")) + "\n")
        except Exception:  # noqa: BLE001 - not a display after all
            out.append(MARK + payload + END)
    out.append(rest)
    return "".join(out)


def _partial_mark(text: str) -> int:
    """The length of the longest end of ``text`` that begins :data:`MARK`."""
    for n in range(min(len(MARK) - 1, len(text)), 0, -1):
        if text.endswith(MARK[:n]):
            return n
    return 0


class StreamRelay:
    """Buffers one cell's remote output and writes it, coalesced and in order, to that cell.

    ``display_pub`` (the shell's display publisher) publishes the displays; without
    one their ``text/plain`` is written to stdout.
    """

    def __init__(self, parent: Any = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                 display_pub: Any = None) -> None:
        self.parent = parent
        self.streams = {"stdout": stdout or sys.stdout, "stderr": stderr or sys.stderr}
        self.display_pub = display_pub
        self.max_chars = max_chars
        self.chars = 0
        self.writes = 0  # how many times text or a display was handed on (coalesced)
        self._segments: list[list[str]] = []  # [kind, text]: stdout, stderr or display
        self._carry = ""  # the start of a display line whose end has not arrived
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._truncated = False

    @property
    def pending(self) -> bool:
        """Whether text waits to be written."""
        return bool(self._segments)

    def _add(self, kind: str, text: str) -> None:
        if not text:
            return
        if kind == "display":
            self._segments.append([kind, text])
            return
        if self.chars >= self.max_chars:
            if not self._truncated:
                self._truncated = True
                self._segments.append(
                    ["stderr", f"\n[%%remote: output truncated after {self.max_chars:,} "
                               f"characters]\n"])
            return
        text = text[: self.max_chars - self.chars]
        self.chars += len(text)
        if self._segments and self._segments[-1][0] == kind:
            self._segments[-1][1] += text
        else:
            self._segments.append([kind, text])

    def write(self, stream: str, text: str) -> None:
        """Queue ``text`` for ``stream`` ("stdout" or "stderr"; others go to stdout)."""
        name = "stderr" if stream == "stderr" else "stdout"
        with self._lock:
            if name == "stderr":
                self._add(name, text)
                return
            text, self._carry = self._carry + text, ""
            while True:
                i = text.find(MARK)
                if i < 0:
                    keep = _partial_mark(text)  # the start of a mark cut by the sender
                    self._add(name, text[:len(text) - keep])
                    self._carry = text[len(text) - keep:]
                    return
                self._add(name, text[:i])
                j = text.find(END, i)
                if j < 0:
                    if len(text) - i > _MAX_CARRY:
                        self._add(name, text[i:])
                    else:
                        self._carry = text[i:]
                    return
                self._add("display", text[i + len(MARK):j])
                text = text[j + len(END):]

    def flush(self) -> None:
        """Write everything queued now (from any thread)."""
        with self._write_lock:
            with self._lock:
                segments, self._segments = self._segments, []
            for kind, text in segments:
                if kind == "display":
                    self._publish(text)
                else:
                    self._emit(self.streams[kind], text)

    def _publish(self, payload: str) -> None:
        try:
            msg = decode(payload)
        except Exception:  # noqa: BLE001 - not ours after all: show it as text
            self._emit(self.streams["stdout"], MARK + payload + END)
            return
        pub = self.display_pub
        if pub is None or not hasattr(pub, "publish"):
            text = msg["data"].get("text/plain")
            if text:
                self._emit(self.streams["stdout"], f"{text}\n")
            return
        self.writes += 1
        for stream in self.streams.values():  # text written before comes first
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110
                pass
        set_tp = getattr(pub, "set_thread_parent", None)
        token: Any = None
        use_parent = set_tp is not None and self.parent is not None
        if use_parent:
            token = set_tp(self.parent)
        try:
            kwargs: dict[str, Any] = {"metadata": msg.get("metadata") or {}}
            if msg.get("transient"):
                kwargs["transient"] = msg["transient"]
            pub.publish(msg["data"], **kwargs)
        except Exception:  # noqa: BLE001 - a closed kernel channel must not kill the relay
            pass
        finally:
            if use_parent:
                pub.reset_thread_parent(token)

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


class LabelRelay:
    """Prefixes every line with a label (``[node] ``) before handing it to a relay."""

    def __init__(self, relay: StreamRelay, label: str) -> None:
        self.relay = relay
        self.label = label
        self._at_start = {"stdout": True, "stderr": True}

    @property
    def pending(self) -> bool:
        """Whether the wrapped relay has text waiting."""
        return self.relay.pending

    def write(self, stream: str, text: str) -> None:
        """Queue ``text`` with the label at the start of each of its lines."""
        name = "stderr" if stream == "stderr" else "stdout"
        out = []
        for line in text.splitlines(keepends=True):
            if self._at_start[name] and not line.startswith(MARK):
                out.append(self.label)
            out.append(line)
            self._at_start[name] = line.endswith("\n")
        self.relay.write(name, "".join(out))

    def flush(self) -> None:
        """Flush the wrapped relay."""
        self.relay.flush()


class OutputRouter:
    """Replaces ``backend.on_output`` and sends each task's output to its cell's relay."""

    def __init__(self, backend: Any, interval: float = DEFAULT_INTERVAL) -> None:
        self.backend = backend
        self.interval = interval
        self._had_hook = hasattr(backend, "on_output")
        self._fallback: Callable[..., None] | None = getattr(backend, "on_output", None)
        self._routes: dict[Any, Any] = {}
        self._nested: dict[Any, Any] = {}  # nested task id -> relay of its cell
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel_ext-output-relay",
                                        daemon=True)
        self.installed = False

    def install(self) -> OutputRouter:
        """Put this router in place of the backend's ``on_output`` hook and start flushing.

        Backends without the hook (dask) read it when it is set.
        """
        try:
            self.backend.on_output = self
            self.installed = True
        except AttributeError:  # a backend with __slots__: no output routing there
            pass
        self._thread.start()
        return self

    def uninstall(self) -> None:
        """Restore the backend's hook, flush what is left and stop the flusher thread."""
        if self.installed and getattr(self.backend, "on_output", None) is self:
            if self._fallback is not None:
                self.backend.on_output = self._fallback
            elif not self._had_hook:
                try:
                    del self.backend.on_output
                except AttributeError:
                    pass
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

    def route(self, task_id: Any, relay: Any) -> None:
        """Send the output of ``task_id`` (and of the tasks it submits) to ``relay``."""
        with self._lock:
            self._routes[task_id] = relay

    def unroute(self, task_id: Any) -> None:
        """Stop routing ``task_id`` and flush its relay."""
        with self._lock:
            relay = self._routes.pop(task_id, None)
            if relay is not None:
                self._nested = {k: v for k, v in self._nested.items() if v is not relay}
        if relay is not None:
            relay.flush()

    def _relay_for(self, task_id: Any, root: Any) -> Any:
        """The relay of ``task_id``'s cell: its own, its root's, or its parent's (nested)."""
        relay = self._routes.get(task_id)
        if relay is None and root is not None:
            relay = self._routes.get(root)
        if relay is None and self._routes:
            relay = self._nested.get(task_id)
            if relay is None:
                relay = self._parent_relay(task_id)
        return relay

    def _parent_relay(self, task_id: Any) -> Any:
        """Find a routed ancestor through the backend's parent links (local backend)."""
        children = getattr(self.backend, "_children", None)
        if not isinstance(children, dict):
            return None
        for tid, relay in list(self._routes.items()):
            todo, seen = [tid], set()
            while todo:
                t = todo.pop()
                if t in seen:
                    continue
                seen.add(t)
                kids = children.get(t) or ()
                if task_id in kids:
                    self._nested[task_id] = relay
                    return relay
                todo.extend(kids)
        return None

    def __call__(self, task_id: Any, stream: str, text: str, root: Any = None) -> None:
        with self._lock:
            relay = self._relay_for(task_id, root)
        if relay is None:
            if MARK in text:
                text = _plain(text)
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
