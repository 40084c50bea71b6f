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
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from kernel_ext.capture import split_last_expression

__all__ = ["ModuleRef", "CellPayload", "CellResult", "ReprOnly", "run_cell", "pickles",
           "REMOTE_TB_ATTR"]

#: Attribute set on an exception raised by a cell: its traceback, cell frames only.
REMOTE_TB_ATTR = "_nbcluster_remote_tb"


@dataclass(frozen=True, slots=True)
class ModuleRef:
    """A module shipped by name: imported again on the worker."""

    name: str


@dataclass(slots=True)
class CellPayload:
    """What a ``%%remote`` cell sends: code, shipped values and what to bring back."""

    source: str
    filename: str
    line_offset: int
    values: dict[str, Any]
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

    values: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    has_result: bool = False
    result: Any = None


def pickles(value: Any) -> str | None:
    """None when ``value`` pickles with cloudpickle, else the error text.

    Large buffers (numpy arrays) are not copied: out-of-band buffers are discarded.
    """
    if value is None or type(value) in (int, float, str, bytes, bool, complex):
        return None
    try:
        import io

        cloudpickle.CloudPickler(io.BytesIO(), protocol=5,
                                 buffer_callback=lambda _b: None).dump(value)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        return f"{type(exc).__name__}: {exc}"
    return None


def _ship_back(value: Any) -> Any:
    if isinstance(value, types.ModuleType):
        return ModuleRef(value.__name__)
    return value


def _trim_traceback(exc: BaseException, filename: str) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_cell(payload: CellPayload) -> CellResult:
    """Execute a cell in a fresh ``__main__``-like namespace; return what it pulls back."""
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, value in payload.values.items():
        ns[name] = importlib.import_module(value.name) if isinstance(value, ModuleRef) else value
    text = "\n" * payload.line_offset + payload.source
    linecache.cache[payload.filename] = (len(text), None, text.splitlines(True),
                                         payload.filename)
    body, last = split_last_expression(payload.source, payload.filename, payload.line_offset)
    out = CellResult()
    try:
        exec(compile(body, payload.filename, "exec"), ns)  # noqa: S102 - that is the point
        if last is not None:
            out.result = eval(compile(last, payload.filename, "eval"), ns)  # noqa: S307
            out.has_result = out.result is not None
    except BaseException as exc:
        try:
            setattr(exc, REMOTE_TB_ATTR, _trim_traceback(exc, payload.filename))
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
        raise
    for name in payload.pull:
        if name not in ns:
            continue
        value = _ship_back(ns[name])
        why = pickles(value)
        if why is None:
            out.values[name] = value
        else:
            out.skipped[name] = f"{type(value).__name__}: {why}"
    if out.has_result and pickles(out.result) is not None:
        out.result = ReprOnly(repr(out.result))
    return out
