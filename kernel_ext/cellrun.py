"""The task body of a ``%%remote`` cell: what runs on the worker.

The notebook side sends a :class:`CellPayload` (the cell's code plus the values
of the names it reads); :func:`run_cell` executes it in a fresh namespace and
returns a :class:`CellResult` with the names to pull back, the shipped values the
cell changed in place, and the value of the last expression. On a worker (not in
the notebook's own process, as on the sim backend) it also routes ``display()``
and matplotlib figures to the cell (:mod:`kernel_ext.richout`) and flushes
partial lines (``\r`` progress bars) every 0.1 s. Imports nothing from IPython.
"""

from __future__ import annotations

import builtins
import sys
from dataclasses import dataclass, field
from typing import Any

from kernel_ext import inplace, richout, workerns
from kernel_ext.cellexec import (
    REMOTE_TB_ATTR,
    CellExit,
    ModuleRef,
    Packed,
    ReprOnly,
    exec_cell,
    in_notebook_process,
    pack,
    prepare_worker,
    running,
    unpack,
)

__all__ = ["ModuleRef", "Packed", "pack", "unpack", "CellPayload", "CellResult", "ReprOnly",
           "run_cell", "exec_cell", "prepare_worker", "in_notebook_process", "CellExit",
           "REMOTE_TB_ATTR"]


@dataclass(slots=True)
class CellPayload:
    """What a ``%%remote`` cell sends: code, shipped values and what to bring back.

    ``check`` names the shipped values the cell may change in place; ``setups`` are
    the notebook's ``%%remote --all`` cells, run first where this process lacks them.
    """

    source: str
    filename: str
    line_offset: int
    values: dict[str, Packed | ModuleRef]
    pull: tuple[str, ...]
    check: tuple[str, ...] = ()
    setups: tuple[workerns.SetupCell, ...] = ()


@dataclass(slots=True)
class CellResult:
    """What comes back: pulled values, names skipped (unpicklable), the last value,
    the shipped names changed in place (their new values are in ``values``) and those
    whose change could not be checked (name -> why)."""

    values: dict[str, Packed | ModuleRef] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    has_result: bool = False
    result: Packed | ModuleRef | None = None
    mutated: tuple[str, ...] = ()
    unknown: dict[str, str] = field(default_factory=dict)


def _load(payload: CellPayload) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                          **workerns.WORKER_NS}
    for name, item in payload.values.items():
        try:
            ns[name] = unpack(item)
        except Exception as exc:
            raise RuntimeError(f"%%remote: variable {name!r} could not be loaded on the "
                               f"worker: {type(exc).__name__}: {exc}") from None
    return ns


def run_cell(payload: CellPayload) -> CellResult:
    """Execute a cell in a fresh ``__main__``-like namespace; return what it pulls back."""
    on_worker = prepare_worker()
    if payload.setups:
        workerns.apply_setups(payload.setups)
    ns = _load(payload)
    if on_worker:
        ns.setdefault("display", richout.display)
    extra = inplace.share_function_globals(ns, list(payload.values))
    watched = {n: ns[n] for n in payload.check if n in ns and n not in payload.pull
               and inplace.checkable(ns[n])}
    watched.update({n: v for n, v in extra.items() if n not in payload.pull})
    before = {n: inplace.fingerprint(v) for n, v in watched.items()}
    out = CellResult()
    try:
        with running():
            value = exec_cell(payload.source, payload.filename, ns, payload.line_offset)
    except BaseException:
        if on_worker:
            richout.flush_figures()  # what the cell drew before it failed
        raise
    finally:
        if on_worker:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
    for name in payload.pull:
        if name in ns:
            _put(out, name, ns[name])
    mutated = []
    for name, old in before.items():
        if old is None:
            out.unknown[name] = f"{type(watched[name]).__name__} cannot be pickled here"
        elif inplace.fingerprint(watched[name]) != old:
            mutated.append(name)
            _put(out, name, watched[name])
    out.mutated = tuple(n for n in mutated if n in out.values)
    if value is not None:
        out.has_result = True
        try:
            out.result = pack(value)
        except Exception:  # noqa: BLE001 - show what it looked like
            out.result = pack(ReprOnly(repr(value)))
    if on_worker:
        richout.flush_figures(skip=value)
    return out


def _put(out: CellResult, name: str, value: Any) -> None:
    try:
        out.values[name] = pack(value)
    except Exception as exc:  # noqa: BLE001 - report, keep the others
        out.skipped[name] = (f"{type(value).__name__} cannot be pickled: "
                             f"{type(exc).__name__}: {exc}")
