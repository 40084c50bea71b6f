"""What ``%%remote`` does with a cell: check the flags, ship, submit, wait, report.

:class:`CellRunner` turns a cell into one task (or, with ``--all``, one per worker:
:mod:`kernel_ext.everywhere`). A blocking cell waits in short steps; after a
second still pending it says what it waits for and what holds it
(:func:`kernel_ext.holders.pending_notice`); an interrupt cancels the task and
shows one line; ``--timeout`` says whether the cell was still waiting or ran.
"""

from __future__ import annotations

import ast
import math
import re
import sys
import threading
import traceback
from typing import Any

from IPython.core.error import UsageError

import runtime
from kernel_ext import holders
from kernel_ext.capture import analyze_cell
from kernel_ext.cellrun import CellPayload, pack, run_cell
from kernel_ext.errors import clean_error, one_line
from kernel_ext.handles import RemoteCell, poll_for, print_notes
from kernel_ext.output import StreamRelay, current_parent
from runtime.options import validate_options
from runtime.serialization import describe_unpicklable

__all__ = ["CellRunner", "PENDING_NOTICE_S"]

#: A blocking cell still pending after this long (backend clock) says why.
PENDING_NOTICE_S = 1.0
_FLAGS = {"num_cpus": "--cpus", "num_gpus": "--gpus", "resources": "--resources",
          "accelerator_type": "--accelerator", "max_retries": "--retries"}


def csv(text: str | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def flagify(text: str, flags: dict[str, str] = _FLAGS) -> str:
    """Say ``--cpus -1`` where the runtime's message says ``num_cpus=-1``."""
    for key, flag in flags.items():
        text = re.sub(rf"\b{key}=(?=[^\s/,:.;)])", f"{flag} ", text)  # key=VALUE
        text = re.sub(rf"\b{key}=", flag, text)  # a bare key=
    return text


class CellRunner:
    """Runs ``%%remote`` cells for one shell (``magics`` holds the cluster state)."""

    def __init__(self, magics: Any) -> None:
        self.magics = magics
        self.shell = magics.shell

    # ------------------------------------------------------------------ checks
    def options(self, args: Any) -> dict[str, Any]:
        """The task options the flags ask for (a ``UsageError`` names a bad flag)."""
        opts: dict[str, Any] = {}
        if args.cpus is not None:
            opts["num_cpus"] = args.cpus
        if args.gpus is not None:
            opts["num_gpus"] = args.gpus
        if args.accelerator is not None:
            opts["accelerator_type"] = args.accelerator
        if args.retries is not None:
            if args.retries < 0:
                raise UsageError(f"--retries {args.retries}: expected an int >= 0 (how many "
                                 f"times to run the cell again if its worker dies)")
            opts["max_retries"] = args.retries
        if args.resources is not None:
            opts["resources"] = self._resources(args.resources)
        if args.timeout is not None and (math.isnan(args.timeout) or args.timeout <= 0):
            raise UsageError(f"--timeout {args.timeout}: expected a number of seconds > 0")
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o {args.output!r}: expected a variable name")
        if args.all:
            for flag, value in (("--bg", args.bg or None), ("--pull", args.pull),
                                ("--cpus", args.cpus), ("--gpus", args.gpus),
                                ("--resources", args.resources),
                                ("--accelerator", args.accelerator),
                                ("--retries", args.retries)):
                if value is not None:
                    raise UsageError(f"--all with {flag}: a setup cell runs once in every "
                                     f"worker, keeps its names there and brings none back; "
                                     f"it takes only --push, -o and --timeout")
        try:
            return validate_options("task", opts)
        except (TypeError, ValueError) as exc:
            raise UsageError(flagify(str(exc))) from None

    @staticmethod
    def _resources(text: str) -> dict[str, float]:
        res: dict[str, float] = {}
        for item in csv(text):
            key, sep, value = item.partition("=")
            try:
                res[key.strip()] = float(value)
            except ValueError:
                raise UsageError(f"--resources {text!r}: expected K=V,... with numbers, "
                                 f"e.g. TPU=1,QPU=0.5") from None
            if not sep:
                raise UsageError(f"--resources {text!r}: expected K=V,...")
            own = {"CPU": "--cpus", "GPU": "--gpus"}.get(key.strip())
            if own is not None:
                raise UsageError(f"--resources {text!r}: {key.strip()} has its own flag; "
                                 f"use {own} {res[key.strip()]:g} instead")
        return res

    def ship(self, names: set[str], pushed: list[str]) -> dict[str, Any]:
        """Pickle the values of ``names`` (and ``--push``); name any that cannot travel."""
        ns = self.shell.user_ns
        values: dict[str, Any] = {}
        for name in pushed:
            if name not in ns:
                raise UsageError(f"--push {name}: there is no variable {name!r}")
        for name in sorted(names | set(pushed)):
            if name not in ns:
                continue  # a builtin, a worker's setup name, or a NameError remotely
            value = ns[name]
            try:
                values[name] = pack(value)
            except Exception as exc:  # noqa: BLE001 - name the variable and the culprit
                inner = describe_unpicklable(value) or f"{type(exc).__name__}: {exc}"
                raise clean_error(runtime.SerializationError(
                    f"variable {name!r} of type {type(value).__name__} cannot be shipped to "
                    f"the cluster: the failing part is {inner}. Leave it out of the cell, "
                    f"or build it inside the cell.")) from None
        return values

    def analyze(self, cell: str, filename: str) -> Any:
        """The cell's analysis; a syntax error (or IPython syntax) is a ``UsageError``."""
        try:
            return analyze_cell(cell, filename)
        except SyntaxError as exc:
            # IPython shows any SyntaxError raised by a magic with the magic's own
            # frames; a UsageError carrying the formatted error shows no frames.
            lineno = (exc.lineno or 0) + 1  # the %%remote line is line 1
            transformed = self.shell.transform_cell(cell)
            if transformed.strip() != cell.strip():
                try:
                    ast.parse(transformed)
                except SyntaxError:
                    pass
                else:
                    raise UsageError(f"%%remote cells are plain Python; line {lineno} uses "
                                     f"IPython syntax (%magic, !shell, ?help) that only runs "
                                     f"in the kernel. Nothing was submitted.") from None
            exc.lineno = lineno
            if exc.end_lineno:
                exc.end_lineno += 1
            shown = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
            raise UsageError(f"syntax error in the %%remote cell; nothing was submitted.\n"
                             f"{shown}") from None

    # ------------------------------------------------------------------ running
    def run(self, args: Any, cell: str) -> Any:
        """Run ``cell`` as the flags say; returns what the cell displays."""
        opts = self.options(args)
        number = self.shell.execution_count
        filename = f"<remote cell {number}>"
        analysis = self.analyze(cell, filename)
        values = self.ship(set(analysis.reads), csv(args.push))
        backend = self.magics._backend(auto=True)
        if args.bg and args.timeout and backend.kind == "sim":
            raise UsageError("--bg with --timeout on the sim backend: its clock is virtual "
                             "and moves only while the notebook waits; use "
                             "job.result(timeout=S) instead")
        if args.all:
            from kernel_ext.everywhere import run_everywhere

            value = run_everywhere(self, args, cell, analysis, values, number, filename)
            return None if analysis.quiet else value
        pull = tuple(csv(args.pull)) if args.pull is not None else analysis.writes
        check = tuple(sorted(analysis.maybe_mutated & set(values)))
        router = self.magics._ensure_router(backend)
        fn = runtime.RemoteFunction(run_cell, {"max_retries": 0, **opts,
                                               "name": f"%%remote[{number}]"})
        relay = self.relay()
        payload = CellPayload(cell, filename, 1, values, pull, check,
                              tuple(self.magics.setups))
        sys.stdout.flush()
        with router.lock:
            try:
                ref = fn.remote(payload)
            except (runtime.InfeasibleRequestError, runtime.SerializationError) as exc:
                raise clean_error(exc) from None
            router.route(ref.id, relay)
        handle = RemoteCell(ref, number, filename, self.shell.user_ns, router, relay,
                            output_name=args.output if not args.bg else None,
                            background=args.bg)
        if args.bg:
            self.magics.cells = [c for c in self.magics.cells if not c.done()] + [handle]
            if args.output:
                self.shell.user_ns[args.output] = handle
            handle.watch()
            if args.timeout:
                timer = threading.Timer(args.timeout, handle.cancel)
                timer.daemon = True
                timer.start()
            return handle
        value = self.block(handle, args.timeout)
        return None if analysis.quiet else value

    def relay(self) -> StreamRelay:
        """A relay to the cell now running (its parent message, streams, displays)."""
        return StreamRelay(current_parent(self.shell), sys.stdout, sys.stderr,
                           display_pub=getattr(self.shell, "display_pub", None))

    def block(self, handle: RemoteCell, timeout: float | None) -> Any:
        """Wait for a blocking cell: pending notice, interrupt, timeout; then its value."""
        try:
            done, waited = self._wait(handle, timeout)
        except KeyboardInterrupt:
            what = f"task {handle.task_id} cancelled"
            try:
                handle.cancel()
            except Exception:  # noqa: BLE001 - the sim engine was stopped mid-step
                what = (f"the simulation was stopped inside task {handle.task_id}, which "
                        f"kept the engine busy for real; start again with %cluster "
                        f"disconnect and %cluster connect sim")
            finally:
                self._unroute(handle)
            raise one_line(KeyboardInterrupt(), f"%%remote [{handle.number}]: interrupted; "
                                                f"{what}") from None
        if not done:
            err = self._timeout_error(handle, timeout or 0.0, handle.state, waited)
            handle.cancel()
            self._unroute(handle)
            raise err
        ok, value = handle._settle()
        sys.stdout.flush()
        sys.stderr.flush()
        print_notes(handle)
        if not ok:
            raise value
        return value

    def _unroute(self, handle: RemoteCell) -> None:
        if self.magics.router is not None:
            self.magics.router.unroute(handle.task_id)

    def _wait(self, handle: RemoteCell, timeout: float | None) -> tuple[bool, float]:
        """Wait in steps; returns (done, how long it was pending) on the backend clock."""
        backend = handle._runtime_ref_().backend
        poll = poll_for(handle._runtime_ref_())
        t0 = backend.now()
        notice_at: float | None = t0 + PENDING_NOTICE_S
        waited, noticed = 0.0, False
        while True:
            now = backend.now()
            steps = [s for s in (poll, None if notice_at is None else notice_at - now,
                                 None if timeout is None else t0 + timeout - now)
                     if s is not None]
            step = max(min(steps), 0.0) if steps else None
            if handle.wait(step, poll=None):
                if noticed:
                    print(f"%%remote [{handle.number}]: ran on {handle.node} after waiting "
                          f"{holders.clock_words(backend, round(waited, 1))}",
                          file=sys.stderr, flush=True)
                return True, waited
            now = backend.now()
            state = handle.state
            if state == "pending":
                waited = now - t0
            if notice_at is not None and now >= notice_at:
                notice_at = None
                msg = holders.pending_notice(backend, handle.task_id, now - t0,
                                             holders.book_for(backend, create=False))
                if msg:
                    noticed = True
                    print(f"%%remote [{handle.number}]: {msg}", file=sys.stderr, flush=True)
            if noticed and state not in ("pending",):
                noticed = False
                print(f"%%remote [{handle.number}]: started on {handle.node} after waiting "
                      f"{holders.clock_words(backend, round(waited, 1))}", file=sys.stderr,
                      flush=True)
            if timeout is not None and now - t0 >= timeout:
                return False, waited

    def _timeout_error(self, handle: RemoteCell, timeout: float, state: str,
                       waited: float) -> BaseException:
        backend = handle._runtime_ref_().backend
        t = holders.clock_words(backend, timeout)
        if state == "pending":
            why = holders.pending_notice(backend, handle.task_id, waited,
                                         holders.book_for(backend, create=False)) or "it was pending"
            text = (f"%%remote --timeout {timeout:g}: the cell never started within {t} "
                    f"({why}); task {handle.task_id} was cancelled")
        else:
            ran = max(timeout - waited, 0.0)
            text = (f"%%remote --timeout {timeout:g}: the cell ran for "
                    f"{holders.clock_words(backend, round(ran, 1))}"
                    + (f" (after waiting {holders.clock_words(backend, round(waited, 1))} to "
                       f"start)" if waited >= 0.05 else "")
                    + f" and did not finish within {t}; task {handle.task_id} was cancelled")
        return clean_error(runtime.GetTimeoutError(text))
