"""Replay Alibaba PAI's GPU trace (alibaba/clusterdata, ``cluster-trace-gpu-v2020``) as published.

The tables are CSV files **without a header row** (the column names are in the
repository's ``data/*.header`` files, copied below), downloaded as ``<table>.tar.gz``
(read as is, or extracted, or gzip-compressed). Used here:

* ``pai_task_table``: job_name, task_name, inst_num, status, start_time, end_time,
  plan_cpu, plan_mem, plan_gpu, gpu_type (one row per task; the replayed unit);
* ``pai_job_table``: job_name, inst_id, user, status, start_time, end_time (optional:
  joined on ``job_name`` for the user, the job's status and its submit time);
* ``pai_group_tag_table``: inst_id, user, gpu_type_spec, group, workload (optional:
  joined on ``inst_id`` for the GPU model a job asked for);
* ``pai_machine_spec``: machine, gpu_type, cap_cpu, cap_mem, cap_gpu
  (:func:`machine_spec_cluster` builds the trace's cluster from it).

Cleaning rules (the trace's README and ``analysis/utils.py`` are the source):

* a time of 0 is the trace's marker for missing (``utils.py`` turns it into NaN): a task
  whose ``start_time`` or ``end_time`` is 0 or empty (never started, still running, not
  recorded) is dropped, never replayed as if it ran from time 0;
* run time = ``end_time - start_time`` of the task; the submit time is the job's
  ``start_time`` ("job submission time") when ``pai_job_table`` is given and non-zero,
  else the task's launch time;
* ``plan_cpu`` / ``plan_gpu`` are percent per instance (600 = 6 CPUs, 50 = half a GPU),
  inherited by each of the task's ``inst_num`` instances, so a task needs
  ``inst_num`` x plan: it becomes a gang job of ``inst_num`` members (``gangs='keep'``)
  or ``inst_num`` tasks of one instance each sharing the job id (``gangs='split'``);
* the tenant is the job's ``user`` from ``pai_job_table`` (the task table has none);
  without the job table every task is tenant ``default``;
* every status is replayed by default for its recorded run time (a ``Failed`` task
  held its resources that long; the failure itself is not modelled); ``statuses=``
  keeps only tasks whose job (from ``pai_job_table``, else the task itself) ended so;
* ``gpu_type`` is the GPU model the task ran on (``MISC``: older K40m/K80/M60 GPUs). With
  ``normalize`` the run time is taken as measured there: duration = run time x that
  model's speed, so the task lasts its recorded time on that model and scales on others.
  ``gpu='assigned'`` pins the task to that model, ``'spec'`` to the model the job
  asked for (``gpu_type_spec``; empty = any), ``'none'`` to no model.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from runtime.resources import Resources
from simulator.cluster import ClusterConfig
from simulator.devices import DEVICES, DeviceType
from simulator.nodes import NodeSpec
from simulator.workloads.base import SimTask
from simulator.workloads.tracefile import (
    MISSING_TEXT,
    CleanedTrace,
    CleaningStats,
    TraceFileError,
    check_gangs,
    expand_gang,
    headerless_rows,
    parse_number,
)

__all__ = ["AlibabaPAI", "machine_spec_cluster", "TASK_COLUMNS", "JOB_COLUMNS",
           "GROUP_TAG_COLUMNS", "MACHINE_SPEC_COLUMNS", "PAI_STATUSES", "GPU_PIN_MODES"]

#: Column names of the published tables (``cluster-trace-gpu-v2020/data/*.header``).
TASK_COLUMNS = ("job_name", "task_name", "inst_num", "status", "start_time", "end_time",
                "plan_cpu", "plan_mem", "plan_gpu", "gpu_type")
JOB_COLUMNS = ("job_name", "inst_id", "user", "status", "start_time", "end_time")
GROUP_TAG_COLUMNS = ("inst_id", "user", "gpu_type_spec", "group", "workload")
MACHINE_SPEC_COLUMNS = ("machine", "gpu_type", "cap_cpu", "cap_mem", "cap_gpu")
#: Job statuses the README lists ("only 'Terminated' tasks are successful").
PAI_STATUSES = ("Terminated", "Failed", "Running", "Waiting")
#: Which GPU model a task is pinned to (see the module docstring).
GPU_PIN_MODES = ("assigned", "spec", "none")
_GIB = float(2 ** 30)


def _text(cell: str) -> str:
    t = cell.strip()
    return "" if t.lower() in MISSING_TEXT else t


def _check_path(where: str, arg: str, path: str | Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{where}: {arg} {str(path)!r} is not a file")
    return p


class AlibabaPAI(CleanedTrace):
    """PAI's ``pai_task_table`` (with optional job and group-tag tables) as a workload.

    Cleaning rules and options: see the module docstring. ``memory`` adds ``plan_mem``
    (GiB) to requests as bytes. ``devices`` maps model names to speeds for ``normalize``
    (default :data:`~simulator.devices.DEVICES`). ``stats`` counts what was kept and
    dropped and why. The seed is unused (a trace is fixed).
    """

    def __init__(self, task_table: str | Path, *, job_table: str | Path | None = None,
                 group_tag_table: str | Path | None = None, gangs: str = "keep",
                 statuses: Collection[str] | None = None, gpu: str = "assigned",
                 kind: str = "train", normalize: bool = True, memory: bool = False,
                 devices: Mapping[str, DeviceType] | None = None, time_scale: float = 1.0,
                 limit: int | None = None, name: str | None = None) -> None:
        where = "AlibabaPAI"
        self.task_table = _check_path(where, "task_table", task_table)
        self.job_table = _check_path(where, "job_table", job_table)
        self.group_tag_table = _check_path(where, "group_tag_table", group_tag_table)
        self.gangs = check_gangs(where, gangs)
        if statuses is not None:
            statuses = frozenset(statuses)
            bad = sorted(statuses - set(PAI_STATUSES))
            if bad or not statuses:
                raise ValueError(f"{where}: statuses must be a non-empty subset of "
                                 f"{', '.join(PAI_STATUSES)}, got {sorted(statuses)!r}")
        self.statuses = statuses
        if gpu not in GPU_PIN_MODES:
            raise ValueError(f"{where}: gpu must be one of {', '.join(GPU_PIN_MODES)}, "
                             f"got {gpu!r}")
        if gpu == "spec" and (self.job_table is None or self.group_tag_table is None):
            raise ValueError(f"{where}: gpu='spec' needs job_table and group_tag_table (the "
                             f"requested model is joined through the job's inst_id)")
        self.gpu = gpu
        for arg, v in (("normalize", normalize), ("memory", memory)):
            if not isinstance(v, bool):
                raise TypeError(f"{where}: {arg} must be True or False, got {v!r}")
        self.kind, self.normalize, self.memory = kind, normalize, memory
        self.devices = DEVICES if devices is None else devices
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) \
                or not (0 < time_scale < math.inf):
            raise ValueError(f"{where}: time_scale must be a number > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"{where}: limit must be an int >= 1 or None, got {limit!r}")
        self.limit = limit
        assert self.task_table is not None
        self.name = name or f"alibaba:{self.task_table.name}"
        self._rows: list[tuple] | None = None
        self._stats = CleaningStats()

    # -- joins ----------------------------------------------------------------------
    def _jobs(self) -> dict[str, tuple[str, str, float | None, str]]:
        """job_name -> (user, status, submit time or None, inst_id)."""
        out: dict[str, tuple[str, str, float | None, str]] = {}
        if self.job_table is None:
            return out
        names: dict[str, str] = {}
        for row, c in headerless_rows(self.job_table, JOB_COLUMNS, "pai_job_table",
                                      "pai_job_table"):
            job = c[0].strip()
            if not job:
                raise TraceFileError(self.job_table, f"row {row}, field 'job_name'",
                                     "must not be empty")
            user = _text(c[2]) or "default"
            status = _text(c[3])
            submit = parse_number(self.job_table, row, "start_time", c[4], zero_is_missing=True)
            if job not in out:
                out[job] = (names.setdefault(user, user), names.setdefault(status, status),
                            submit, c[1].strip())
        return out

    def _specs(self) -> dict[str, str]:
        """inst_id -> requested GPU model (gpu_type_spec), when one is given."""
        out: dict[str, str] = {}
        if self.group_tag_table is None or self.gpu != "spec":
            return out
        for _, c in headerless_rows(self.group_tag_table, GROUP_TAG_COLUMNS,
                                    "pai_group_tag_table", "pai_group_tag_table"):
            spec = _text(c[2])
            if spec:
                out.setdefault(c[0].strip(), spec)
        return out

    # -- reading ----------------------------------------------------------------------
    def _load(self) -> list[tuple]:
        if self._rows is not None:
            return self._rows
        path = self.task_table
        assert path is not None
        jobs, specs = self._jobs(), self._specs()
        stats = CleaningStats()
        names: dict[str, str] = {}
        rows: list[tuple] = []
        for row, c in headerless_rows(path, TASK_COLUMNS, "pai_task_table", "pai_task_table"):
            stats["tasks read"] += 1
            job_name = c[0].strip()
            inst = parse_number(path, row, "inst_num", c[2])
            start = parse_number(path, row, "start_time", c[4], zero_is_missing=True)
            end = parse_number(path, row, "end_time", c[5], zero_is_missing=True)
            cpu = parse_number(path, row, "plan_cpu", c[6]) or 0.0
            mem = parse_number(path, row, "plan_mem", c[7]) or 0.0
            gpu = parse_number(path, row, "plan_gpu", c[8]) or 0.0
            if inst is not None and inst != int(inst):
                raise TraceFileError(path, f"row {row}, field 'inst_num'",
                                     f"must be a whole number of instances, got {c[2]!r}")
            job = jobs.get(job_name)
            status = job[1] if job is not None else _text(c[3])
            if self.statuses is not None and status not in self.statuses:
                stats.drop(f"status {status or 'missing'} not kept")
                continue
            if start is None:
                stats.drop("start_time 0 or empty (missing)")
                continue
            if end is None:
                stats.drop("end_time 0 or empty (missing: not finished or not recorded)")
                continue
            if end < start:
                stats.drop("end_time before start_time")
                continue
            if not inst:
                stats.drop("inst_num 0 or empty")
                continue
            if cpu <= 0 and gpu <= 0:
                stats.drop("plan_cpu and plan_gpu both 0 (requests nothing)")
                continue
            if job is None:
                submit, user, inst_id = start, "default", ""
                if self.job_table is not None:
                    stats["tasks without a pai_job_table row (tenant 'default')"] += 1
            else:
                user, inst_id = job[0], job[3]
                submit = start if job[2] is None else min(job[2], start)
            assigned = _text(c[9]) if gpu > 0 else ""
            pin = {"assigned": assigned, "spec": specs.get(inst_id, "") if gpu > 0 else "",
                   "none": ""}[self.gpu]
            run = end - start
            if gpu > 0 and self.normalize and assigned:
                dev = self.devices.get(assigned)
                if dev is None:
                    stats[f"gpu_type {assigned} not a known device: run time not scaled"] += 1
                else:
                    run *= dev.speed_for(self.kind)
            task = names.setdefault(_text(c[1]) or "task", _text(c[1]) or "task")
            rows.append((submit, row, run, cpu / 100.0, gpu / 100.0, mem, int(inst),
                         names.setdefault(pin, pin) or None, task, user, job_name))
        rows.sort(key=lambda r: (r[0], r[1]))
        if self.limit is not None:
            del rows[self.limit:]
        stats["kept"] = len(rows)
        stats["gang tasks (inst_num > 1)"] = sum(1 for r in rows if r[6] > 1)
        stats["instances"] = sum(r[6] for r in rows)
        self._rows, self._stats = rows, stats
        return rows

    def tasks(self, seed: int = 0) -> Iterator[SimTask]:
        """The tasks in submit order (ties: file order), times shifted to start at 0."""
        rows = self._load()
        t0 = rows[0][0] if rows else 0.0
        shapes: dict[tuple[float, float, float], Resources] = {}
        job_ids: dict[str, int] = {}
        nxt = 0
        for submit, _, run, cpus, gpus, mem, inst, pin, task, user, job_name in rows:
            key = (cpus, gpus, mem if self.memory else 0.0)
            req = shapes.get(key)
            if req is None:
                amounts = {"CPU": cpus, "GPU": gpus, "memory": key[2] * _GIB}
                req = shapes[key] = Resources(amounts, where="AlibabaPAI request")
            job = job_ids.setdefault(job_name, nxt)
            kind = self.kind if gpus > 0 else "cpu"
            out = expand_gang(nxt, (submit - t0) / self.time_scale, run / self.time_scale, req,
                              inst, self.gangs, name=task, kind=kind, tenant=user,
                              accelerator_type=pin, job=job)
            nxt += len(out)
            yield from out


def machine_spec_cluster(path: str | Path, *, scale: float = 1.0, memory: bool = False,
                         devices: Mapping[str, DeviceType] | None = None,
                         name: str | None = None) -> ClusterConfig:
    """The cluster of a ``pai_machine_spec`` table: one node type per (gpu_type, cap_gpu,
    cap_cpu[, cap_mem]) with ``round(machines x scale)`` nodes (at least 1); ``memory``
    adds ``cap_mem`` GiB as memory. Machines without GPUs become CPU nodes."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise ValueError(f"machine_spec_cluster: scale must be a number > 0, got {scale!r}")
    devs = DEVICES if devices is None else devices
    groups: dict[tuple[str, int, float, float], int] = {}
    for row, c in headerless_rows(path, MACHINE_SPEC_COLUMNS, "pai_machine_spec",
                                  "pai_machine_spec"):
        gtype = _text(c[1])
        cpus = parse_number(path, row, "cap_cpu", c[2]) or 0.0
        mem = parse_number(path, row, "cap_mem", c[3]) or 0.0
        ngpu = parse_number(path, row, "cap_gpu", c[4]) or 0.0
        if ngpu != int(ngpu):
            raise TraceFileError(path, f"row {row}, field 'cap_gpu'",
                                 f"must be a whole number of GPUs, got {c[4]!r}")
        if ngpu and gtype not in devs:
            raise TraceFileError(path, f"row {row}, field 'gpu_type'",
                                 f"is not a known device model (known: "
                                 f"{', '.join(sorted(devs))}); got {c[1]!r}")
        key = (gtype if ngpu else "cpu", int(ngpu), cpus, mem if memory else 0.0)
        groups[key] = groups.get(key, 0) + 1
    if not groups:
        raise TraceFileError(path, "", "holds no machines")
    specs = []
    for (gtype, ngpu, cpus, mem), n in sorted(groups.items()):
        label = f"{gtype.lower()}-{ngpu}g-{cpus:g}c" + (f"-{mem:g}gib" if memory else "")
        specs.append(NodeSpec(label.replace(".", "_"), devs[gtype] if ngpu else None, ngpu,
                              cpus=cpus, memory=mem * _GIB, count=max(1, round(n * scale))))
    return ClusterConfig(specs, name=name or f"pai-machines-x{scale:g}")
