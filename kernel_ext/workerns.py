"""Setup cells (``%%remote --all``): run once in every worker process, names kept there.

A setup cell runs now on every worker the notebook can reach, and is replayed
in any other worker process (one that was busy, added later by ``%cluster
scale``, or restarted after a crash) before the first ``%%remote`` cell that
lands there: every cell carries the notebook's setup cells, and each process
remembers which it has run (:data:`DONE`). The names a setup cell assigns stay
in that process (:data:`WORKER_NS`) and every later cell there sees them.
Imports nothing from IPython (this runs on workers).
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kernel_ext.capture import analyze_cell
from kernel_ext.cellexec import ReprOnly, exec_cell, pack, prepare_worker, unpack

__all__ = ["SetupCell", "SetupRun", "WORKER_NS", "DONE", "apply_setups", "run_setup",
           "SetupError"]

#: Names assigned by setup cells in this process (seen by every later cell here).
WORKER_NS: dict[str, Any] = {}
#: Keys of the setup cells this process has run.
DONE: set[str] = set()
_lock = threading.RLock()


@dataclass(frozen=True, slots=True)
class SetupCell:
    """One ``%%remote --all`` cell: its code and the values it reads."""

    key: str
    number: Any
    source: str
    filename: str
    values: dict[str, Any] = field(default_factory=dict)  # name -> Packed | ModuleRef


@dataclass(frozen=True, slots=True)
class SetupRun:
    """One copy of a setup cell sent to a worker now (``%%remote --all``).

    ``barrier`` (a folder on this machine) and ``copies`` make the copies wait for
    each other, up to ``wait_s`` seconds, so that each lands in its own process.
    """

    cell: SetupCell
    earlier: tuple[SetupCell, ...] = ()
    barrier: str | None = None
    copies: int = 1
    wait_s: float = 10.0


class SetupError(RuntimeError):
    """A setup cell failed when it was replayed in a worker before another cell."""


def _exec(cell: SetupCell) -> Any:
    """Run ``cell`` with :data:`WORKER_NS`; keep the names it assigns; return its value."""
    ns = {"__name__": "__main__", "__builtins__": builtins, **WORKER_NS}
    for name, item in cell.values.items():
        ns[name] = unpack(item)
    value = exec_cell(cell.source, cell.filename, ns)
    for name in analyze_cell(cell.source, cell.filename).writes:
        if name in ns:
            WORKER_NS[name] = ns[name]
    return value


def apply_setups(setups: tuple[SetupCell, ...], announce: bool = True) -> None:
    """Run the setup cells this process has not run yet, in order."""
    for cell in setups:
        if cell.key in DONE:
            continue
        with _lock:
            if cell.key in DONE:
                continue
            if announce:
                print(f"[%%remote --all [{cell.number}]: setting up this worker "
                      f"(pid {os.getpid()}) first]", flush=True)
            try:
                _exec(cell)
            except BaseException as exc:
                DONE.add(cell.key)  # do not fail every later cell the same way
                raise SetupError(f"setup cell [{cell.number}] (%%remote --all) failed in "
                                 f"this worker (pid {os.getpid()}): {type(exc).__name__}: "
                                 f"{exc}") from exc
            DONE.add(cell.key)


def _barrier(run: SetupRun) -> None:
    """Wait (up to ``wait_s``) until every copy has started, each in its own process."""
    if run.barrier is None or run.copies <= 1:
        return
    try:
        with open(os.path.join(run.barrier, str(os.getpid())), "w") as fh:
            fh.write("here")
    except OSError:
        return
    deadline = time.monotonic() + run.wait_s
    while time.monotonic() < deadline:
        try:
            if len(os.listdir(run.barrier)) >= run.copies:
                return
        except OSError:
            return
        time.sleep(0.02)


def run_setup(run: SetupRun) -> tuple[int, bool, Any]:
    """Run a setup copy here: ``(pid, ran, last value)``; ``ran`` is False when this
    process had run the cell already (two copies landed in one process)."""
    prepare_worker()
    _barrier(run)
    apply_setups(run.earlier, announce=False)
    with _lock:
        if run.cell.key in DONE:
            return os.getpid(), False, None
        DONE.add(run.cell.key)
        value = _exec(run.cell)
    try:
        packed = pack(value) if value is not None else None
    except Exception:  # noqa: BLE001 - show its repr instead
        packed = pack(ReprOnly(repr(value)))
    return os.getpid(), True, packed
