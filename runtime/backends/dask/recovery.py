"""After faults on the dask backend: nothing lost silently, nothing waits forever.

What dask does on its own, and what this module adds (the backend's ``get``,
``wait`` and settling paths call it):

- *Dependants of a resubmitted input.* A task whose input crashed its worker more
  than ``distributed.scheduler.allowed-failures`` times gets dask's ``KilledWorker``
  too, or is cancelled along with it. The backend resubmits the input (it has retries
  left); :func:`verdict` then resubmits the dependant on the input's new attempt
  (without counting a retry: it never ran), or fails it with the input's own error.
- *Actor results on a dead worker.* A finished actor call's result lives on the
  actor's worker; when that worker dies, dask would wait forever to recompute it
  there (calls are pinned to it). Such a result fails at once with
  ``ObjectLostError`` (actor calls are not re-run: that could apply them twice).
- *A bounded gather.* Fetching results never outlives the caller's timeout, and
  notices lost actor results while it waits (:func:`gather`).
- *A scheduler that restarted.* Dask's client reconnects when the scheduler is back
  at the same address within its reconnect window, but cancels every future of the
  old scheduler and forgets the event subscriptions. :func:`watch_connection` then
  fails the old refs with an ``ObjectLostError`` that says what to do, subscribes
  again and re-reads the workers, so new work runs once workers join.
- *Timeout messages* that say what each pending task is doing (:func:`pending_state`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from distributed import Future

from runtime.backends.dask.common import NO_VALUE, _Failed, task_key
from runtime.errors import GetTimeoutError, ObjectLostError

if TYPE_CHECKING:
    from runtime.backends.dask.backend import DaskBackend
    from runtime.backends.dask.common import _Task
    from runtime.refs import ObjectRef

__all__ = ["Regather", "LOST_REASON", "cancel_reason", "scheduler_lost", "verdict", "lost_actor_result",
           "kept", "dependency_error", "gather", "watch_connection", "pending_state"]

#: The reason dask gives futures it cancels when the client loses the scheduler.
LOST_REASON = "scheduler-connection-lost"


#: Fetching results that are ready may run this long past a shorter ``get`` timeout
#: (``get(ref, timeout=0)`` on a finished ref returns its value).
FETCH_GRACE = 2.0


class Regather(Exception):
    """A result was lost while it was being fetched: wait for it again, then fetch."""


def cancel_reason(fut: Future | None) -> str | None:
    """Why dask cancelled ``fut`` (None when it was not cancelled, or gave no reason)."""
    if fut is None or fut.status != "cancelled":
        return None
    exc = getattr(getattr(fut, "_state", None), "exception", None)
    return getattr(exc, "reason", None)


def scheduler_lost(b: DaskBackend, ref: ObjectRef) -> ObjectLostError:
    """The error of a ref whose scheduler went away (restarted or unreachable)."""
    try:
        addr = b.client.scheduler.address
    except Exception:  # noqa: BLE001 - closed client
        addr = "?"
    window = getattr(b.client, "_timeout", None)
    back = (f"This session reconnects by itself if the scheduler is back at {addr} within "
            f"{window:g} s of losing it (new tasks then wait for workers to join); "
            if isinstance(window, (int, float)) else "")
    return ObjectLostError(
        f"object {ref.id} ({ref.name}) is lost: the connection to the dask scheduler {addr} "
        f"was lost (it restarted, or the network failed), and every result it knew of went "
        f"with it. dask workers exit when they lose their scheduler: start them again (run "
        f"`dask worker` under a supervisor that restarts it, e.g. systemd Restart=always). "
        f"{back}otherwise call runtime.shutdown() and runtime.init() again, then resubmit.")


# ------------------------------------------------------------------ settling
def _own_key(b: DaskBackend, task: _Task, key: Any) -> bool:
    return str(key).startswith(task_key(task.name, task.id, b._session()))


def _deps(b: DaskBackend, task: _Task) -> list[tuple[int, Future]]:
    """``(task id, future it was given)`` of each input that is another task's result."""
    out = []
    for a in (*task.args, *task.kwargs.values()):
        if isinstance(a, Future):
            tid = b._key_ids.get(a.key)
            if tid is not None:
                out.append((tid, a))
    return out


def _refresh(b: DaskBackend, task: _Task) -> None:
    """Give the task its inputs' current futures (their latest attempts)."""
    def current(a: Any) -> Any:
        if isinstance(a, Future):
            tid = b._key_ids.get(a.key)
            if tid is not None:
                if tid in b._errors:
                    return _Failed(b._errors[tid])
                return b._futs.get(tid) or a
        return a

    task.args = tuple(current(a) for a in task.args)
    task.kwargs = {k: current(v) for k, v in task.kwargs.items()}


def _repair(b: DaskBackend, task: _Task, depth: int = 0) -> bool | None:
    """A task failed or was cancelled because of an input: fix the inputs, then resubmit
    it on their new attempts (False: resubmitted, not settled), or fail it with an
    input's error (True: settled). None: no input is at fault."""
    deps = _deps(b, task)
    if not deps or depth > 32:
        return None
    changed = False
    for tid, used in deps:
        if tid in b._errors:
            b._fail(task.id, b._errors[tid])
            return True
        cur = b._futs.get(tid)
        if cur is not None and cur is not used:
            changed = True  # the input was resubmitted (or its actor restarted)
            continue
        if used.status == "error":
            exc = used.exception()
            if type(exc).__name__ == "KilledWorker" and b._maybe_resubmit(tid, used):
                changed = True
            elif tid in b._errors:
                b._fail(task.id, b._errors[tid])
                return True
        elif used.status == "cancelled" and cancel_reason(used) != LOST_REASON:
            dep = b._tasks.get(tid)
            fixed = _repair(b, dep, depth + 1) if dep is not None and dep.actor is None \
                else None
            if tid in b._errors:
                b._fail(task.id, b._errors[tid])
                return True
            changed = changed or fixed is False
    if not changed:
        return None
    _refresh(b, task)
    task.extra += 1  # a new key: the old one failed in dask
    b._submit_to_dask(task)
    return False


def verdict(b: DaskBackend, ref: ObjectRef, fut: Future | None) -> bool | None:
    """For ``_settled`` (driver): True when the ref is settled now (it was failed here),
    False when it must be waited for again (resubmitted), None for no opinion."""
    tid = ref.id
    task = b._tasks.get(tid)
    if task is None or fut is None or tid in b._errors:
        return None
    if task.actor is not None:
        if task.value is not NO_VALUE:
            return True  # the driver keeps its result
        err = lost_actor_result(b, task, fut)
        if err is None:
            return None
        if b.actors.rerun(task):
            return False  # max_task_retries allows running it again
        b._fail(tid, err)
        return True
    if not fut.done() or b._futs.get(tid) is not fut:
        return None
    if fut.status == "cancelled" and cancel_reason(fut) != LOST_REASON:
        return _repair(b, task)
    if fut.status == "error":
        exc = fut.exception()
        if type(exc).__name__ == "KilledWorker" and not _own_key(b, task, exc.task):
            return _repair(b, task)  # an input's KilledWorker, not this task's own
    return None


def kept(b: DaskBackend, ref: ObjectRef) -> bool:
    """Whether the driver keeps the ref's (actor call) result itself."""
    task = b._tasks.get(ref.id) if b.role == "driver" else None
    return task is not None and task.actor is not None and task.value is not NO_VALUE


def dependency_error(b: DaskBackend, ref: ObjectRef) -> BaseException | None:
    """The error of a failed input of the ref's task (dask cancels dependants with it)."""
    task = b._tasks.get(ref.id)
    if task is None:
        return None
    for tid, _used in _deps(b, task):
        if tid in b._errors:
            return b._errors[tid]
    return None


def _live_addresses(b: DaskBackend) -> set[str]:
    with b._lock:
        return set(b._addr_of.values())


def lost_actor_result(b: DaskBackend, task: _Task, fut: Future) -> ObjectLostError | None:
    """The error of a finished actor call whose result died with the actor's worker."""
    addr = task.addr
    if not (task.done_once or fut.status == "lost") or addr is None or \
            fut.status in ("finished", "error", "cancelled"):
        return None
    if addr in _live_addresses(b):
        return None
    node = b._name_of.get(addr, addr)
    return ObjectLostError(
        f"the result of actor call {task.name} (id {task.id}) was kept only by worker "
        f"{node}, which died; actor calls are not run again (that could apply them twice): "
        f"call the method again")


# ------------------------------------------------------------------ gathering
def gather(b: DaskBackend, refs: Sequence[ObjectRef], futs: list[Future],
           deadline: float | None, timeout: float | None) -> list[Any]:
    """``client.gather(futs)`` that gives up at ``deadline`` (``GetTimeoutError``) and
    when an actor call's result is lost meanwhile (``ObjectLostError``)."""
    client = b.client
    kept = [b._tasks.get(r.id) for r in refs] if b.role == "driver" else [None] * len(refs)
    kept = [t.value if t is not None and t.actor is not None else NO_VALUE for t in kept]
    want = [f for f, v in zip(futs, kept, strict=True) if v is NO_VALUE]
    if not want:
        return kept

    def merge(values: list[Any]) -> list[Any]:
        it = iter(values)
        return [next(it) if v is NO_VALUE else v for v in kept]

    loop = getattr(getattr(client, "loop", None), "asyncio_loop", None)
    if loop is None or getattr(client, "asynchronous", False):
        return merge(client.gather(want))
    if deadline is not None:
        deadline = max(deadline, time.monotonic() + FETCH_GRACE)
    cf = asyncio.run_coroutine_threadsafe(client._gather(want), loop)
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            step = 0.5 if left is None else max(min(left, 0.5), 0.0)
            try:
                return merge(cf.result(timeout=step))
            except concurrent.futures.TimeoutError:
                pass
            except Exception as exc:
                if any(not f.done() for f in want):  # lost meanwhile: dask recomputes
                    raise Regather from exc          # it, or verdict() says what to do
                raise
            if b.role == "driver":
                for r, f in zip(refs, futs, strict=True):
                    task = b._tasks.get(r.id)
                    if task is not None and task.actor is not None and \
                            task.value is NO_VALUE:
                        err = lost_actor_result(b, task, f)
                        if err is not None:
                            if b.actors.rerun(task):
                                raise Regather  # wait for the call's new run
                            b._fail(r.id, err)
                            raise err
            if deadline is not None and time.monotonic() >= deadline:
                raise GetTimeoutError(
                    f"get() timed out after {timeout:g} s fetching {len(futs)} finished "
                    f"result(s) from their workers (a worker may have died holding one; dask "
                    f"recomputes it); nothing was cancelled")
    finally:
        if not cf.done():
            cf.cancel()


# ------------------------------------------------------------------ the scheduler
def watch_connection(b: DaskBackend) -> None:
    """After the client reconnected to a scheduler at the same address, fail the old
    scheduler's refs, subscribe to events again and re-read the workers (driver)."""
    if b.role != "driver":
        return
    client = b.client
    comm = getattr(client, "scheduler_comm", None)
    seen = getattr(b, "_nbc_comm", None)
    if seen is None or client.status != "running":
        if seen is None and client.status == "running":
            b._nbc_comm = comm
        return
    if comm is seen:
        return
    b._nbc_comm = comm
    from runtime.refs import ObjectRef

    with b._lock:
        old = [(tid, f) for tid, f in [*b._futs.items(), *b._orphans.items()]
               if cancel_reason(f) == LOST_REASON and tid not in b._errors]
    for tid, _f in old:
        task = b._tasks.get(tid)
        b._fail(tid, scheduler_lost(b, ObjectRef(tid, None, task.name if task else "obj")))
    for topic, handler in list(getattr(client, "_event_handlers", {}).items()):
        try:  # the new scheduler knows none of the client's subscriptions
            client.subscribe_topic(topic, handler)
        except Exception:  # noqa: BLE001 - the poll goes on without events
            pass
    try:
        b.refresh_workers()
    except Exception:  # noqa: BLE001 - the event thread polls again
        pass


# ------------------------------------------------------------------ messages
def pending_state(b: DaskBackend, refs: Sequence[ObjectRef], done: Sequence[int],
                  most: int = 3) -> str:
    """What the refs that are not done are doing, for ``GetTimeoutError`` messages."""
    settled = set(done)
    parts: list[str] = []
    running = 0
    pending = [r for i, r in enumerate(refs) if i not in settled]
    for r in pending:
        where = b._running.get(r.id) if b.role == "driver" else None
        if where is not None:
            running += 1
        if len(parts) >= most:
            continue
        task = b._tasks.get(r.id)
        head = f"task {r.name!r} (id {r.id})"
        if where is not None:
            parts.append(f"{head} is running on {where[0]}")
        elif task is not None and not task.placed:
            parts.append(f"{head} waits for the policy to place it on a worker that fits")
        elif task is not None and task.actor is not None:
            parts.append(f"{head} waits for its turn on the actor (or for the actor to be "
                         f"restarted)")
        else:
            parts.append(f"{head} has not started: dask has it queued for a worker")
    if len(pending) > most:
        parts.append(f"and {len(pending) - most} more")
    if b.role == "driver" and not b._workers:
        parts.append("no worker is connected to the scheduler now")
    tail = ("nothing was cancelled: they keep going; get() them again or cancel() them"
            if running else "none of them is running yet; nothing was cancelled")
    return "; ".join(parts) + f" ({tail})"
