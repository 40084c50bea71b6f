"""What a ``%%remote`` cell's code needs on either side: values packed to travel
(:func:`pack`, :func:`unpack`) and a cell's code run in a namespace (:func:`exec_cell`).

The worker side also flushes partial lines (``\r`` progress bars) every 0.1 s while
a cell runs (:func:`prepare_worker`, :func:`running`). Imports nothing from IPython.
"""

from __future__ import annotations

import contextlib
import importlib
import linecache
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from kernel_ext import richout
from kernel_ext.capture import split_last_expression

__all__ = ["ModuleRef", "Packed", "pack", "unpack", "ReprOnly", "CellExit", "exec_cell",
           "prepare_worker", "in_notebook_process", "running", "REMOTE_TB_ATTR"]

#: Attribute set on an exception raised by a cell: its traceback, cell frames only.
REMOTE_TB_ATTR = "_nbcluster_remote_tb"


@dataclass(frozen=True, slots=True)
class ModuleRef:
    """A module shipped by name: imported again on the worker."""

    name: str


#: Buffers at least this large travel out of band (the backend may use shared memory).
OUT_OF_BAND_BYTES = 1 << 20


@dataclass(slots=True)
class Packed:
    """One value cloudpickled by us, so ``__main__`` functions and classes always travel
    by value whatever pickler the backend uses; big buffers stay out of band."""

    data: bytes
    buffers: list[Any] = field(default_factory=list)


def pack(value: Any) -> Packed | ModuleRef:
    """Cloudpickle ``value`` (a module becomes a :class:`ModuleRef`); raises when it cannot."""
    if isinstance(value, types.ModuleType):
        spec = getattr(value, "__spec__", None)
        if spec is not None and value.__name__ != "__main__":
            return ModuleRef(value.__name__)
    raw: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=raw.append)
    buffers: list[Any] = []
    for b in raw:
        try:
            view = b.raw()
        except BufferError:  # not contiguous: copy it
            buffers.append(bytes(memoryview(b)))
            continue
        buffers.append(b if view.nbytes >= OUT_OF_BAND_BYTES else bytes(view))
    return Packed(data, buffers)


def unpack(item: Packed | ModuleRef) -> Any:
    """Inverse of :func:`pack` (a :class:`ModuleRef` is imported here).

    Buffers that arrive read-only (bytes, shared memory) are copied, so a shipped
    numpy array is writable, as it was in the notebook.
    """
    if isinstance(item, ModuleRef):
        return importlib.import_module(item.name)
    buffers = [bytearray(b) if memoryview(b).readonly else b for b in item.buffers]
    return pickle.loads(item.data, buffers=buffers)


class ReprOnly:
    """Stands in for a value that could not travel back: shows the remote ``repr``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class CellExit(Exception):
    """The cell called ``sys.exit()`` (or raised ``SystemExit``) on the worker."""

    def __init__(self, code: Any = None) -> None:
        self.code = code
        super().__init__(f"the cell called sys.exit({'' if code is None else repr(code)})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code,))


def _trim_traceback(exc: BaseException, filename: str) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def in_notebook_process() -> bool:
    """Whether this is the notebook's own process (an IPython shell runs here: sim)."""
    mod = sys.modules.get("IPython.core.interactiveshell")
    return mod is not None and bool(mod.InteractiveShell.initialized())


#: Seconds between flushes of partial lines while a cell runs on a worker.
FLUSH_S = 0.1
_running = 0
_flusher: list[threading.Thread] = []
_flock = threading.Lock()


def _flush_loop() -> None:
    tick = threading.Event()
    while True:
        tick.wait(FLUSH_S)
        if _running:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001, S110 - a closed stream
                    pass


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Mark a cell as running here while the block runs (partial lines get flushed)."""
    global _running
    with _flock:
        _running += 1
    try:
        yield
    finally:
        with _flock:
            _running -= 1


def prepare_worker() -> bool:
    """Set up rich output and the partial-line flusher on a worker; False in the notebook."""
    if in_notebook_process():
        return False
    richout.install()
    with _flock:
        if not _flusher:
            t = threading.Thread(target=_flush_loop, name="kernel_ext-flush", daemon=True)
            _flusher.append(t)
            t.start()
    return True


def exec_cell(source: str, filename: str, ns: dict[str, Any], line_offset: int = 1) -> Any:
    """Run a cell's code in ``ns``; returns the last expression's value (None without one).

    ``sys.exit()`` becomes :class:`CellExit`; an error carries the cell's frames only.
    """
    text = "\n" * line_offset + source
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    body, last = split_last_expression(source, filename, line_offset)
    value: Any = None
    try:
        try:
            exec(compile(body, filename, "exec"), ns)  # noqa: S102 - that is the point
            if last is not None:
                value = eval(compile(last, filename, "eval"), ns)  # noqa: S307
        except SystemExit as exc:
            cell_exit = CellExit(exc.code)
            cell_exit.__traceback__ = exc.__traceback__
            raise cell_exit from None
    except BaseException as exc:
        try:
            setattr(exc, REMOTE_TB_ATTR, _trim_traceback(exc, filename))
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
        raise
    return value
