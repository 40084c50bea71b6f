"""How ``%%remote`` errors look in the notebook: the message, or the cell's remote frames.

:func:`clean_error` makes IPython show an exception as its message only (no
internal frames); :func:`dress_remote_error` shows a remote exception's own
frames, headed with the task and node, keeping its type; :func:`cell_error`
adds the notebook's words for errors whose advice fits only Python code.
"""

from __future__ import annotations

import traceback
from typing import Any

from kernel_ext.cellexec import REMOTE_TB_ATTR
from runtime.errors import TaskError, WorkerCrashedError

__all__ = ["clean_error", "dress_remote_error", "cell_error", "one_line"]


def one_line(exc: BaseException, text: str) -> BaseException:
    """Make IPython show ``exc`` as ``Name: text`` only."""
    return clean_error(exc, f"{type(exc).__name__}: {text}")


def clean_error(exc: BaseException, text: str | None = None) -> BaseException:
    """Make IPython show ``exc`` as its message only (no internal traceback)."""
    lines = [text if text is not None else
             "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")]
    try:
        exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return exc


def _trim_text(tb_text: str, filename: str) -> str:
    lines = tb_text.splitlines(True)
    marker = f'File "{filename}"'
    for i, line in enumerate(lines):
        if marker in line:
            return "Traceback (most recent call last):\n" + "".join(lines[i:])
    return tb_text


_NAMED: dict[type, type] = {}


def _cause_str(self: TaskError) -> str:
    if self.cause is not None:
        return str(self.cause)
    return self.cause_type


def dress_remote_error(err: TaskError, task_id: Any, node: str | None,
                       filename: str) -> TaskError:
    """Show only the cell's remote frames, headed by task and node; keep the type.

    The error stays an instance of ``TaskError`` and of the remote exception's
    type, and is renamed after the latter (so Jupyter's ``ename`` is ``ValueError``).
    """
    cause = err.cause
    text = getattr(cause, REMOTE_TB_ATTR, None) or _trim_text(err.remote_traceback or "",
                                                             filename)
    if not text:
        text = f"{err.cause_type}: {_cause_str(err)}\n"
    where = f" on node {node or err.node}" if (node or err.node) else ""
    header = f"{err.cause_type} in %%remote task {task_id}{where} (remote traceback):"
    lines = [header, text.rstrip("\n")]
    cls = type(err)
    named = _NAMED.get(cls)
    if named is None:
        try:
            named = type(err.cause_type.rsplit(".", 1)[-1] or cls.__name__, (cls,),
                         {"__module__": cls.__module__, "__str__": _cause_str})
        except TypeError:
            named = cls
        _NAMED[cls] = named
    try:
        err.__class__ = named
    except TypeError:
        pass
    err._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return err


def cell_error(err: BaseException, task_id: Any, node: str | None, filename: str,
               number: Any) -> BaseException:
    """The error a ``%%remote`` cell shows for ``err`` (what ``get`` raised)."""
    if isinstance(err, TaskError) and err.cause_type.rsplit(".", 1)[-1] == "CellExit":
        from kernel_ext.cellexec import CellExit

        code = getattr(err.cause, "code", None)
        text = (f"the cell called sys.exit({'' if code is None else repr(code)}) on the "
                f"worker (task {task_id}) and stopped there; nothing was brought back. "
                f"The kernel keeps running.")
        return clean_error(CellExit(code), f"CellExit: {text}")
    if isinstance(err, TaskError):
        return dress_remote_error(err, task_id, node, filename)
    if isinstance(err, WorkerCrashedError):
        text = str(err).replace("raise max_retries to try more often",
                                "run the cell with %%remote --retries N to try more often")
        return clean_error(err, f"{type(err).__name__}: {text}")
    return clean_error(err)
