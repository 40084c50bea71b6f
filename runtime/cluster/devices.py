"""Devices: one accelerator or CPU pool model, with its speed per task kind.

A :class:`DeviceType` is plain data (no global state), so the simulator, the
backends and notebooks describe clusters with it alike. ``speed`` is the
throughput matrix row of the model (Gavel-style): a task kind may run 3x faster
on an H100 than on a V100 (``speed={"train": 3.0}``) and not at all on a TPU
(``speed={"train": 0.0}``). ``unavailable`` windows (a QPU's calibration,
maintenance) stop new work from starting on the device's nodes. Ready-made
models are in :data:`simulator.devices.DEVICES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Window", "DeviceType", "check_number"]


def check_number(where: str, name: str, value: object, *, minimum: float = 0.0,
                 allow_inf: bool = False, strict: bool = False) -> float:
    """Validate a finite number >= ``minimum`` (> when ``strict``); raise naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    bad = math.isnan(v) or (math.isinf(v) and not allow_inf) or v < minimum or (strict and v <= minimum)
    if bad:
        op = ">" if strict else ">="
        raise ValueError(f"{where}: {name} must be a finite number {op} {minimum:g}, got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class Window:
    """Unavailability: from ``start`` for ``duration`` seconds, repeated every ``period`` (0: once)."""

    start: float
    duration: float
    period: float = 0.0
    reason: str = "maintenance"

    def __post_init__(self) -> None:
        check_number("Window", "start", self.start)
        check_number("Window", "duration", self.duration, strict=True)
        check_number("Window", "period", self.period)
        if self.period and self.period <= self.duration:
            raise ValueError(f"Window: period must exceed duration ({self.duration!r}), "
                             f"got {self.period!r}")

    def intervals(self, until: float) -> list[tuple[float, float]]:
        """The ``(start, end)`` intervals that begin before ``until``."""
        out: list[tuple[float, float]] = []
        t = self.start
        while t < until:
            out.append((t, t + self.duration))
            if not self.period:
                break
            t += self.period
        return out


@dataclass(frozen=True, slots=True)
class DeviceType:
    """One device model: kind (CPU/GPU/TPU/QPU/custom), model name, speeds, memory, cost.

    ``speed[task_kind]`` is the relative throughput (1.0 = reference; 0 = cannot
    run); kinds not listed run at ``default_speed``. ``mtbf`` (seconds, None =
    never) is the device's mean time between failures; a node fails when any of its
    devices does. ``shot_time`` is a QPU's seconds per shot.
    """

    kind: str
    model: str
    speed: Mapping[str, float] = field(default_factory=dict)
    default_speed: float = 1.0
    memory: float = 0.0
    cost_per_hour: float = 0.0
    unavailable: Sequence[Window] = ()
    mtbf: float | None = None
    shot_time: float = 0.0

    def __post_init__(self) -> None:
        where = f"DeviceType {self.model!r}"
        for fname, v in (("kind", self.kind), ("model", self.model)):
            if not isinstance(v, str) or not v:
                raise ValueError(f"DeviceType: {fname} must be a non-empty string, got {v!r}")
        if not isinstance(self.speed, Mapping):
            raise TypeError(f"{where}: speed must be a mapping of task kind to speed, "
                            f"got {self.speed!r}")
        for k, v in self.speed.items():
            check_number(where, f"speed[{k!r}]", v)
        object.__setattr__(self, "speed", dict(self.speed))
        check_number(where, "default_speed", self.default_speed)
        check_number(where, "memory", self.memory)
        check_number(where, "cost_per_hour", self.cost_per_hour)
        check_number(where, "shot_time", self.shot_time)
        if self.mtbf is not None:
            check_number(where, "mtbf", self.mtbf, strict=True)
        windows = tuple(self.unavailable)
        for w in windows:
            if not isinstance(w, Window):
                raise TypeError(f"{where}: unavailable must hold Window objects, got {w!r}")
        object.__setattr__(self, "unavailable", windows)

    def speed_for(self, task_kind: str) -> float:
        """Relative speed of ``task_kind`` on this model (``default_speed`` when unlisted)."""
        return self.speed.get(task_kind, self.default_speed)


