"""What a workload yields: :class:`SimTask` records, in arrival order.

A workload is any object with ``name`` and ``tasks(seed) -> Iterator[SimTask]``;
the engine pulls tasks lazily (a million-task workload never sits in memory), so
tasks must come in non-decreasing ``submit`` order and a task's ``deps`` must come
before it. Randomness comes from :func:`rng_for` (seeded by text, so it does not
depend on ``PYTHONHASHSEED``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from runtime.resources import Resources

__all__ = ["SimTask", "Workload", "Dist", "Const", "Exp", "Uniform", "LogNormal", "rng_for",
           "Shape", "Merged", "as_request"]


def rng_for(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream for ``(seed, stream)``."""
    return random.Random(f"{seed}:{stream}")


def as_request(request: Mapping[str, float] | Resources, where: str = "request") -> Resources:
    """A validated :class:`Resources` (returned as is when it already is one)."""
    return request if isinstance(request, Resources) else Resources(request, where=where)


class SimTask:
    """One task of a workload: when it arrives, how long it runs at speed 1, what it needs.

    ``duration`` is seconds on a reference device (the engine divides by the node's
    speed for ``kind``); a QPU task adds ``shots`` x the device's ``shot_time``.
    ``deps`` are ids of tasks that must finish first (a DAG); ``job`` groups tasks
    into one job for job completion times; ``deadline`` is an SLO in seconds after
    ``submit``; ``max_retries`` bounds re-runs after node failures. ``gang`` (>= 1) is the
    number of members of a gang job: each member needs ``request`` on one node (members
    may share a node with room for both), all start together or none does, and all are
    released together (total demand ``gang`` x ``request``); the engine refuses
    ``gang`` > 1 until it can place gangs.
    """

    __slots__ = ("id", "submit", "duration", "request", "name", "kind", "tenant", "priority",
                 "accelerator_type", "deps", "job", "max_retries", "deadline", "shots", "gang")

    def __init__(self, id: int, submit: float, duration: float,
                 request: Mapping[str, float] | Resources, name: str = "task", kind: str = "",
                 tenant: str = "default", priority: int = 0,
                 accelerator_type: str | None = None, deps: Sequence[int] = (),
                 job: int | None = None, max_retries: int = 3, deadline: float | None = None,
                 shots: int = 0, gang: int = 1) -> None:
        if not (0.0 <= submit < math.inf):
            raise ValueError(f"task {name!r} (id {id}): submit must be a finite time >= 0, "
                             f"got {submit!r}")
        if not (0.0 <= duration < math.inf):
            raise ValueError(f"task {name!r} (id {id}): duration must be a finite number >= 0, "
                             f"got {duration!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"task {name!r} (id {id}): max_retries must be an int >= 0, "
                             f"got {max_retries!r}")
        if deadline is not None and not (0.0 < deadline <= math.inf):
            raise ValueError(f"task {name!r} (id {id}): deadline must be a number > 0, "
                             f"got {deadline!r}")
        if shots < 0:
            raise ValueError(f"task {name!r} (id {id}): shots must be >= 0, got {shots!r}")
        if isinstance(gang, bool) or not isinstance(gang, int) or gang < 1:
            raise ValueError(f"task {name!r} (id {id}): gang must be an int >= 1 (members), "
                             f"got {gang!r}")
        self.id = id
        self.submit = float(submit)
        self.duration = float(duration)
        self.request = request if isinstance(request, Resources) else as_request(
            request, f"task {name!r} (id {id}) request")
        self.name = name
        self.kind = kind or name
        self.tenant = tenant
        self.priority = priority
        self.accelerator_type = accelerator_type
        self.deps = tuple(deps)
        self.job = id if job is None else job
        self.max_retries = max_retries
        self.deadline = deadline
        self.shots = shots
        self.gang = gang

    def __repr__(self) -> str:
        return (f"SimTask(id={self.id}, name={self.name!r}, submit={self.submit:g}, "
                f"duration={self.duration:g}, request={dict(self.request)})")


@runtime_checkable
class Workload(Protocol):
    """Yields tasks in arrival order for a seed."""

    name: str

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """The tasks, in non-decreasing ``submit`` order, deps before dependants."""
        ...


# Distributions ---------------------------------------------------------------
Dist = Callable[[random.Random], float]


@dataclass(frozen=True, slots=True)
class Const:
    """Always ``value``."""

    value: float

    def __call__(self, rng: random.Random) -> float:
        """Return the constant."""
        return self.value


@dataclass(frozen=True, slots=True)
class Exp:
    """Exponential with the given ``mean``."""

    mean: float

    def __post_init__(self) -> None:
        if not (0 < self.mean < math.inf):
            raise ValueError(f"Exp: mean must be a finite number > 0, got {self.mean!r}")

    def __call__(self, rng: random.Random) -> float:
        """Draw one value."""
        return rng.expovariate(1.0 / self.mean)


@dataclass(frozen=True, slots=True)
class Uniform:
    """Uniform on ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.high < math.inf):
            raise ValueError(f"Uniform: need 0 <= low <= high, got low={self.low!r}, "
                             f"high={self.high!r}")

    def __call__(self, rng: random.Random) -> float:
        """Draw one value."""
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Log-normal with the given ``median`` and ``sigma`` (heavy-tailed job lengths)."""

    median: float
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.median < math.inf) or not (0 <= self.sigma < math.inf):
            raise ValueError(f"LogNormal: need median > 0 and sigma >= 0, got "
                             f"median={self.median!r}, sigma={self.sigma!r}")

    def __call__(self, rng: random.Random) -> float:
        """Draw one value."""
        return rng.lognormvariate(math.log(self.median), self.sigma)


@dataclass(frozen=True, slots=True)
class Shape:
    """A task shape of a job mix: request, kind, accelerator, duration law and weight."""

    request: Resources
    kind: str = "task"
    duration: Any = Const(1.0)
    weight: float = 1.0
    accelerator_type: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "request", as_request(self.request, f"Shape {self.kind!r}"))
        if not (0 < self.weight < math.inf):
            raise ValueError(f"Shape {self.kind!r}: weight must be > 0, got {self.weight!r}")
        if not callable(self.duration):
            raise TypeError(f"Shape {self.kind!r}: duration must be a distribution "
                            f"(callable of an RNG), got {self.duration!r}")


class Merged:
    """Several workloads interleaved by arrival time, ids renumbered (deps follow)."""

    def __init__(self, parts: Sequence[Workload], name: str | None = None) -> None:
        if not parts:
            raise ValueError("Merged: parts must hold at least one workload, got []")
        for i, p in enumerate(parts):
            if not callable(getattr(p, "tasks", None)):
                raise TypeError(f"Merged: parts[{i}] is not a workload (no tasks()), got {p!r}")
        self.parts = list(parts)
        self.name = name or "+".join(p.name for p in self.parts)

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Interleave the parts (ties: part order), renumbering ids from 0."""
        def keyed(i: int, p: Workload) -> Iterator[tuple[float, int, int, SimTask]]:
            for n, t in enumerate(p.tasks(seed)):
                yield (t.submit, i, n, t)

        ids: dict[tuple[int, int], int] = {}
        jobs: dict[tuple[int, int], int] = {}
        nxt = 0
        for _, i, _, t in heapq.merge(*(keyed(i, p) for i, p in enumerate(self.parts))):
            new = nxt
            nxt += 1
            ids[(i, t.id)] = new
            t.deps = tuple(ids[(i, d)] for d in t.deps)
            t.job = jobs.setdefault((i, t.job), new)
            t.id = new
            yield t
