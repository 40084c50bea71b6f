"""Trace replay from CSV, column mappings for public GPU-cluster traces, and a synthetic trace.

Our CSV columns (header row required; only ``submit_time`` and ``duration`` or
``end_time`` are mandatory):

==============  ===========================================================
column          meaning
==============  ===========================================================
submit_time     arrival: seconds (any origin: shifted so the first is 0) or a timestamp
duration        run time in seconds on a reference device (or give end_time)
start_time      run start, seconds or a timestamp (with end_time: duration = end - start)
end_time        end, seconds or a timestamp (duration = end_time - start_time, or
                end_time - submit_time when the file has no start_time column; a row
                whose start_time cell is empty is skipped, not timed from its submit)
num_cpus        CPU cores (default 1)
num_gpus        GPUs (default 0; fractions allowed)
resources       other resources, ``TPU=1;QPU=1``
gpu_type        accelerator model the job must run on (empty: any)
kind            task kind (keys the speed table; default ``job``)
tenant          user / team / virtual cluster (default ``default``)
priority        integer (default 0)
job_id          jobs with several tasks share it (default: the row)
deadline        SLO seconds after submit (empty: none)
==============  ===========================================================

Time columns (``submit_time``, ``start_time``, ``end_time``) take numbers or
ISO-8601-like timestamps (``2017-10-03 06:33:24``, ``2017-10-03T06:33:24Z``,
``...+02:00``); a timestamp without a zone is read as UTC, so replay never depends
on the machine's time zone. ``None``, ``null``, ``NA`` or an empty cell is missing.

Other CSV layouts are read through a :class:`TraceFormat` that maps our column
names to theirs, with scale factors (``PHILLY`` and ``ALIBABA_PAI`` map CSV
*flattenings* with a header row of the Philly job log and the PAI task table).
The traces as their owners publish them (Philly's JSON job log, PAI's header-less
tables) are read by :class:`simulator.workloads.philly.PhillyTrace` and
:class:`simulator.workloads.alibaba.AlibabaPAI`, with their cleaning rules.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runtime.resources import Resources
from simulator.workloads.base import SimTask, rng_for

__all__ = ["TraceFormat", "NATIVE", "PHILLY", "ALIBABA_PAI", "TraceReplay", "write_synthetic_trace",
           "COLUMNS"]

COLUMNS = ("submit_time", "duration", "start_time", "end_time", "num_cpus", "num_gpus", "resources",
           "gpu_type", "kind", "tenant", "priority", "job_id", "deadline")


@dataclass(frozen=True)
class TraceFormat:
    """How to read a CSV: ``columns`` maps our column name to the file's, ``scale`` multiplies."""

    name: str = "native"
    columns: Mapping[str, str] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    gpu_types: Mapping[str, str] = field(default_factory=dict)  # their model name -> ours

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(COLUMNS))
        if unknown:
            raise ValueError(f"TraceFormat {self.name!r}: columns has unknown key(s) "
                             f"{', '.join(unknown)}; accepted: {', '.join(COLUMNS)}")

    def col(self, ours: str) -> str:
        """The file's column for our column ``ours``."""
        return self.columns.get(ours, ours)


NATIVE = TraceFormat()
#: Philly (msr-fiddle/philly-traces) job log flattened to CSV: one row per job (or per
#: attempt); times are timestamp strings such as ``2017-10-03 06:33:24`` (read as UTC).
#: The duration is ``run_time`` when given, else ``end_time - start_time``. The published
#: JSON job log is read by :class:`simulator.workloads.philly.PhillyTrace`.
PHILLY = TraceFormat("philly", columns={"submit_time": "submitted_time", "duration": "run_time",
                                        "start_time": "start_time", "end_time": "end_time",
                                        "num_gpus": "num_gpus", "tenant": "vc",
                                        "job_id": "jobid", "kind": "user"})
#: Alibaba cluster-trace-gpu-v2020 ``pai_task_table`` saved with a header row (and a
#: ``user`` column joined in): plan_cpu/plan_gpu are in percent. The published header-less
#: tables (0 = missing times, ``inst_num``, the user join) are read by
#: :class:`simulator.workloads.alibaba.AlibabaPAI`.
ALIBABA_PAI = TraceFormat("alibaba_pai", columns={
    "submit_time": "start_time", "end_time": "end_time", "num_cpus": "plan_cpu",
    "num_gpus": "plan_gpu", "gpu_type": "gpu_type", "kind": "task_name", "job_id": "job_name",
    "tenant": "user"}, scale={"num_cpus": 0.01, "num_gpus": 0.01},
    gpu_types={"MISC": "", "T4": "T4", "P100": "P100", "V100": "V100", "V100M32": "V100"})


_MISSING = frozenset({"", "none", "null", "na", "n/a"})
_TIME_COLUMNS = frozenset({"submit_time", "start_time", "end_time"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(raw: str) -> float | None:
    """Seconds since the Unix epoch of an ISO-8601-like timestamp (no zone: UTC), or None."""
    try:
        dt = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH).total_seconds()


def _num(row: Mapping[str, str], fmt: TraceFormat, ours: str, default: float | None,
         line: int) -> float | None:
    raw = row.get(fmt.col(ours))
    if raw is None or raw.strip().lower() in _MISSING:
        return default
    try:
        v = float(raw)
    except ValueError:
        ts = _timestamp(raw) if ours in _TIME_COLUMNS else None
        if ts is None:
            what = "a number of seconds or a timestamp such as '2017-10-03 06:33:24'" \
                if ours in _TIME_COLUMNS else "a number"
            raise ValueError(f"trace line {line}: column {fmt.col(ours)!r} ({ours}) must be "
                             f"{what}, got {raw!r}") from None
        return ts  # timestamps are absolute: no scale
    return v * fmt.scale.get(ours, 1.0)


class TraceReplay:
    """Replays a CSV trace (see the module docstring for columns) as a workload.

    Rows whose duration is missing, negative or NaN, or which need nothing, are
    skipped and counted in ``skipped`` (a real trace has such rows); with
    ``strict=True`` they raise instead. ``time_scale`` compresses time.
    """

    def __init__(self, path: str | Path, fmt: TraceFormat = NATIVE, *, time_scale: float = 1.0,
                 limit: int | None = None, strict: bool = False, name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TraceReplay: path {str(path)!r} is not a file")
        if not (0 < time_scale < math.inf):
            raise ValueError(f"TraceReplay: time_scale must be > 0, got {time_scale!r}")
        self.fmt, self.time_scale, self.limit, self.strict = fmt, time_scale, limit, strict
        self.name = name or f"trace:{self.path.stem}"
        self.skipped = 0

    def _rows(self) -> list[tuple[float, int, dict]]:
        fmt = self.fmt
        out = []
        self.skipped = 0
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or fmt.col("submit_time") not in reader.fieldnames:
                raise ValueError(f"trace {str(self.path)!r}: no {fmt.col('submit_time')!r} "
                                 f"column; found {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                submit = _num(row, fmt, "submit_time", None, line)
                dur = _num(row, fmt, "duration", None, line)
                if dur is None:
                    end = _num(row, fmt, "end_time", None, line)
                    # a start column with an empty cell is a missing start: skip the row
                    # rather than count the queueing before it as run time
                    has_start = fmt.col("start_time") in row
                    begin = _num(row, fmt, "start_time", None if has_start else submit, line)
                    dur = None if end is None or begin is None else end - begin
                if submit is None or dur is None or not (0 <= dur < math.inf) \
                        or not math.isfinite(submit):
                    if self.strict:
                        raise ValueError(f"trace line {line}: needs a finite submit_time and a "
                                         f"duration >= 0, got submit={submit!r} duration={dur!r}")
                    self.skipped += 1
                    continue
                out.append((submit, line, {**row, "__dur": dur}))
                if self.limit is not None and len(out) >= self.limit:
                    break
        out.sort(key=lambda r: (r[0], r[1]))
        return out

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Yield the rows as tasks, in submit order, times shifted to start at 0."""
        fmt = self.fmt
        rows = self._rows()
        t0 = rows[0][0] if rows else 0.0
        jobs: dict[str, int] = {}
        shapes: dict[tuple, Resources] = {}
        for i, (submit, line, row) in enumerate(rows):
            cpus = _num(row, fmt, "num_cpus", 1.0, line) or 0.0
            gpus = _num(row, fmt, "num_gpus", 0.0, line) or 0.0
            extra = (row.get(fmt.col("resources")) or "").strip()
            key = (cpus, gpus, extra)
            req = shapes.get(key)
            if req is None:
                amounts: dict[str, float] = {"CPU": cpus, "GPU": gpus}
                for part in filter(None, extra.split(";")):
                    k, _, v = part.partition("=")
                    amounts[k.strip()] = float(v)
                req = shapes[key] = Resources(amounts, where=f"trace line {line} resources")
            if not req:
                if self.strict:
                    raise ValueError(f"trace line {line}: the task requests nothing")
                self.skipped += 1
                continue
            gpu = (row.get(fmt.col("gpu_type")) or "").strip()
            gpu = fmt.gpu_types.get(gpu, gpu) or None
            job_key = (row.get(fmt.col("job_id")) or "").strip() or f"row{line}"
            dl = _num(row, fmt, "deadline", None, line)
            yield SimTask(i, (submit - t0) / self.time_scale, row["__dur"] / self.time_scale, req,
                          name=(row.get(fmt.col("kind")) or "job").strip() or "job",
                          tenant=(row.get(fmt.col("tenant")) or "default").strip() or "default",
                          priority=int(_num(row, fmt, "priority", 0, line) or 0),
                          accelerator_type=gpu, job=jobs.setdefault(job_key, i),
                          deadline=None if dl is None else dl / self.time_scale)


def write_synthetic_trace(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write a small synthetic trace in our column format (generated, not real data)."""
    rng = rng_for(seed, "synthetic-trace")
    path = Path(path)
    kinds = [("train", 1, 1, "", 0.35), ("train", 4, 4, "A100", 0.1), ("infer", 2, 1, "", 0.25),
             ("prep", 4, 0, "", 0.25), ("tpu_train", 4, 0, "", 0.05)]
    t = 1_600_000_000.0  # an epoch-like origin, shifted away on replay
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["submit_time", "duration", "num_cpus", "num_gpus", "resources", "gpu_type",
                    "kind", "tenant", "priority", "job_id", "deadline"])
        for i in range(n):
            t += rng.expovariate(1 / 20.0)
            r = rng.random() * sum(k[4] for k in kinds)
            pick = kinds[-1]
            for entry in kinds:
                r -= entry[4]
                if r <= 0:
                    pick = entry
                    break
            kind, cpus, gpus, gtype, _ = pick
            dur = round(rng.lognormvariate(math.log(120.0 if kind != "prep" else 30.0), 1.0), 3)
            extra = "TPU=1" if kind == "tpu_train" else ""
            tenant = rng.choice(["vision", "nlp", "quantum-lab", "ads"])
            w.writerow([f"{t:.3f}", dur, cpus, gpus, extra, gtype, kind, tenant,
                        rng.choice([0, 0, 0, 1]), f"job{i}", "" if rng.random() < 0.5 else
                        round(dur * 3, 3)])
    return path

