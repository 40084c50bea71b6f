"""The wire format between the local driver and its worker processes.

Messages are plain tuples pickled with protocol 5 over a socketpair
(``multiprocessing.connection.Connection``); values inside them are already
*blobs* (see :mod:`.store`), so nothing is pickled twice. A message may be a
``("batch", [msg, ...])`` of several. Errors travel as *error records*, also
blobs: ``("task", cause, traceback, cause_type, task_name, task_id, node)`` for
a task's own exception, ``("sys", exception)`` for the runtime's errors.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from runtime.backends.local.store import Blob, deserialize, serialize
from runtime.errors import NBClusterError, SerializationError, TaskError, make_task_error
from runtime.serialization import portable_exception

__all__ = ["dumps", "loads", "task_error_record", "sys_error_record", "error_from_record"]

_HIGHEST = 5


def dumps(msg: Any) -> bytes:
    """Frame one message."""
    return pickle.dumps(msg, protocol=_HIGHEST)


loads = pickle.loads


def task_error_record(exc: BaseException, task_name: str, task_id: Any, node: str | None,
                      owner_pid: int, skip_frames: int = 1) -> Blob:
    """The record of a task's own exception, with its remote traceback text."""
    if isinstance(exc, TaskError):  # a nested get re-raised a dependency's error
        try:
            return serialize(("sys", exc), owner_pid)
        except Exception:  # noqa: BLE001 - fall through to the plain record
            pass
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    ctype = type(exc).__name__
    try:  # a cause whose __init__ needs other arguments still keeps its type and message
        return serialize(("task", portable_exception(exc), text, ctype, task_name, task_id,
                          node), owner_pid)
    except Exception:  # noqa: BLE001 - unpicklable exception: keep type name and text
        return serialize(("task", None, text, ctype, task_name, task_id, node), owner_pid)


def sys_error_record(exc: BaseException, owner_pid: int) -> Blob:
    """The record of one of the runtime's own errors (worker crashed, cancelled...)."""
    try:
        return serialize(("sys", exc), owner_pid)
    except Exception:  # noqa: BLE001
        return serialize(("sys", NBClusterError(str(exc))), owner_pid)


def error_from_record(blob: Blob) -> BaseException:
    """The exception ``get`` raises for an error record."""
    try:
        rec = deserialize(blob)
    except Exception as exc:  # noqa: BLE001 - the cause's class may not import here
        return SerializationError(f"could not unpickle a task's error: {exc!r}")
    if rec[0] == "sys":
        return rec[1]
    _, cause, tb, ctype, name, task_id, node = rec
    return make_task_error(cause, tb, task_name=name, task_id=task_id, node=node,
                           cause_type=ctype)
