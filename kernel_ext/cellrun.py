"""The task body of a ``%%remote`` cell: what runs on the worker.

The notebook side sends a :class:`CellPayload` (the cell's code plus the values
of the names it reads); :func:`run_cell` executes it in a fresh namespace and
returns a :class:`CellResult` with the names to pull back and the value of the
last expression. Imports nothing from IPython, so workers load it cheaply.
"""

from __future__ import annotations

import builtins
import importlib
import linecache
import pickle
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from kernel_ext.capture import split_last_expression

__all__ = ["ModuleRef", "Packed", "pack", "unpack", "CellPayload", "CellResult", "ReprOnly",
           "run_cell", "REMOTE_TB_ATTR"]

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
    """Inverse of :func:`pack` (a :class:`ModuleRef` is imported here)."""
    if isinstance(item, ModuleRef):
        return importlib.import_module(item.name)
    return pickle.loads(item.data, buffers=item.buffers)


@dataclass(slots=True)
class CellPayload:
    """What a ``%%remote`` cell sends: code, shipped values and what to bring back."""

    source: str
    filename: str
    line_offset: int
    values: dict[str, Packed | ModuleRef]
    pull: tuple[str, ...]


class ReprOnly:
    """Stands in for a value that could not travel back: shows the remote ``repr``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(slots=True)
class CellResult:
    """What comes back: pulled values, names skipped (unpicklable), the last value."""

    values: dict[str, Packed | ModuleRef] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    has_result: bool = False
    result: Packed | ModuleRef | None = None


def _trim_traceback(exc: BaseException, filename: str) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_cell(payload: CellPayload) -> CellResult:
    """Execute a cell in a fresh ``__main__``-like namespace; return what it pulls back."""
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, item in payload.values.items():
        try:
            ns[name] = unpack(item)
        except Exception as exc:
            raise RuntimeError(f"%%remote: variable {name!r} could not be loaded on the "
                               f"worker: {type(exc).__name__}: {exc}") from None
    text = "\n" * payload.line_offset + payload.source
    linecache.cache[payload.filename] = (len(text), None, text.splitlines(True),
                                         payload.filename)
    body, last = split_last_expression(payload.source, payload.filename, payload.line_offset)
    out = CellResult()
    value: Any = None
    try:
        exec(compile(body, payload.filename, "exec"), ns)  # noqa: S102 - that is the point
        if last is not None:
            value = eval(compile(last, payload.filename, "eval"), ns)  # noqa: S307
    except BaseException as exc:
        try:
            setattr(exc, REMOTE_TB_ATTR, _trim_traceback(exc, payload.filename))
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
        raise
    for name in payload.pull:
        if name not in ns:
            continue
        try:
            out.values[name] = pack(ns[name])
        except Exception as exc:  # noqa: BLE001 - report, keep the others
            out.skipped[name] = (f"{type(ns[name]).__name__} cannot be pickled: "
                                 f"{type(exc).__name__}: {exc}")
    if value is not None:
        out.has_result = True
        try:
            out.result = pack(value)
        except Exception:  # noqa: BLE001 - show what it looked like
            out.result = pack(ReprOnly(repr(value)))
    return out
