"""Replay Microsoft's Philly job log (msr-fiddle/philly-traces) as published.

The file ``cluster_job_log`` (inside ``trace-data.tar.gz``; also read plain or
gzip-compressed) is one JSON list of jobs::

    {"status": "Pass", "vc": "ee9e8c", "jobid": "application_1506638472019_14199",
     "submitted_time": "2017-10-07 01:11:39", "user": "ce2f4c",
     "attempts": [{"start_time": "2017-10-07 01:12:09", "end_time": "2017-10-07 01:13:23",
                   "detail": [{"ip": "m47", "gpus": ["gpu0", ..., "gpu7"]}]}, ...]}

Times are ``YYYY-MM-DD HH:MM:SS`` without a zone (read as UTC; only differences
matter); ``None`` (or ``"None"``, ``""``) is missing. Cleaning rules (the
repository's README and its analysis notebook are the source):

* a job with no attempt (never scheduled), no ``submitted_time`` or no GPU in any
  attempt is dropped;
* run time = the sum of ``end - start`` over the attempts that record both times; an
  attempt missing either time is left out (never ``end - submitted_time``: that would
  count queueing as run time); a job whose last attempt started but has no ``end_time``
  was still running when the log was taken (the README), its length unknown: dropped;
* every status (``Pass``, ``Killed``, ``Failed``) is replayed by default, for its
  recorded run time: killed and failed jobs held their GPUs that long
  (``statuses={"Pass"}`` keeps only successful ones);
* the shape comes from the first attempt with GPUs: one machine with ``g`` GPUs is one
  task of ``g`` GPUs; several machines make a gang job of ``total / d`` members of ``d``
  GPUs each, ``d`` the greatest common divisor of the per-machine counts (8 + 8 GPUs ->
  2 x 8; 8 + 4 -> 3 x 4), so the total is exact;
* the tenant is the virtual cluster ``vc`` (Philly's unit of quota) or ``user``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from runtime.resources import Resources
from simulator.devices import DEVICES, DeviceType
from simulator.workloads.base import SimTask
from simulator.workloads.tracefile import (
    CleanedTrace,
    CleaningStats,
    TraceFileError,
    check_gangs,
    expand_gang,
    open_trace_text,
)

__all__ = ["PhillyTrace", "PHILLY_STATUSES"]

#: Job statuses of the Philly job log.
PHILLY_STATUSES = ("Pass", "Killed", "Failed")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MISSING = (None, "", "None")
_WS = re.compile(r"\s*")


class PhillyTrace(CleanedTrace):
    """The Philly ``cluster_job_log`` as a workload (cleaning rules: module docstring).

    ``gangs``: ``keep`` (multi-machine jobs are tasks with ``gang`` > 1, which the engine
    refuses until gang placement exists) or ``split`` (one task per member, same job id).
    ``gpu_type`` pins every job to that accelerator model and takes the recorded run
    times as measured on it (duration = run time x its speed for ``kind``, so the job
    runs for its recorded time there); None: any GPU, run times at speed 1.
    ``cpus_per_gpu`` adds CPUs to the request (the log records none). ``stats`` counts
    kept jobs and dropped ones by reason. The seed is unused (a trace is fixed).
    """

    def __init__(self, path: str | Path, *, gangs: str = "keep", statuses: Collection[str] |
                 None = None, tenant: str = "vc", gpu_type: str | None = None,
                 kind: str = "train", cpus_per_gpu: float = 0.0, time_scale: float = 1.0,
                 limit: int | None = None, devices: Mapping[str, DeviceType] | None = None,
                 name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"PhillyTrace: path {str(path)!r} is not a file")
        self.gangs = check_gangs("PhillyTrace", gangs)
        if statuses is not None:
            statuses = frozenset(statuses)
            bad = sorted(statuses - set(PHILLY_STATUSES))
            if bad or not statuses:
                raise ValueError(f"PhillyTrace: statuses must be a non-empty subset of "
                                 f"{', '.join(PHILLY_STATUSES)}, got {sorted(statuses)!r}")
        self.statuses = statuses
        if tenant not in ("vc", "user"):
            raise ValueError(f"PhillyTrace: tenant must be 'vc' or 'user', got {tenant!r}")
        self.tenant = tenant
        devs = DEVICES if devices is None else devices
        if gpu_type is not None and gpu_type not in devs:
            raise ValueError(f"PhillyTrace: gpu_type {gpu_type!r} is not a known device "
                             f"model; known: {', '.join(sorted(devs))}")
        self.gpu_type = gpu_type
        self._speed = devs[gpu_type].speed_for(kind) if gpu_type is not None else 1.0
        if self._speed <= 0:
            raise ValueError(f"PhillyTrace: device {gpu_type!r} cannot run kind {kind!r} "
                             f"(speed 0)")
        self.kind = kind
        if isinstance(cpus_per_gpu, bool) or not isinstance(cpus_per_gpu, (int, float)) \
                or not (0 <= cpus_per_gpu < math.inf):
            raise ValueError(f"PhillyTrace: cpus_per_gpu must be a number >= 0, "
                             f"got {cpus_per_gpu!r}")
        self.cpus_per_gpu = float(cpus_per_gpu)
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) \
                or not (0 < time_scale < math.inf):
            raise ValueError(f"PhillyTrace: time_scale must be a number > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"PhillyTrace: limit must be an int >= 1 or None, got {limit!r}")
        self.limit = limit
        self.name = name or f"philly:{self.path.name}"
        self._jobs: list[tuple[float, int, float, int, int, str]] | None = None
        self._stats = CleaningStats()
        self.job_ids: list[str] = []  # the k-th kept job (submit order) -> its Philly jobid

    # -- reading ------------------------------------------------------------------
    def _time(self, value: Any, where: str) -> float | None:
        if value in _MISSING:
            return None
        if not isinstance(value, str):
            raise TraceFileError(self.path, where, f"must be a time string like "
                                 f"'2017-10-07 01:11:39' or null, got {value!r}")
        try:
            dt = datetime.strptime(value.strip(), _TIME_FORMAT)
        except ValueError:
            raise TraceFileError(self.path, where, f"must be a time string like "
                                 f"'2017-10-07 01:11:39' or null, got {value!r}") from None
        return (dt.replace(tzinfo=UTC) - _EPOCH).total_seconds()

    def _field(self, job: Mapping[str, Any], key: str, where: str, types: tuple[type, ...]
               ) -> Any:
        if key not in job:
            raise TraceFileError(self.path, where, f"job has no {key!r} field; a Philly job "
                                 f"has jobid, user, vc, status, submitted_time, attempts")
        v = job[key]
        if not isinstance(v, types) and v not in _MISSING:
            raise TraceFileError(self.path, f"{where}.{key}", f"must be "
                                 f"{' or '.join(t.__name__ for t in types)}, got {v!r}")
        return v

    def _jobs_of(self, text: IO[str]) -> Iterator[Any]:
        """The items of the top-level JSON list, decoded one by one (the log is large)."""
        dec = json.JSONDecoder()
        buf, pos, line, eof = "", 0, 1, False

        def more() -> None:
            nonlocal buf, pos, line, eof
            keep = buf.rfind("\n", 0, pos) + 1  # keep whole lines: columns stay right
            line += buf.count("\n", 0, keep)
            chunk = text.read(1 << 20)
            eof = not chunk
            buf, pos = buf[keep:] + chunk, pos - keep

        def fail(at: int, msg: str) -> TraceFileError:
            return TraceFileError(self.path, f"line {line + buf.count(chr(10), 0, at)}, column "
                                  f"{at - buf.rfind(chr(10), 0, at)}",
                                  f"not valid JSON ({msg}); a truncated file?")

        def skip() -> None:  # whitespace, reading on as needed
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < len(buf) or eof:
                    return
                more()

        skip()
        if pos < len(buf) and buf[pos] != "[":  # not a list: decode it whole for the message
            while not eof:
                more()
            try:
                doc = json.loads(buf[pos:])
            except json.JSONDecodeError as e:
                raise fail(pos + e.pos, e.msg) from None
            if isinstance(doc, dict) and isinstance(doc.get("cluster_job_log"), list):
                yield from doc["cluster_job_log"]
                return
            raise TraceFileError(self.path, "top level", f"must be a JSON list of jobs "
                                 f"(cluster_job_log), got a {type(doc).__name__}")
        if pos >= len(buf):
            raise TraceFileError(self.path, "", "is empty; expected a JSON list of jobs")
        pos += 1
        first = True
        while True:
            skip()
            if pos >= len(buf):
                raise fail(pos, "the list of jobs ends early")
            if buf[pos] == "]":
                return
            if not first:
                if buf[pos] != ",":
                    raise fail(pos, "expected ',' or ']' after a job")
                pos += 1
                skip()
            while True:
                try:
                    item, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise fail(e.pos, e.msg) from None
                    more()
            first, pos = False, end
            yield item

    def _shape(self, attempts: list[Any], where: str) -> list[int] | None:
        """GPUs per machine of the first attempt that lists any."""
        for a, att in enumerate(attempts):
            detail = att.get("detail") or []
            if not isinstance(detail, list):
                raise TraceFileError(self.path, f"{where}.attempts[{a}].detail",
                                     f"must be a list of machines, got {detail!r}")
            per: list[int] = []
            for m, d in enumerate(detail):
                gpus = d.get("gpus") if isinstance(d, dict) else None
                if not isinstance(gpus, list):
                    raise TraceFileError(self.path, f"{where}.attempts[{a}].detail[{m}].gpus",
                                         f"must be a list of GPU ids, got {gpus!r}")
                if gpus:
                    per.append(len(gpus))
            if per:
                return per
        return None

    def _clean(self, j: int, job: Any, stats: CleaningStats
               ) -> tuple[float, float, int, int, str, str] | None:
        """(submit, run time, GPUs per member, members, tenant, jobid), or None if dropped."""
        where = f"cluster_job_log[{j}]"
        if not isinstance(job, dict):
            raise TraceFileError(self.path, where, f"must be a job object, got {job!r}")
        jobid = str(self._field(job, "jobid", where, (str,)))
        status = self._field(job, "status", where, (str,))
        group = self._field(job, self.tenant, where, (str,)) or "default"
        attempts = self._field(job, "attempts", where, (list,)) or []
        submit = self._time(self._field(job, "submitted_time", where, (str,)),
                            f"{where}.submitted_time")
        if self.statuses is not None and status not in self.statuses:
            stats.drop(f"status {status} not kept")
            return None
        if submit is None:
            stats.drop("no submitted_time")
            return None
        if not attempts:
            stats.drop("no attempts (never scheduled)")
            return None
        run, running, counted = 0.0, False, 0
        for a, att in enumerate(attempts):
            aw = f"{where}.attempts[{a}]"
            if not isinstance(att, dict):
                raise TraceFileError(self.path, aw, f"must be an attempt object, got {att!r}")
            start = self._time(att.get("start_time"), f"{aw}.start_time")
            end = self._time(att.get("end_time"), f"{aw}.end_time")
            if start is not None and end is None and a == len(attempts) - 1:
                running = True  # the README: no end on the last attempt = still running
            elif start is None or end is None:
                stats["attempts left out: a time missing"] += 1
            elif end < start:
                stats["attempts left out: end before start"] += 1
            else:
                run += end - start
                counted += 1
        per = self._shape(attempts, where)
        if running:
            stats.drop("still running when the log was taken")
        elif per is None:
            stats.drop("no GPU in any attempt")
        elif not counted:
            stats.drop("no attempt with both start and end time")
        else:
            d = math.gcd(*per)
            return (submit, run, d, sum(per) // d, group, jobid)
        return None

    def _load(self) -> list[tuple[float, int, float, int, int, str]]:
        if self._jobs is not None:
            return self._jobs
        stats = CleaningStats()
        rows: list[tuple[float, int, float, int, int, str]] = []
        ids: list[str] = []
        with open_trace_text(self.path, "cluster_job_log") as text:
            try:
                for j, job in enumerate(self._jobs_of(text)):
                    stats["jobs read"] += 1
                    kept = self._clean(j, job, stats)
                    if kept is not None:
                        submit, run, per, gang, group, jobid = kept
                        rows.append((submit, len(rows), run, per, gang, group))
                        ids.append(jobid)
            except UnicodeDecodeError as e:
                raise TraceFileError(self.path, f"byte {e.start}", "not UTF-8 text") from None
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], i))
        if self.limit is not None:
            order = order[:self.limit]
        self._jobs = [rows[i] for i in order]
        self.job_ids = [ids[i] for i in order]
        stats["kept"] = len(self._jobs)
        stats["gang jobs"] = sum(1 for r in self._jobs if r[4] > 1)
        self._stats = stats
        return self._jobs

    def tasks(self, seed: int = 0) -> Iterator[SimTask]:
        """The jobs in submit order (ties: file order), times shifted to start at 0."""
        jobs = self._load()
        t0 = jobs[0][0] if jobs else 0.0
        shapes: dict[int, Resources] = {}
        nxt = 0
        for submit, _, run, per, gang, group in jobs:
            req = shapes.get(per)
            if req is None:
                amounts = {"GPU": per, "CPU": per * self.cpus_per_gpu}
                req = shapes[per] = Resources(amounts, where="PhillyTrace request")
            out = expand_gang(nxt, (submit - t0) / self.time_scale,
                              run * self._speed / self.time_scale, req, gang, self.gangs,
                              name=self.kind, kind=self.kind, tenant=group,
                              accelerator_type=self.gpu_type)
            nxt += len(out)
            yield from out
