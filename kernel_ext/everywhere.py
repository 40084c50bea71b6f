"""``%%remote --all``: run a setup cell in every worker, output labelled per node.

- **dask**: one copy pinned to each worker (``client.submit(workers=[name])``).
- **local**: the runtime cannot pin a task to a node, so one copy per free CPU
  slot (each slot is its own worker process), the copies waiting for each other
  (up to :data:`BARRIER_S`) so that each lands in its own process.
- **sim**: every node lives in the notebook's process: the cell runs once.

Workers that were busy, join later or restart run the cell before their next
``%%remote`` cell (:mod:`kernel_ext.workerns`). The names the cell assigns stay on
the workers; the last expression comes back as ``{"node (pid N)": value}``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import runtime
from kernel_ext.cellexec import ReprOnly, unpack
from kernel_ext.errors import cell_error, clean_error, one_line
from kernel_ext.handles import POLL_S
from kernel_ext.output import LabelRelay
from kernel_ext.workerns import SetupCell, SetupRun, run_setup

__all__ = ["run_everywhere", "BARRIER_S"]

#: How long copies on the local backend wait for each other.
BARRIER_S = 10.0


def _dask_copy(run: SetupRun, out_id: str) -> tuple[int, bool, Any]:
    """A copy on a dask worker: its prints go to the cell as ``out_id``'s output."""
    from distributed import get_worker

    from runtime.backends.dask import _remote

    with _remote.forward_output(get_worker(), out_id):
        return run_setup(run)


@dataclass
class _Copy:
    """One copy of the cell: a runtime ref (local, sim) or a dask future, and its relay."""

    key: Any  # the id its output is routed by
    relay: LabelRelay
    ref: Any = None
    fut: Any = None
    finished: threading.Event = field(default_factory=threading.Event)  # dask copies

    def done(self) -> bool:
        """Whether the copy has finished."""
        return bool(self.fut.done() if self.fut is not None else self.ref.done())

    def outcome(self) -> tuple[int, bool, Any]:
        """``(pid, ran, packed value)``; raises the copy's error."""
        if self.fut is not None:
            return self.fut.result()
        return runtime.get(self.ref, timeout=30)

    def cancel(self) -> None:
        """Stop the copy (by force on the runtime's backends)."""
        if self.fut is not None:
            self.fut.cancel()
        else:
            runtime.cancel(self.ref, force=True)


def run_everywhere(runner: Any, args: Any, cell: str, analysis: Any, values: dict[str, Any],
                   number: Any, filename: str) -> Any:
    """Run the setup cell now where the backend allows, register it for the rest."""
    magics = runner.magics
    backend = magics._backend(auto=True)
    router = magics._ensure_router(backend)
    relay = runner.relay()
    setup = SetupCell(uuid.uuid4().hex, number, cell, filename, values)
    earlier = tuple(magics.setups)
    copies: list[_Copy] = []
    barrier: str | None = None
    try:
        if backend.kind == "dask":
            run = SetupRun(setup, earlier)
            for node in [n.id for n in backend.nodes() if n.state == "up"]:
                key = f"nbcluster-setup-{setup.key}-{node}"
                c = _Copy(key, LabelRelay(relay, f"[{node}] "))
                router.route(key, c.relay)
                c.fut = backend.client.submit(_dask_copy, run, key, key=key, pure=False,
                                              workers=[node], allow_other_workers=False)
                c.fut.add_done_callback(lambda _f, ev=c.finished: ev.set())
                copies.append(c)
        else:
            if backend.kind == "sim":
                n = 1
            else:
                n = sum(math.floor(nd.free.get("CPU", 0.0) + 1e-9)
                        for nd in backend.nodes() if nd.state == "up")
                if n == 0:
                    magics.setups.append(setup)
                    print(f"%%remote --all [{number}]: every worker is busy; each runs this "
                          f"cell before its next %%remote cell")
                    return None
                barrier = tempfile.mkdtemp(prefix="nbcluster-setup-")
            run = SetupRun(setup, earlier, barrier, n, BARRIER_S)
            fn = runtime.RemoteFunction(run_setup, {
                "num_cpus": 1 if backend.kind != "sim" else 0, "max_retries": 0,
                "name": f"%%remote[{number}] --all"})
            with router.lock:
                for _ in range(n):
                    ref = fn.remote(run)
                    c = _Copy(ref.id, LabelRelay(relay, ""), ref=ref)
                    router.route(ref.id, c.relay)
                    copies.append(c)
        return _finish(runner, backend, setup, copies, args, relay)
    finally:
        for c in copies:
            router.unroute(c.key)
        if barrier is not None:
            shutil.rmtree(barrier, ignore_errors=True)


def _label(backend: Any, c: _Copy, counts: dict[str, int]) -> None:
    """Name a local/sim copy after its node once it runs (``[local-0 #2] ``)."""
    if c.relay.label or c.ref is None:
        return
    rec = backend.log.tasks.get(c.ref.id)
    if rec is None or rec.node is None:
        return
    if backend.kind == "sim":
        c.relay.label = "[sim: every node, one process] "
        return
    counts[rec.node] = counts.get(rec.node, 0) + 1
    c.relay.label = f"[{rec.node} #{counts[rec.node]}] "


def _wait(backend: Any, copies: list[_Copy], timeout: float | None, number: Any) -> None:
    """Wait for every copy (interruptible); past ``timeout`` cancel them all."""
    counts: dict[str, int] = {}
    sim = backend.kind == "sim"
    start = backend.now()
    try:
        while True:
            for c in copies:
                _label(backend, c, counts)
            if all(c.done() for c in copies):
                return
            left = None if timeout is None else timeout - (backend.now() - start)
            if left is not None and left <= 0:
                for c in copies:
                    c.cancel()
                raise clean_error(runtime.GetTimeoutError(
                    f"%%remote --all --timeout {timeout:g}: not every copy finished in "
                    f"time; they were cancelled and the cell is not kept as a setup cell"))
            step = left if sim else min(POLL_S, left if left is not None else POLL_S)
            if backend.kind == "dask":
                next(c for c in copies if not c.done()).finished.wait(step)
            else:  # on sim one call (virtual time moves only while we wait)
                runtime.wait([c.ref for c in copies], num_returns=len(copies), timeout=step)
    except KeyboardInterrupt:
        for c in copies:
            c.cancel()
        raise one_line(KeyboardInterrupt(), f"%%remote --all [{number}]: interrupted; its "
                                            f"copies were cancelled") from None


def _finish(runner: Any, backend: Any, setup: SetupCell, copies: list[_Copy], args: Any,
            relay: Any) -> Any:
    _wait(backend, copies, args.timeout, setup.number)
    for c in copies:
        _label(backend, c, {})
    results: dict[str, Any] = {}
    errors: list[tuple[str, Any, BaseException]] = []
    for i, c in enumerate(copies):
        label = c.relay.label.strip(" []") or f"copy {i + 1}"
        try:
            pid, ran, packed = c.outcome()
        except BaseException as exc:  # noqa: BLE001 - shown below, per copy
            errors.append((label, c.key, exc))
            continue
        if not ran:
            continue  # two copies met in one process: it ran there once
        value: Any = None
        if packed is not None:
            try:
                value = unpack(packed)
            except Exception as exc:  # noqa: BLE001
                value = ReprOnly(f"<result could not be loaded here: {exc}>")
        node = label.split(" #")[0]
        results[f"{node} (pid {pid})"] = value
    relay.flush()
    number = setup.number
    if errors:
        for label, _key, exc in errors[1:]:
            print(f"%%remote --all [{number}] on {label}: {_short(exc)}")
        label, key, exc = errors[0]
        raise cell_error(exc, key, label, setup.filename, number)
    runner.magics.setups.append(setup)
    tail = ("" if backend.kind == "sim" else "; other worker processes (busy now, added or "
            "restarted later) run it before their next %%remote cell")
    print(f"%%remote --all [{number}]: ran on {', '.join(results) or 'no worker'}{tail}")
    if args.output:
        runner.shell.user_ns[args.output] = results
    return results if any(v is not None for v in results.values()) else None


def _short(exc: BaseException) -> str:
    """``ValueError: bad`` for a remote error (its cause), else the error itself."""
    if isinstance(exc, runtime.TaskError):
        return f"{exc.cause_type}: {exc.cause if exc.cause is not None else ''}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"
