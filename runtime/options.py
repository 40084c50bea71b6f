"""Options of ``@remote`` and ``.options()``: a declarative table, validated when given.

As in Ray's ``ray_option_utils``, each keyword is checked at decoration or
``.options()`` time, naming the keyword, the value and what would be accepted,
before anything is submitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runtime.resources import Resources

__all__ = ["Option", "TASK_OPTIONS", "ACTOR_OPTIONS", "validate_options", "resource_request"]


@dataclass(frozen=True, slots=True)
class Option:
    """One keyword: a checker that returns the normalised value or raises, and its help."""

    check: Callable[[str, Any], Any]
    default: Any
    help: str


def _number(min_value: float = 0.0, integer: bool = False, allow_none: bool = False,
            allow_inf: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None and allow_none:
            return None
        kind = "an int" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise TypeError(f"{key}={value!r}: expected {kind} >= {min_value:g}, "
                            f"got {type(value).__name__}")
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"{key}={value!r}: expected {kind} >= {min_value:g}, got NaN")
        if value < min_value or (math.isinf(value) and not allow_inf):
            raise ValueError(f"{key}={value!r}: expected {kind} >= {min_value:g}"
                             + ("" if allow_inf else " (finite)"))
        return value

    return check


def _retries(key: str, value: Any) -> int:
    if value == -1 and not isinstance(value, bool):
        return -1  # Ray: -1 means retry forever
    return _number(0, integer=True)(key, value)


def _str_or_none(key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise TypeError(f"{key}={value!r}: expected a non-empty string or None")


def _resources(key: str, value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{key}={value!r}: expected a dict of resource name to amount, "
                        f"e.g. {{'TPU': 1}}")
    for name in value:
        if name in ("CPU", "GPU"):
            raise ValueError(f"{key}={dict(value)!r}: use num_cpus= / num_gpus= for "
                             f"{name!r}, not resources=")
    try:
        return Resources(value, where=key).to_dict()
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{key}={dict(value)!r}: {exc}".replace(f"{key}: ", "")) from None


def _retry_exceptions(key: str, value: Any) -> bool | tuple[type[BaseException], ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, (list, tuple)):
        for item in value:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"{key}={value!r}: expected True/False or a list of exception "
                                f"classes; {item!r} is not an exception class")
        return tuple(value)
    raise TypeError(f"{key}={value!r}: expected True/False or a list of exception classes")


def _sim_duration(key: str, value: Any) -> Any:
    if value is None or callable(value):
        return value
    return _number(0)(key, value)


def _literal(*choices: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"{key}={value!r}: expected one of {', '.join(map(repr, choices))}")
        return value

    return check


_COMMON: dict[str, Option] = {
    "num_cpus": Option(_number(0, allow_none=True), None, "CPUs to reserve (default 1 for tasks)"),
    "num_gpus": Option(_number(0, allow_none=True), None, "GPUs to reserve (fractions allowed)"),
    "memory": Option(_number(0, allow_none=True), None, "bytes of memory to reserve"),
    "resources": Option(_resources, None, "custom resources, e.g. {'TPU': 1, 'QPU': 1}"),
    "accelerator_type": Option(_str_or_none, None, "accelerator model the node must have"),
    "name": Option(_str_or_none, None, "display name (default: the function/class name)"),
    "tenant": Option(_str_or_none, None, "who submits the work (fairness is across tenants)"),
    "priority": Option(_number(-(2**31), integer=True), 0, "higher runs first where policies care"),
    "kind": Option(_str_or_none, None, "task kind for speed tables (default: the name)"),
    "sim_duration": Option(_sim_duration, None, "virtual run time on the sim backend"),
}

#: Keywords accepted by ``@remote`` on functions and by ``f.options()``.
TASK_OPTIONS: dict[str, Option] = {
    **_COMMON,
    "max_retries": Option(_retries, 3, "re-runs after worker/node death (-1: forever)"),
    "retry_exceptions": Option(_retry_exceptions, False,
                               "True, or exception classes whose raising is retried"),
    "num_returns": Option(_literal(1), 1, "only 1 is supported"),
}

#: Keywords accepted by ``@remote`` on classes and by ``Actor.options()``.
ACTOR_OPTIONS: dict[str, Option] = {
    **_COMMON,
    "max_restarts": Option(_retries, 0, "restarts after the actor's process dies (-1: forever)"),
    "max_task_retries": Option(_retries, 0, "re-runs of a method call interrupted by a death"),
    "max_concurrency": Option(_literal(1), 1, "only 1 is supported (methods run in order)"),
    "lifetime": Option(lambda k, v: _literal("detached", None)(k, v) if v else None, None,
                       "accepted for Ray compatibility"),
}


def validate_options(kind: Literal["task", "actor"], options: Mapping[str, Any]) -> dict[str, Any]:
    """Check every keyword against the table; return the normalised values given.

    Unknown keywords raise ``TypeError`` naming them and listing the accepted ones.
    """
    table = TASK_OPTIONS if kind == "task" else ACTOR_OPTIONS
    out: dict[str, Any] = {}
    for key, value in options.items():
        opt = table.get(key)
        if opt is None:
            where = "remote functions" if kind == "task" else "actors"
            raise TypeError(f"unknown option {key!r} for {where}; accepted: "
                            f"{', '.join(sorted(table))}")
        out[key] = opt.check(key, value)
    return out


def option(opts: Mapping[str, Any], key: str, kind: Literal["task", "actor"] = "task") -> Any:
    """The value of ``key`` in validated ``opts``, or its table default."""
    if key in opts:
        return opts[key]
    table = TASK_OPTIONS if kind == "task" else ACTOR_OPTIONS
    return table[key].default


def resource_request(opts: Mapping[str, Any], *, default_cpus: float = 1.0) -> Resources:
    """The resource request that validated options describe (CPU defaults to ``default_cpus``)."""
    req: dict[str, float] = dict(opts.get("resources") or {})
    cpus = opts.get("num_cpus")
    req["CPU"] = default_cpus if cpus is None else cpus
    if opts.get("num_gpus"):
        req["GPU"] = opts["num_gpus"]
    if opts.get("memory"):
        req["memory"] = opts["memory"]
    return Resources._trusted(req)


def check_timeout(timeout: Any) -> float | None:
    """``timeout`` as seconds (None: no limit); a clear error for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout={timeout!r}: expected None or a number of seconds >= 0")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout={timeout!r}: expected None or a number of seconds >= 0")
    return float(timeout)
