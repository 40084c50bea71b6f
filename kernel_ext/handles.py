"""Running a submitted ``%%remote`` cell to the end: waiting, cancelling, errors.

:class:`RemoteCell` is the handle ``%%remote --bg`` returns (and what a blocking
cell uses internally): its wait is a loop of short ``runtime.wait`` calls, so a
kernel interrupt lands within one poll and cancels the remote task. Remote
errors are re-dressed to show only the cell's own frames, labelled with the
task and node, while staying instances of their original type.
"""

from __future__ import annotations

import html
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import runtime
from kernel_ext.cellrun import REMOTE_TB_ATTR, CellResult, ReprOnly, unpack
from kernel_ext.output import OutputRouter, StreamRelay
from runtime.errors import TaskError

__all__ = ["RemoteCell", "clean_error", "dress_remote_error", "POLL_S"]

#: Seconds between checks of a blocking cell (bounds how late an interrupt lands).
POLL_S = 0.1


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


class RemoteCell:
    """A submitted ``%%remote`` cell: its state, ``result()``, ``cancel()``, ``done()``.

    When it finishes, the names it pulls are written into the user namespace
    (once, by whichever comes first: the blocking wait, ``result()`` or, for
    ``--bg`` cells, a completion thread).
    """

    def __init__(self, ref: runtime.ObjectRef, number: Any, filename: str,
                 user_ns: MutableMapping[str, Any], router: OutputRouter | None,
                 relay: StreamRelay | None, output_name: str | None = None,
                 background: bool = False) -> None:
        self.ref = ref
        self.number = number
        self.filename = filename
        self.user_ns = user_ns
        self.background = background
        self.output_name = output_name
        self.started = time.monotonic()
        self.pulled: tuple[str, ...] = ()
        self.skipped: dict[str, str] = {}
        self._router = router
        self._relay = relay
        self._lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None  # (ok, value-or-error)
        self._finished = threading.Event()

    # -- state ------------------------------------------------------------------
    @property
    def task_id(self) -> Any:
        """The id of the remote task."""
        return self.ref.id

    @property
    def node(self) -> str | None:
        """The node the task ran (or runs) on, when known."""
        rec = self.ref.backend.log.tasks.get(self.ref.id)
        return rec.node if rec is not None else None

    @property
    def state(self) -> str:
        """``pending``, ``running``, ``finished``, ``failed`` or ``cancelled``."""
        if self._outcome is not None:
            ok, value = self._outcome
            if ok:
                return "finished"
            return "cancelled" if isinstance(value, runtime.TaskCancelledError) else "failed"
        rec = self.ref.backend.log.tasks.get(self.ref.id)
        if rec is not None and rec.state != "finished":
            return rec.state
        return "finished" if self.ref.done() else "running"

    def done(self) -> bool:
        """Whether the task has finished (never blocks)."""
        return self._outcome is not None or self.ref.done()

    # -- waiting -----------------------------------------------------------------
    def wait(self, timeout: float | None = None, poll: float | None = POLL_S) -> bool:
        """Block until the task is done or ``timeout`` passes (interruptible).

        Returns whether it is done. ``poll=None`` waits in one call (the sim
        backend, where time is virtual and a kernel interrupt reaches the engine).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        virtual = poll is None
        while True:
            if virtual:
                ready, _ = runtime.wait([self.ref], timeout=timeout)
                return bool(ready)
            step = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            ready, _ = runtime.wait([self.ref], timeout=step)
            if ready:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _settle(self) -> tuple[bool, Any]:
        """Fetch the outcome once and apply pulled names (thread-safe)."""
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            try:
                res: CellResult = runtime.get(self.ref, timeout=30)
            except TaskError as err:
                outcome: tuple[bool, Any] = (False, dress_remote_error(
                    err, self.task_id, self.node, self.filename))
            except BaseException as err:  # noqa: BLE001 - cancelled, crashed, shut down
                outcome = (False, clean_error(err))
            else:
                values, skipped = _localize(res.values)
                self.user_ns.update(values)
                self.pulled = tuple(values)
                self.skipped = {**res.skipped, **skipped}
                value = None
                if res.has_result and res.result is not None:
                    try:
                        value = unpack(res.result)
                    except Exception as exc:  # noqa: BLE001 - e.g. a class missing here
                        value = ReprOnly(f"<result could not be loaded here: {exc}>")
                if self.output_name:
                    self.user_ns[self.output_name] = value
                outcome = (True, value)
            self._outcome = outcome
        self._finished.set()
        if self._router is not None:
            self._router.unroute(self.task_id)
        return outcome

    def result(self, timeout: float | None = None) -> Any:
        """The value of the cell's last expression (None if it has none); raises its error."""
        if self._outcome is None:
            if not self.wait(timeout, poll=_poll_for(self.ref)):
                raise clean_error(runtime.GetTimeoutError(
                    f"%%remote task {self.task_id} did not finish within {timeout} s"))
        ok, value = self._settle()
        if not ok:
            raise value
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The cell's error, or None when it succeeded (blocks like ``result``)."""
        try:
            self.result(timeout)
        except runtime.GetTimeoutError:
            raise
        except BaseException as exc:  # noqa: BLE001
            return exc
        return None

    def cancel(self, grace: float = 1.0) -> bool:
        """Cancel the remote task: politely, then by force after ``grace`` seconds."""
        if self.done():
            return False
        runtime.cancel(self.ref)
        if not self.wait(grace):
            runtime.cancel(self.ref, force=True)
            self.wait(grace)
        return True

    # -- background completion ------------------------------------------------------
    def watch(self, on_done: Callable[[RemoteCell], None] | None = None) -> None:
        """When the task finishes, settle it from a helper thread and report in its cell."""
        def finish() -> None:
            """Settle the cell and write a one-line note into its cell."""
            ok, value = self._settle()
            if self._relay is not None:
                took = time.monotonic() - self.started
                if ok:
                    names = ", ".join(self.pulled) or "nothing"
                    msg = f"[%%remote {self.number}] finished in {took:.2f} s; pulled {names}\n"
                    self._relay.write("stdout", msg)
                    for name, why in self.skipped.items():
                        self._relay.write("stderr", f"[%%remote {self.number}] {name!r} was "
                                                    f"not brought back ({why})\n")
                else:
                    msg = (f"[%%remote {self.number}] {self.state}: "
                           f"{type(value).__name__}: {value} (see .result())\n")
                    self._relay.write("stderr", msg)
                self._relay.flush()
            if on_done is not None:
                on_done(self)

        def callback(_ref: Any) -> None:
            """The backend's done-callback: hand off to a helper thread."""
            threading.Thread(target=finish, name="kernel_ext-bg-finish", daemon=True).start()

        self.ref.add_done_callback(callback)

    # -- display ------------------------------------------------------------------------
    def __repr__(self) -> str:
        node = self.node
        where = f" on {node}" if node else ""
        return f"<%%remote [{self.number}] task {self.task_id}{where}: {self.state}>"

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


def _localize(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Unpack pulled values here; those that cannot be loaded are reported, not fatal."""
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, item in values.items():
        try:
            out[name] = unpack(item)
        except Exception as exc:  # noqa: BLE001 - a module missing here, say
            skipped[name] = f"could not be loaded here: {type(exc).__name__}: {exc}"
    return out, skipped


def _poll_for(ref: runtime.ObjectRef) -> float | None:
    return None if getattr(ref.backend, "kind", "") == "sim" else POLL_S

