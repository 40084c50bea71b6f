"""Opening published trace files as downloaded, and the errors and counters trace readers share.

:func:`open_trace_text` reads a plain file, a gzip file (``.gz``) or one member of a
tar archive (``.tar``, ``.tar.gz``: the form Alibaba and Microsoft publish), chosen by
content, not by name. :class:`TraceFileError` names the file, the row (or JSON path),
the field and the value of what is wrong. :class:`CleaningStats` counts what a reader
kept and why it dropped the rest.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from runtime.resources import Resources
from simulator.workloads.base import SimTask

__all__ = ["TraceFileError", "CleaningStats", "open_trace_text", "headerless_rows",
           "MISSING_TEXT", "parse_number", "GANG_MODES", "check_gangs", "expand_gang",
           "CleanedTrace"]

#: Cell texts read as "no value" (pandas writes NaN as an empty cell).
MISSING_TEXT = frozenset({"", "nan", "none", "null", "na", "n/a"})

#: How readers hand gang jobs to the engine: ``keep`` one task with ``gang`` members,
#: ``split`` one task per member sharing the job id (an approximation: members start
#: independently; for the engine until it places gangs).
GANG_MODES = ("keep", "split")
_READ_ERRORS = (EOFError, OSError, zlib.error, tarfile.TarError, UnicodeDecodeError)


class TraceFileError(ValueError):
    """A trace file that cannot be read as its format: names the file, the row or JSON path,
    the field and the value."""

    def __init__(self, path: str | Path, where: str, problem: str) -> None:
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"trace file {str(path)!r}, {where}: {problem}" if where
                         else f"trace file {str(path)!r}: {problem}")


class CleaningStats(Counter):
    """Counts of what a reader did: ``kept`` tasks and one count per reason a row was dropped."""

    @property
    def skipped(self) -> int:
        """Rows (or jobs) dropped, all reasons together."""
        return sum(v for k, v in self.items() if k.startswith("dropped: "))

    def drop(self, reason: str) -> None:
        """Count one row dropped for ``reason``."""
        self["dropped: " + reason] += 1

    def summary(self) -> str:
        """One line per count, sorted by name."""
        return "\n".join(f"  {k}: {v}" for k, v in sorted(self.items()))


class CleanedTrace:
    """What every trace reader shares: it reads and cleans its files once, on first use
    (``_load``, which sets ``_stats``), and says what it kept and dropped."""

    _stats: CleaningStats

    def _load(self) -> list[Any]:
        raise NotImplementedError

    def load(self) -> CleaningStats:
        """Read and clean the files now (else on first use); return what was kept and
        dropped."""
        self._load()
        return self._stats

    @property
    def stats(self) -> CleaningStats:
        """What reading the files kept and dropped (reads them on first use)."""
        self._load()
        return self._stats

    @property
    def skipped(self) -> int:
        """Records dropped by the cleaning rules."""
        return self.stats.skipped


def _matches(name: str, member: str | None) -> bool:
    base = Path(name).name
    if member is None:
        return not base.startswith(".")
    return base in (member, member + ".csv", member + ".json")


@contextmanager
def open_trace_text(path: str | Path, member: str | None = None) -> Iterator[IO[str]]:
    """Open ``path`` as text: plain, gzip, or a tar archive (compressed or not) holding
    the file ``member`` (its name, ``.csv``/``.json`` optional; None: the first file).
    Errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist or is not a file")
    with p.open("rb") as fh:
        magic = fh.read(2)
    try:
        is_tar = tarfile.is_tarfile(p)
    except _READ_ERRORS:
        is_tar = False
    try:
        if is_tar:
            with tarfile.open(p, "r:*") as tf:  # members are read lazily, in order
                seen = []
                for m in tf:
                    if m.isfile() and _matches(m.name, member):
                        raw = tf.extractfile(m)
                        assert raw is not None  # a regular file member
                        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                            yield text
                        return
                    seen.append(m.name)
            want = f"file named {member!r}" if member else "file"
            raise TraceFileError(p, "", f"the tar archive holds no {want}; it holds: "
                                 f"{', '.join(seen) or 'nothing'}")
        elif magic == b"\x1f\x8b":
            with gzip.open(p, "rt", encoding="utf-8", newline="") as text:
                yield text
        else:
            with p.open(encoding="utf-8", newline="") as text:
                yield text
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise TraceFileError(p, "", f"cannot read the compressed data ({type(e).__name__}: "
                             f"{e}); a damaged or partial download?") from None


def headerless_rows(path: str | Path, header: Sequence[str], table: str,
                    member: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(row number, cells)`` of a CSV without a header row whose columns are
    ``header``; a row with another number of cells (a truncated file, another table)
    or unreadable data raises :class:`TraceFileError`. A first row equal to ``header``
    (a copy saved with a header) is skipped."""
    n = len(header)
    row_no = 0
    with open_trace_text(path, member) as text:
        reader = csv.reader(text)
        try:
            for cells in reader:
                row_no = reader.line_num
                if not cells:
                    continue
                if len(cells) != n:
                    if row_no == 1 and [c.strip() for c in cells] != list(header):
                        hint = (f"is this a {table} file? its columns are "
                                f"{', '.join(header)}")
                    else:
                        hint = "a truncated file?" if len(cells) < n else \
                            f"is this a {table} file?"
                    raise TraceFileError(path, f"row {row_no}",
                                         f"has {len(cells)} fields, {table} rows have {n} "
                                         f"({hint}); got {','.join(cells)[:120]!r}")
                if row_no == 1 and [c.strip() for c in cells] == list(header):
                    continue
                yield row_no, cells
        except _READ_ERRORS as e:
            raise TraceFileError(path, f"row {row_no + 1}",
                                 f"the data ends early or is damaged ({type(e).__name__}: {e}); "
                                 f"a truncated download?") from None
        except csv.Error as e:
            raise TraceFileError(path, f"row {reader.line_num}", f"not valid CSV: {e}") from None


def parse_number(path: str | Path, row: int, field: str, text: str, *,
                 zero_is_missing: bool = False, minimum: float = 0.0) -> float | None:
    """The cell ``text`` as a number (None when missing, or 0 when ``zero_is_missing``);
    text that is not a finite number >= ``minimum`` raises naming the file, row and field."""
    t = text.strip()
    if t.lower() in MISSING_TEXT:
        return None
    try:
        v = float(t)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < minimum:
        raise TraceFileError(path, f"row {row}, field {field!r}",
                             f"must be a number >= {minimum:g} (or empty when missing), "
                             f"got {text!r}")
    if zero_is_missing and v == 0.0:
        return None
    return v


def check_gangs(where: str, gangs: str) -> str:
    """Validate a ``gangs`` argument (one of :data:`GANG_MODES`)."""
    if gangs not in GANG_MODES:
        raise ValueError(f"{where}: gangs must be one of {', '.join(GANG_MODES)}, got {gangs!r}")
    return gangs


def expand_gang(first_id: int, submit: float, duration: float, request: Resources, gang: int,
                mode: str, *, job: int | None = None, **kw: Any) -> list[SimTask]:
    """The task(s) of one gang job: one task with ``gang`` members (``keep``) or ``gang``
    one-member tasks sharing the job id (``split``); ids start at ``first_id``."""
    job = first_id if job is None else job
    if gang == 1 or mode == "keep":
        return [SimTask(first_id, submit, duration, request, gang=gang, job=job, **kw)]
    return [SimTask(first_id + k, submit, duration, request, job=job, **kw)
            for k in range(gang)]
