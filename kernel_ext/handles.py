"""A submitted ``%%remote`` cell: the future ``--bg`` returns (and blocking cells use).

:class:`RemoteCell` is a :class:`concurrent.futures.Future`: ``await job``,
``concurrent.futures.wait``/``as_completed``, ``runtime.get(job)`` and
``runtime.wait([job, ...])`` all work with it. Its wait is a loop of short
``runtime.wait`` calls, so a kernel interrupt lands within one poll and cancels
the remote task. When it finishes, the pulled names and the in-place changes
are written into the notebook (once, by whichever comes first).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import sys
import threading
import time
from collections.abc import Callable, Generator, MutableMapping
from typing import Any

import runtime
from kernel_ext.cellrun import CellResult, ReprOnly, unpack
from kernel_ext.errors import cell_error, clean_error
from kernel_ext.holders import clock_words
from kernel_ext.inplace import apply_in_place
from kernel_ext.output import OutputRouter, StreamRelay

__all__ = ["RemoteCell", "POLL_S", "poll_for", "print_notes"]

#: Seconds between checks of a blocking cell (bounds how late an interrupt lands).
POLL_S = 0.1
#: How long a finished cell waits for the end of its output to arrive (dask events).
DRAIN_S = 2.0
_TERMINAL = ("finished", "failed", "cancelled")


def poll_for(ref: runtime.ObjectRef) -> float | None:
    """The poll step for ``ref``'s backend (None on sim: one call, virtual time)."""
    return None if getattr(ref.backend, "kind", "") == "sim" else POLL_S


class RemoteCell(concurrent.futures.Future):  # type: ignore[type-arg]
    """A submitted ``%%remote`` cell: ``result()``, ``cancel()``, ``done()``, ``state``...

    A real future: awaitable, and usable with ``concurrent.futures.wait`` /
    ``as_completed`` (settled from a helper thread; on the sim backend, where
    time moves only while the notebook waits, use ``runtime.wait``/``get`` or
    ``kernel_ext.gather``) and with ``runtime.get``/``runtime.wait``.
    """

    def __init__(self, ref: runtime.ObjectRef, number: Any, filename: str,
                 user_ns: MutableMapping[str, Any], router: OutputRouter | None,
                 relay: StreamRelay | None, output_name: str | None = None,
                 background: bool = False) -> None:
        super().__init__()
        self._ref = ref
        self.number = number
        self.filename = filename
        self.user_ns = user_ns
        self.background = background
        self.output_name = output_name
        self.started = time.monotonic()
        self.pulled: tuple[str, ...] = ()
        self.mutated: tuple[str, ...] = ()
        self.skipped: dict[str, str] = {}
        self.unknown: dict[str, str] = {}
        self._router = router
        self._relay = relay
        self._settle_lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None  # (ok, value-or-error)

    # -- state ------------------------------------------------------------------
    @property
    def task_id(self) -> Any:
        """The id of the remote task."""
        return self._ref.id

    @property
    def node(self) -> str | None:
        """The node the task ran (or runs) on, when known."""
        rec = self._ref.backend.log.tasks.get(self._ref.id)
        return rec.node if rec is not None else None

    @property
    def state(self) -> str:
        """``pending``, ``running``, ``finished``, ``failed`` or ``cancelled``."""
        if self._outcome is not None:
            ok, value = self._outcome
            if ok:
                return "finished"
            return "cancelled" if isinstance(value, runtime.TaskCancelledError) else "failed"
        rec = self._ref.backend.log.tasks.get(self._ref.id)
        if rec is not None and rec.state != "finished":
            return rec.state
        return "finished" if self._ref.done() else "running"

    def _runtime_ref_(self) -> runtime.ObjectRef:
        """The task's ref (``runtime.get``/``wait`` wait on it, then ask this handle)."""
        return self._ref

    def done(self) -> bool:
        """Whether the task has finished (never blocks)."""
        return self._outcome is not None or self._ref.done()

    def running(self) -> bool:
        """Whether the task has started and not finished."""
        return not self.done() and self.state in ("running", "blocked")

    def cancelled(self) -> bool:
        """Whether the cell ended by cancellation."""
        return self.done() and self.state == "cancelled"

    # -- waiting -----------------------------------------------------------------
    def wait(self, timeout: float | None = None, poll: float | None = POLL_S) -> bool:
        """Block until the task is done or ``timeout`` passes (interruptible).

        Returns whether it is done. ``poll=None`` waits in one call (the sim
        backend, where time is virtual and a kernel interrupt reaches the engine).
        """
        if poll is None:
            ready, _ = runtime.wait([self._ref], timeout=timeout)
            return bool(ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            ready, _ = runtime.wait([self._ref], timeout=step)
            if ready:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _drain(self) -> None:
        """Let the task's last output arrive before its relay is dropped (dask sends
        output as events, which can trail the result by a moment)."""
        log = self._ref.backend.log
        deadline = time.monotonic() + DRAIN_S
        ev = threading.Event()
        while time.monotonic() < deadline:
            rec = log.tasks.get(self._ref.id)
            if rec is None or rec.state in _TERMINAL:
                return
            ev.wait(0.01)

    def _settle(self) -> tuple[bool, Any]:
        """Fetch the outcome once, apply pulled names and in-place changes (thread-safe)."""
        with self._settle_lock:
            if self._outcome is not None:
                return self._outcome
            try:
                res: CellResult = runtime.get(self._ref, timeout=30)
            except BaseException as err:  # noqa: BLE001 - failed, cancelled, crashed
                outcome: tuple[bool, Any] = (False, cell_error(
                    err, self.task_id, self.node, self.filename, self.number))
            else:
                outcome = (True, self._apply(res))
            self._outcome = outcome
        if not concurrent.futures.Future.done(self):
            ok, value = outcome
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        if self._router is not None:
            if getattr(self._ref.backend, "kind", "") == "dask":
                self._drain()
            self._router.unroute(self.task_id)
        return outcome

    def _apply(self, res: CellResult) -> Any:
        values, skipped = _localize(res.values)
        mutated = set(res.mutated)
        for name, new in values.items():
            if name in mutated and name in self.user_ns and \
                    apply_in_place(self.user_ns[name], new):
                continue
            self.user_ns[name] = new
        self.pulled = tuple(n for n in values if n not in mutated)
        self.mutated = tuple(n for n in res.mutated if n in values)
        self.skipped = {**res.skipped, **skipped}
        self.unknown = dict(res.unknown)
        value = None
        if res.has_result and res.result is not None:
            try:
                value = unpack(res.result)
            except Exception as exc:  # noqa: BLE001 - e.g. a class missing here
                value = ReprOnly(f"<result could not be loaded here: {exc}>")
        if self.output_name:
            self.user_ns[self.output_name] = value
        return value

    def notes(self) -> list[str]:
        """One line per name that did not come back, or whose change cannot be known."""
        out = [f"{name!r} was not brought back ({why})" for name, why in self.skipped.items()]
        out += [f"{name!r} may have been changed in place on the worker; that cannot be "
                f"checked ({why}), so the notebook keeps its own value"
                for name, why in self.unknown.items()]
        return out

    def result(self, timeout: float | None = None) -> Any:
        """The value of the cell's last expression (None if it has none); raises its error.

        On the sim backend ``timeout`` is in virtual seconds.
        """
        if self._outcome is None:
            if not self.wait(timeout, poll=poll_for(self._ref)):
                raise clean_error(runtime.GetTimeoutError(
                    f"%%remote task {self.task_id} did not finish within "
                    f"{clock_words(self._ref.backend, timeout or 0)} (it is {self.state}; "
                    f"the task keeps running)"))
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
        runtime.cancel(self._ref)
        if not self.wait(grace, poll=poll_for(self._ref)):
            runtime.cancel(self._ref, force=True)
            self.wait(grace, poll=poll_for(self._ref))
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> Any:
        if not self.done():
            try:
                await self._ref  # drives virtual time on the sim backend
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001, S110 - the outcome below carries it
                pass
        return self.result()

    # -- background completion ------------------------------------------------------
    def watch(self, on_done: Callable[[RemoteCell], None] | None = None) -> None:
        """When the task finishes, settle it from a helper thread and report in its cell."""
        def finish() -> None:
            """Settle the cell and write a one-line note into its cell."""
            ok, value = self._settle()
            if self._relay is not None:
                took = time.monotonic() - self.started
                if ok:
                    names = ", ".join(self.pulled + self.mutated) or "nothing"
                    msg = f"[%%remote {self.number}] finished in {took:.2f} s; pulled {names}\n"
                    self._relay.write("stdout", msg)
                    for note in self.notes():
                        self._relay.write("stderr", f"[%%remote {self.number}] {note}\n")
                else:
                    msg = (f"[%%remote {self.number}] {self.state}: "
                           f"{type(value).__name__}: {value} (see .result())\n")
                    self._relay.write("stderr", msg)
                self._relay.flush()
            if on_done is not None:
                on_done(self)

        def callback(_ref: Any) -> None:
            """The backend's done-callback: hand off to a helper thread."""
            if getattr(self._ref.backend, "kind", "") == "sim":
                finish()  # the engine's own thread: the sim accepts calls only here
                return
            threading.Thread(target=finish, name="kernel_ext-bg-finish", daemon=True).start()

        self._ref.add_done_callback(callback)

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


def print_notes(handle: RemoteCell) -> None:
    """Write the handle's notes to stderr (the end of a blocking cell)."""
    for note in handle.notes():
        print(f"%%remote: {note}", file=sys.stderr)
