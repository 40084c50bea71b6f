"""The backend installed *inside* worker processes: nested tasks go through the driver.

Inside a task, ``runtime.remote/get/wait/put`` reach this proxy; it asks the
driver over the worker's connection and waits for the answer. While it waits in
``get``/``wait`` the driver lends the task's CPU to other tasks, so recursion
deeper than the number of workers does not deadlock.

Every ``ObjectRef`` created or dropped in this process is counted (see
:class:`~.worker.Channel`), so an object ``put`` or submitted here is freed once
no process refers to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from runtime.backends.base import ActorSpec, Backend, TaskSpec
from runtime.backends.local.protocol import error_from_record
from runtime.backends.local.store import deserialize, serialize
from runtime.cluster import NodeInfo
from runtime.errors import GetTimeoutError
from runtime.refs import ObjectRef
from runtime.serialization import check_call_args

if TYPE_CHECKING:
    from runtime.backends.local.worker import Channel, _State

__all__ = ["ClientBackend"]


def _raise_if_error(reply: Any) -> Any:
    if isinstance(reply, tuple) and reply and reply[0] == "error":
        raise error_from_record(reply[1])
    return reply


class ClientBackend(Backend):
    """A proxy backend: every call is a request to the driver that owns the cluster."""

    kind = "local"

    def __init__(self, chan: Channel, state: _State, t0: float) -> None:
        super().__init__()
        self._chan = chan
        self._state = state
        self._t0 = t0
        self._fn_ids: dict[int, tuple[Any, int]] = {}
        self._made = threading.local()  # .oid: the ref the driver already counted for us

    def _ref_created(self, oid: int) -> None:
        if getattr(self._made, "oid", None) == oid:
            self._made.oid = None  # counted by the driver when it answered our request
            return
        self._chan.counting = True
        self._chan.ref_deltas.append(oid)

    def _ref_deleted(self, oid: int) -> None:
        chan = self._chan
        chan.ref_deltas.append(-oid)
        chan.ref_changed()

    def _new_ref(self, oid: int, name: str = "") -> ObjectRef:
        """The ref to an object the driver made for us (and counted as held here)."""
        self._chan.counting = True
        self._made.oid = oid
        try:
            return ObjectRef(oid, self, name)
        finally:
            self._made.oid = None

    def _req(self, kind: str, payload: Any, timeout: float | None = None) -> Any:
        return _raise_if_error(self._chan.request(kind, payload, timeout))

    def _pack_args(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        deps = sorted({a.id for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)})
        try:
            blob = serialize((args, kwargs), self._state.owner)
        except Exception:
            check_call_args(name, args, kwargs)
            raise
        return blob, deps

    def submit(self, spec: TaskSpec) -> ObjectRef:
        """Ask the driver to queue the task; returns its ref."""
        blob, deps = self._pack_args(spec.name, spec.args, spec.kwargs)
        cached = self._fn_ids.get(id(spec.func))
        fn_id, fn_bytes = (cached[1], None) if cached else (0, cloudpickle.dumps(spec.func))
        meta = cloudpickle.dumps((spec.name, dict(spec.options), spec.request, spec.max_retries,
                                  spec.retry_exceptions))
        obj_id, fn_id = self._req("rsubmit", (fn_id, fn_bytes, blob, deps, meta))
        if cached is None:
            self._fn_ids[id(spec.func)] = (spec.func, fn_id)
        return self._new_ref(obj_id, spec.name)

    def put(self, value: Any) -> ObjectRef:
        """Store a value with the driver; returns its ref (freed when no ref is left)."""
        return self._new_ref(self._req("rput", serialize(value, self._state.owner)))

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Values of refs (the driver lends this task's CPU while it waits)."""
        reply = self._req("get", ([r.id for r in refs], timeout), timeout)
        if reply == ("timeout",):
            raise GetTimeoutError(f"get() timed out after {timeout} s waiting for "
                                  f"{len(refs)} object(s)")
        out = []
        for ok, blob in reply:
            if not ok:
                raise error_from_record(blob)
            out.append(deserialize(blob))
        return out

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[int]:
        """Indexes of done refs (the driver lends this task's CPU while it waits)."""
        reply = self._req("wait", ([r.id for r in refs], num_returns, timeout), timeout)
        if reply == ("timeout",):
            reply = self._req("wait", ([r.id for r in refs], num_returns, 0.0))
        return list(reply)

    def done(self, ref: ObjectRef) -> bool:
        """Whether the driver has the ref's value or error."""
        return bool(self._req("done", ref.id))

    def add_done_callback(self, ref: ObjectRef, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` from a helper thread once the ref is done.

        The helper polls (short requests) rather than blocking in ``wait``, so it
        never holds the connection while the task itself needs it."""
        def waiter() -> None:
            delay = 0.001
            while not self.done(ref):
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            fn(ref)

        threading.Thread(target=waiter, daemon=True).start()

    def cancel(self, ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
        """Ask the driver to cancel a task."""
        return bool(self._req("cancel", (ref.id, force)))

    def create_actor(self, spec: ActorSpec) -> int:
        """Ask the driver to start an actor."""
        blob, deps = self._pack_args(spec.name, spec.args, spec.kwargs)
        payload = cloudpickle.dumps((spec.cls, spec.name, dict(spec.options), spec.request,
                                     spec.max_restarts, spec.max_task_retries, spec.methods))
        return int(self._req("create_actor", (payload, blob, deps)))

    def call_actor(self, actor_id: int, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a method call on an actor through the driver."""
        blob, deps = self._pack_args(method, args, kwargs)
        return self._new_ref(self._req("rcall_actor", (actor_id, method, blob, deps)), method)

    def kill_actor(self, actor_id: int, *, no_restart: bool = True) -> None:
        """Ask the driver to kill an actor."""
        self._req("kill_actor", (actor_id, no_restart))

    def sleep(self, seconds: float) -> None:
        """Real sleep (does not lend resources, as in Ray)."""
        time.sleep(seconds)

    def now(self) -> float:
        """Seconds since the cluster started (the same clock as the driver's)."""
        return time.monotonic() - self._t0

    def nodes(self) -> list[NodeInfo]:
        """The driver's node list."""
        return list(self._req("nodes", None))

    def shutdown(self) -> None:
        """Detach (a task cannot shut the cluster down)."""
