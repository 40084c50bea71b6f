"""Pickling values for the trip to a worker, with errors that name the culprit.

Functions and classes defined in a notebook (``__main__``) travel by value with
cloudpickle. When something cannot be pickled, :func:`describe_unpicklable`
digs into containers and attributes to say *which* part fails, so the error can
name the argument, its type and the attribute inside it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import cloudpickle

from runtime.errors import SerializationError, portable_exception

__all__ = ["dumps", "loads", "describe_unpicklable", "check_picklable", "check_call_args",
           "portable_exception"]


def dumps(value: Any, buffer_callback: Any = None) -> bytes:
    """cloudpickle ``value`` with protocol 5 (out-of-band buffers when a callback is given)."""
    if buffer_callback is None:
        return cloudpickle.dumps(value, protocol=5)
    f = io.BytesIO()
    cloudpickle.CloudPickler(f, protocol=5, buffer_callback=buffer_callback).dump(value)
    return f.getvalue()


def loads(data: bytes, buffers: Any = None) -> Any:
    """Inverse of :func:`dumps`."""
    return pickle.loads(data, buffers=buffers)


def _try(value: Any) -> BaseException | None:
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        return exc
    return None


def describe_unpicklable(value: Any, path: str = "", depth: int = 0) -> str | None:
    """A path to the innermost part of ``value`` that cannot be pickled, with its type.

    Returns None when ``value`` pickles. Example: ``.conn (socket)`` or ``[2] (generator)``.
    """
    err = _try(value)
    if err is None:
        return None
    if depth < 4:
        children: list[tuple[str, Any]] = []
        if isinstance(value, Mapping):
            children = [(f"[{k!r}]", v) for k, v in list(value.items())[:200]]
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = [(f"[{i}]", v) for i, v in enumerate(list(value)[:200])]
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            try:
                children = [(f".{k}", v) for k, v in list(vars(value).items())[:200]]
            except TypeError:
                children = []
        for label, child in children:
            inner = describe_unpicklable(child, path + label, depth + 1)
            if inner is not None:
                return inner
    return f"{path or 'the value'} ({type(value).__name__}: {err})"


def check_picklable(value: Any, what: str) -> None:
    """Raise :class:`SerializationError` naming ``what`` when ``value`` cannot be pickled."""
    if _try(value) is None:
        return
    inner = describe_unpicklable(value)
    raise SerializationError(
        f"{what} of type {type(value).__name__} cannot be pickled to send to a worker: "
        f"the failing part is {inner}"
    )


def check_call_args(fn_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Check each argument of a call separately, so the error names the bad one."""
    for i, a in enumerate(args):
        check_picklable(a, f"argument {i} of {fn_name}()")
    for k, v in kwargs.items():
        check_picklable(v, f"argument {k!r} of {fn_name}()")

