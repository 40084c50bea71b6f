"""In-place changes: finding them on the worker, applying them in the notebook.

A cell such as ``d['k'] = 2`` or ``items.append(3)`` changes a *shipped copy*.
The analysis (:func:`kernel_ext.capture.impure_names`) lists the shipped names a
cell may change; the worker takes a :func:`fingerprint` of each before and after
the cell (the pickle, with a CRC of each out-of-band buffer) and sends back the
values whose fingerprint changed. The notebook then updates its own object in
place where it can (:func:`apply_in_place`: dicts, lists, sets, bytearrays, numpy
arrays, plain objects), so other references to it see the change, or rebinds
the name.
"""

from __future__ import annotations

import pickle
import sys
import types
import zlib
from typing import Any

import cloudpickle

__all__ = ["fingerprint", "checkable", "apply_in_place", "share_function_globals"]

Fingerprint = tuple[bytes, tuple[tuple[int, int], ...]]

_NOT_DATA = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type,
             types.MethodType)


def checkable(value: Any) -> bool:
    """Whether ``value`` holds data a cell could change (not a module, function, class)."""
    return not isinstance(value, _NOT_DATA)


def fingerprint(value: Any) -> Fingerprint | None:
    """The value's pickle and a CRC per out-of-band buffer; None if it cannot be pickled."""
    raw: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=raw.append)
    except Exception:  # noqa: BLE001 - the caller says the change cannot be known
        return None
    crcs = []
    for b in raw:
        try:
            view = b.raw()
        except BufferError:  # not contiguous
            view = memoryview(bytes(memoryview(b)))
        crcs.append((view.nbytes, zlib.crc32(view)))
    return data, tuple(crcs)


def share_function_globals(ns: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Make the shipped functions and the cell see one object per notebook global.

    Functions from earlier cells travel by value with copies of the globals they
    use. After this, ``f.__globals__[g]`` is the cell's ``g`` when the cell has it;
    returned are the data globals functions use (one object per name, the cell's
    where it has one), which a function may change, so they are checked too.
    """
    used: dict[str, Any] = {}
    module_dicts: set[int] | None = None
    for name in names:
        fn = ns.get(name)
        if not isinstance(fn, types.FunctionType) or fn.__globals__ is ns:
            continue
        if module_dicts is None:  # a function of a real module (by reference): not ours
            module_dicts = {id(vars(m)) for m in list(sys.modules.values())
                            if getattr(m, "__dict__", None) is not None}
        if id(fn.__globals__) in module_dicts:
            continue
        g = fn.__globals__
        for key in list(g):
            if key.startswith("__"):
                continue
            if key in ns:
                g[key] = ns[key]
            elif key in used:
                g[key] = used[key]
            if checkable(g[key]):
                used[key] = g[key]
    return used


def apply_in_place(old: Any, new: Any) -> bool:
    """Copy ``new``'s state into ``old`` (same type); False when only rebinding can work."""
    if type(old) is not type(new) or old is new:
        return False
    try:
        if isinstance(old, dict):
            old.clear()
            old.update(new)
        elif isinstance(old, (list, bytearray)):
            old[:] = new
        elif isinstance(old, set):
            old.clear()
            old.update(new)
        elif type(old).__module__ == "numpy" and hasattr(old, "flags"):
            if old.shape != new.shape or old.dtype != new.dtype or not old.flags.writeable:
                return False
            old[...] = new
        elif _plain_object(old):
            old.__dict__.clear()
            old.__dict__.update(new.__dict__)
        else:
            return False
    except Exception:  # noqa: BLE001 - e.g. a read-only mapping: rebind instead
        return False
    return True


def _plain_object(value: Any) -> bool:
    """An instance whose whole state is its ``__dict__`` (default pickling)."""
    cls = type(value)
    return (hasattr(value, "__dict__") and not isinstance(value, _NOT_DATA)
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__setstate__", None) is None
            and not hasattr(cls, "__slots__"))
