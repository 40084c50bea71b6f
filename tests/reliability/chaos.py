"""The chaos workload shared by the local and the dask chaos tests.

Random worker processes are SIGKILLed at short intervals while a driver submits
tasks, dependants (a task on another task's result), nested tasks and actor calls.
Afterwards every ref must resolve within its ``get`` timeout to the right value or
to a documented error that shows its attempts; nothing may be lost or reordered.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import runtime
from runtime.errors import ActorDiedError, ObjectLostError, WorkerCrashedError

#: Slack allowed past a ``get`` timeout before it counts as a hang.
SLACK = 3.0


@runtime.remote
def square(x):
    """x * x, after a short pause (so kills land mid-task)."""
    time.sleep(0.005)
    return x * x


@runtime.remote
def plus(a, b):
    """a + b: the dependant of a ``square``."""
    return a + b


@runtime.remote
def fan(n):
    """Sum of squares below ``n``, computed by nested tasks."""
    return sum(runtime.get([square.options(max_retries=-1).remote(i) for i in range(n)],
                           timeout=60))


@runtime.remote
class Tally:
    """Counts calls; answers (pid, count) so restarts and order are visible."""

    def __init__(self):
        self.n = 0

    def bump(self):
        """(this instance's pid, calls it answered so far)."""
        self.n += 1
        return (os.getpid(), self.n)


@dataclass
class Expect:
    """One submitted ref and what it may resolve to."""

    ref: Any
    want: Any
    kind: str
    max_retries: int = -1
    actor: int | None = None


@dataclass
class Report:
    """What the chaos run saw."""

    kills: int = 0
    results: list[tuple[Expect, Any, BaseException | None, float]] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # not settled within the timeout
    waited: float = 0.0
    actors: list[Any] = field(default_factory=list)


def _killer(pids: Callable[[], list[int]], stop: threading.Event, report: Report,
            interval: tuple[float, float], seed: int, end: float) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(*interval)) and time.monotonic() < end:
        try:
            choice = pids()
        except Exception:  # noqa: BLE001 - the cluster is busy: try again next time
            continue
        if choice:
            try:
                os.kill(rng.choice(choice), signal.SIGKILL)
                report.kills += 1
            except ProcessLookupError:
                pass


def run_chaos(pids: Callable[[], list[int]], *, seconds: float, interval: tuple[float, float],
              seed: int = 11, nested: bool = True, timeout: float = 60) -> Report:
    """Submit the mixed workload for ``seconds`` while killing workers; collect results."""
    report = Report()
    rng = random.Random(seed)
    sturdy = [Tally.options(max_restarts=-1, max_task_retries=-1).remote() for _ in range(2)]
    fragile = Tally.options(max_restarts=1).remote()
    expects: list[Expect] = []
    stop = threading.Event()
    end = time.monotonic() + seconds
    killer = threading.Thread(target=_killer, args=(pids, stop, report, interval, seed + 1,
                                                    end), daemon=True)
    killer.start()
    i = 0
    try:
        while time.monotonic() < end:
            retries = rng.choice([-1, -1, 2])
            x = square.options(max_retries=retries).remote(i)
            expects.append(Expect(x, i * i, "task", retries))
            expects.append(Expect(plus.options(max_retries=-1).remote(x, 1), i * i + 1,
                                  "dependant", retries))
            if nested and i % 10 == 0:
                expects.append(Expect(fan.options(max_retries=-1).remote(4), 14, "nested"))
            a = i % 2
            expects.append(Expect(sturdy[a].bump.remote(), None, "sturdy", actor=a))
            if i % 5 == 0:
                expects.append(Expect(fragile.bump.remote(), None, "fragile"))
            i += 1
            time.sleep(0.01)
    finally:
        stop.set()
        killer.join(10)
    t0 = time.monotonic()
    refs = [e.ref for e in expects]
    _, report.pending = runtime.wait(refs, num_returns=len(refs), timeout=timeout)
    report.waited = time.monotonic() - t0
    for e in expects:
        t0 = time.monotonic()
        try:  # settled ones answer at once; the rest time out (and fail the check)
            value, err = runtime.get(e.ref, timeout=1.0), None
        except Exception as exc:  # noqa: BLE001 - judged by check()
            value, err = None, exc
        report.results.append((e, value, err, time.monotonic() - t0))
    report.actors = [*sturdy, fragile]
    return report


def kill_actors(report: Report) -> None:
    """Kill the chaos run's actors."""
    for h in report.actors:
        runtime.kill(h)


_ATTEMPTS = re.compile(r"on each of (\d+) attempt")


def check(report: Report, *, timeout: float = 60, min_kills: int = 10,
          lost_ok: bool = False, strict_order: bool = True) -> dict[str, int]:
    """Assert every result is right or a documented error with its attempts; returns
    counts by outcome. ``lost_ok``: a finished call of the actor that may not re-run
    calls may report ``ObjectLostError`` (dask: its result lived on its worker).
    ``strict_order``: each instance answered its calls in submission order (dask may
    re-run a call whose result died with the worker, after later ones)."""
    assert report.kills >= min_kills, f"only {report.kills} workers were killed"
    assert report.waited <= timeout + SLACK, f"wait() took {report.waited:.1f} s > {timeout} s"
    assert not report.pending, (f"{len(report.pending)} of {len(report.results)} refs never "
                                f"settled within {timeout} s after the kills stopped")
    counts: dict[str, int] = {}
    runs: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    for e, value, err, took in report.results:
        assert took <= 1.0 + SLACK, f"get() of a settled {e.kind} took {took:.1f} s"
        if err is None:
            if e.kind in ("sturdy", "fragile"):
                assert isinstance(value, tuple) and value[1] >= 1, value
                if e.actor is not None:
                    runs[e.actor].append(value)
            else:
                assert value == e.want, f"{e.kind}: {value!r} != {e.want!r}"
            counts["ok"] = counts.get("ok", 0) + 1
            continue
        name = type(err).__name__
        counts[name] = counts.get(name, 0) + 1
        if e.kind in ("sturdy", "nested") or (e.kind in ("task", "dependant")
                                              and e.max_retries == -1):
            raise AssertionError(f"a {e.kind} with unlimited retries failed: {err!r}")
        if isinstance(err, WorkerCrashedError):
            m = _ATTEMPTS.search(str(err))
            assert m and int(m.group(1)) == err.attempts == e.max_retries + 1, str(err)
        elif isinstance(err, ActorDiedError):
            assert e.kind == "fragile", err
        elif isinstance(err, ObjectLostError):  # documented only where calls are not re-run
            assert e.kind == "fragile" and lost_ok, f"a {e.kind} was lost: {err}"
        else:
            raise AssertionError(f"a {e.kind} failed with an undocumented error: {err!r}")
    for seq in runs.values():  # an unlimited actor: calls in order, none lost, per instance
        by_pid: dict[int, list[int]] = {}
        order: list[int] = []
        for pid, n in seq:
            if pid not in by_pid:
                order.append(pid)
            by_pid.setdefault(pid, []).append(n)
        for pid in order:
            ns = by_pid[pid]
            assert len(set(ns)) == len(ns), f"two calls saw the same state: {ns}"
            if strict_order:
                assert ns == list(range(ns[0], ns[0] + len(ns))), f"reordered or lost: {ns}"
    return counts
