"""The sim backend: a real program's task bodies, run in-process, in virtual time.

simpy owns the clock. Each task body runs in its own greenlet on the engine's
thread (see :mod:`.core`); the driver (the notebook or script) steps the simpy
loop only while it waits in ``get``/``wait``/``sleep``, so virtual time moves
only then. Deciding is the control plane's (:class:`runtime.control.ControlPlane`,
the same as on every backend and in the simulator's engine): this backend is its
actuator (see :mod:`.cluster`).

Who may mutate the state: only the engine thread. Greenlets are switched into
only from engine callbacks run by the driver's greenlet, never from a body.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.backends.base import Backend, TaskSpec
from runtime.backends.sim import core
from runtime.backends.sim.actors import ActorsMixin
from runtime.backends.sim.bodies import BodiesMixin
from runtime.backends.sim.cluster import ClusterMixin
from runtime.backends.sim.core import OVER, Obj, Task, TaskGreenlet
from runtime.cluster import NodeInfo, NodeType, TaskInfo, node_types_by_name, parse_nodes
from runtime.cluster.nodetypes import with_changes
from runtime.control import ControlPlane
from runtime.errors import (
    GetTimeoutError,
    InfeasibleRequestError,
    RuntimeShutdownError,
    SimDeadlock,
    TaskCancelledError,
)
from runtime.events import Event, EventKind
from runtime.refs import ObjectRef
from runtime.serialization import check_call_args, check_picklable

__all__ = ["SimBackend", "DEFAULT_CPUS"]

#: CPUs of the single node when ``init("sim")`` is given no cluster description
#: (fixed, not ``os.cpu_count()``, so a trace is the same on every machine).
DEFAULT_CPUS = 4

#: Trace events kept in memory by default (the hash covers them all).
TRACE_KEEP = 1_000_000

_INF = float("inf")
_ROUND = EventKind.DECISION_ROUND  # published to subscribers, left out of the trace
E = EventKind


class SimBackend(BodiesMixin, ClusterMixin, ActorsMixin, Backend):
    """Runs tasks for real, in-process, on a simulated cluster in virtual time."""

    kind = "sim"

    def __init__(
        self,
        *,
        nodes: Sequence[Any] | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: Mapping[str, float] | None = None,
        policy: Any = None,
        speeds: Mapping[str, Mapping[str, float]] | None = None,
        seed: int | None = None,
        lending: bool = True,
        autoscaler: Any = None,
        node_types: Sequence[NodeType | Mapping[str, Any]] = (),
        autoscale_interval: float = 1.0,
        check_pickle: bool = True,
        trace: bool | int = True,
        patch_sleep: bool = True,
        watchdog: float | None = None,
    ) -> None:
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed={seed!r}: expected an int or None")
        if isinstance(trace, bool):
            keep = TRACE_KEEP if trace else 0
        elif isinstance(trace, int) and trace > 0:
            keep = trace
        else:
            raise TypeError(f"trace={trace!r}: expected True, False or the number of events "
                            f"to keep (an int > 0)")
        for key, flag in (("lending", lending), ("check_pickle", check_pickle),
                          ("patch_sleep", patch_sleep)):
            if not isinstance(flag, bool):
                raise TypeError(f"{key}={flag!r}: expected True or False")
        if (isinstance(autoscale_interval, bool) or not isinstance(autoscale_interval, (int, float))
                or not autoscale_interval > 0 or math.isinf(autoscale_interval)):
            raise ValueError(f"autoscale_interval={autoscale_interval!r}: expected a finite "
                             f"number of virtual seconds > 0")
        if watchdog is not None and (isinstance(watchdog, bool)
                                     or not isinstance(watchdog, (int, float))
                                     or not watchdog > 0 or math.isinf(watchdog)):
            raise ValueError(f"watchdog={watchdog!r}: expected None or a number of real "
                             f"seconds > 0")
        self.seed = seed
        self.lending = lending
        self.check_pickle = check_pickle
        from simulator.core import Core

        self.env = Core()
        self.autoscale_interval = float(autoscale_interval)
        groups = parse_nodes(nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                             default_cpus=DEFAULT_CPUS)
        groups = _keep_initial_nodes(nodes, groups)
        self.node_types: dict[str, NodeType] = node_types_by_name(groups, list(node_types))
        #: the control plane: index, queue, decision rounds, scale planner
        self.plane = ControlPlane(
            "fifo" if policy is None else policy, autoscaler, actuator=self,
            node_types=self.node_types.values(), speeds=_check_speeds(speeds),
            emit=self._emit, clock=lambda: self.env._now, window=256, wake=self._kick)
        self.index = self.plane.index
        self.policy = self.plane.policy
        self.autoscaler = self.plane.autoscaler
        self._trace: deque[tuple[Any, ...]] | None = deque(maxlen=keep) if keep else None
        self._trace_hash = hashlib.sha256()
        self._objects: dict[int, Obj] = {}
        self._tasks: dict[int, Task] = {}  # live tasks (not done), by id
        self._actors: dict[int, Any] = {}
        self._pass_scheduled = False
        self._stepping = False
        self._closed = False
        self._broken: BaseException | None = None
        self._thread_id = threading.get_ident()
        self._node_seq: dict[str, itertools.count[int]] = {}
        self._booting = 0
        self._scale_tick = False
        self._horizon: float | None = None  # the deadline the driver waits for, if any
        self._watch: set[int] | None = None  # ids the driver waits for (see _drive)
        self._watch_left = 0
        for g in groups:
            for _ in range(g.count):
                self._add_node(g, "up")
        self._watchdog = core.Watchdog(float(watchdog)) if watchdog is not None else None
        self._patched = patch_sleep
        if patch_sleep:
            core.install_sleep(self)

    # ------------------------------------------------------------------ events
    def _emit(self, kind: str, task: int | None = None, node: str | None = None,
              **data: Any) -> None:
        t = self.env.now
        if self._trace is not None and kind != _ROUND:  # a round is no state change
            entry = (round(t, 9), kind, task, node, tuple(sorted(data.items())))
            self._trace.append(entry)
            self._trace_hash.update(repr(entry).encode() + b"\n")
        if self.events.has_subscribers:
            self.events.publish(Event(t, kind, task, node, data))

    @property
    def trace(self) -> list[tuple[Any, ...]]:
        """The recorded events, ``(time, kind, task, node, sorted data items)`` tuples (the
        last ``trace`` of them when ``trace=`` is a number; 1,000,000 by default)."""
        return list(self._trace or ())

    def trace_hash(self) -> str:
        """sha256 of the whole event trace so far (every event, even those no longer kept):
        one program and seed give one hash."""
        return self._trace_hash.hexdigest()

    # ------------------------------------------------------------------ contexts
    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeShutdownError("this sim cluster was shut down; call runtime.init() again")
        if self._broken is not None:
            raise RuntimeError(
                f"the simulation was aborted ({type(self._broken).__name__}); call "
                f"runtime.shutdown() and runtime.init() again")

    def _require_driver_or_task(self, what: str) -> Task | None:
        """The calling task (None for the driver); raises from foreign threads."""
        self._check_usable()
        g = core.getcurrent()
        if isinstance(g, TaskGreenlet):
            if g.backend is not self:
                raise RuntimeError(f"{what}() from a task of another simulation")
            return g.task
        if threading.get_ident() != self._thread_id:
            raise RuntimeError(
                f"{what}() from a thread the engine does not own: the sim backend runs every "
                f"task on the thread that called runtime.init(); call {what}() there")
        return None

    # ------------------------------------------------------------------ submit
    def _new_obj(self, task: Task | None = None) -> Obj:
        oid = task.id if task is not None else self.next_id()
        obj = Obj(oid, task)
        self._objects[oid] = obj
        return obj

    def _ref_created(self, oid: int) -> None:
        obj = self._objects.get(oid)
        if obj is not None:
            obj.refs += 1

    def _ref_deleted(self, oid: int) -> None:
        obj = self._objects.get(oid)
        if obj is not None:
            obj.refs -= 1
            if obj.refs <= 0 and obj.done:
                self._objects.pop(oid, None)

    def _check_args(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        if not self.check_pickle:
            return
        try:
            pickle.dumps((args, kwargs), protocol=5)
        except Exception:  # noqa: BLE001 - fall back to cloudpickle, which names the culprit
            check_call_args(name, args, kwargs)

    def _check_feasible(self, info: TaskInfo) -> None:
        why = self.plane.infeasible(info)
        if why is not None:
            raise InfeasibleRequestError(why)

    def submit(self, spec: TaskSpec) -> ObjectRef:
        """Queue a task (zero virtual time); returns its ref."""
        parent = self._require_driver_or_task("submit")
        tid = self.next_id()
        info = spec.info(tid, self.env.now)
        self._check_feasible(info)
        self._check_args(spec.name, spec.args, spec.kwargs)
        t = Task(tid, spec.name, spec.func, spec.args, spec.kwargs, spec.options, info,
                 Obj(tid))
        t.obj.task = t
        self._objects[tid] = t.obj
        t.max_retries = spec.max_retries
        t.retry_exceptions = spec.retry_exceptions
        t.duration = spec.options.get("sim_duration")
        ref = ObjectRef(tid, self, spec.name)
        self._tasks[tid] = t
        if parent is not None:
            parent.children.append(t)
        self._submit_to_plane(t)
        return ref

    def _submit_to_plane(self, t: Task, **data: Any) -> None:
        """Hand a task to the plane; it queues once its ref arguments are done."""
        free = not any(isinstance(a, ObjectRef) for a in itertools.chain(t.args,
                                                                          t.kwargs.values()))
        if free:
            t.stage = "queued"
        self.plane.submit(t.info, ready=free, preemptible=t.init_of is None, **data)
        if not free:
            self._watch_deps(t, self._enqueue)

    def _watch_deps(self, t: Task, ready: Callable[[Task], None]) -> None:
        """Call ``ready(t)`` once every top-level ref argument is done (fail t on errors)."""
        deps = [a for a in itertools.chain(t.args, t.kwargs.values()) if isinstance(a, ObjectRef)]
        if not deps:
            ready(t)
            return
        objs = [self._obj_of(r) for r in deps]
        for o in objs:
            if o.done and o.error is not None:
                self._fail(t, o.error, "dependency failed")
                return
        waiting = [o for o in objs if not o.done]
        if not waiting:
            ready(t)
            return
        t.deps_left = len(waiting)
        token = t.token

        def on_dep(o: Obj) -> None:
            if t.stage != "inputs" or t.token != token:
                return
            if o.error is not None:
                self._fail(t, o.error, "dependency failed")
                return
            t.deps_left -= 1
            if t.deps_left == 0:
                ready(t)

        for o in waiting:
            o.callbacks.append(on_dep)

    def _obj_of(self, ref: ObjectRef) -> Obj:
        if ref.backend is not self:
            raise ValueError(f"ObjectRef({ref.id}) belongs to another cluster (an earlier "
                             f"init()?), not this sim cluster")
        obj = self._objects.get(ref.id)
        if obj is None:
            raise ValueError(f"ObjectRef({ref.id}): its value was freed")
        return obj

    def _enqueue(self, t: Task) -> None:
        """Its ref arguments are done: it joins the plane's queue."""
        t.state, t.stage = "pending", "queued"
        self.plane.ready(t.id)

    def put(self, value: Any) -> ObjectRef:
        """Store a value (shared in-process, not copied); returns its ref."""
        self._require_driver_or_task("put")
        if self.check_pickle:
            try:
                pickle.dumps(value, protocol=5)
            except Exception:  # noqa: BLE001 - name the culprit
                check_picklable(value, "the value passed to put()")
        obj = self._new_obj()
        obj.done = True
        obj.value = value
        obj.callbacks = []
        return ObjectRef(obj.id, self)

    # ------------------------------------------------------------------ the driver
    def _drive(self, objs: list[Obj], k: int, timeout: float | None) -> bool:
        """Step the engine until ``k`` of ``objs`` are done (True) or time is up (False).

        The driver watches a set of ids (checked once per completion) instead of
        hanging a callback on every object, so ``wait`` in a loop leaves nothing behind."""
        left = [o for o in objs if not o.done]
        need = k - (len(objs) - len(left))
        if need <= 0:
            return True
        if self._stepping:
            raise RuntimeError("get()/wait() called from inside a simulation callback (such as "
                               "an add_done_callback function); call it from the driver or a task")
        watch = {o.id for o in left}
        self._watch = watch
        self._watch_left = min(need, len(watch))
        deadline = None if timeout is None else self.env.now + timeout
        try:
            return self._run_engine(lambda: self._watch_left <= 0, deadline)
        finally:
            self._watch = None

    def _run_engine(self, cond: Callable[[], bool], deadline: float | None) -> bool:
        import _thread
        import signal

        env = self.env
        wd = self._watchdog
        # Ctrl-C / a kernel interrupt lands between two engine steps, where the state is
        # consistent, so the simulation stays usable (the caller may cancel its task).
        # A step that does not end within a second (a body busy for real) is interrupted
        # where it is, which aborts the simulation as before.
        sigints: list[float] = []
        clean = KeyboardInterrupt("interrupted between two simulation steps")
        timer: list[threading.Timer] = []

        def on_sigint(signum: int, frame: Any) -> None:
            if sigints and time.monotonic() - sigints[0] >= 0.9:
                raise KeyboardInterrupt
            if not sigints:
                sigints.append(time.monotonic())
                t = threading.Timer(1.0, _thread.interrupt_main)
                t.daemon = True
                timer.append(t)
                t.start()

        prev_handler: Any = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            prev_handler = signal.signal(signal.SIGINT, on_sigint)
        self._stepping = True
        self._horizon = deadline
        try:
            while not cond():
                if sigints:
                    raise clean
                nxt = env.peek()
                if deadline is not None and nxt > deadline:
                    if deadline > env.now:
                        env.run(until=deadline)
                    if sigints:
                        raise clean
                    return False
                if nxt == _INF:
                    raise SimDeadlock(self._deadlock_message())
                if wd is None:
                    env.step()
                else:
                    wd.in_step = True
                    wd.step_started = time.monotonic()
                    try:
                        env.step()
                    finally:
                        wd.in_step = False
                        wd.step_started = None
            if sigints:
                raise clean
            return True
        except Exception:
            raise
        except core.WatchdogAlarm as alarm:
            self._broken = alarm
            raise SimDeadlock(self._watchdog_message(alarm)) from None
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the sim is broken
            if exc is not clean:  # ...unless it landed between two steps
                self._broken = exc
            raise
        finally:
            for t in timer:
                t.cancel()
            if prev_handler is not None:
                signal.signal(signal.SIGINT, prev_handler)
            self._stepping = False
            self._horizon = None

    def _watchdog_message(self, alarm: core.WatchdogAlarm) -> str:
        assert self._watchdog is not None
        t = alarm.task
        who = f"task {t.name!r} (id {t.id})" if t is not None else "the engine"
        blocked = {x.id: x.name for x in sorted(self._tasks.values(), key=lambda x: x.id)
                   if x.state == "blocked"}
        return (f"watchdog: {who} held the engine thread for more than "
                f"{self._watchdog.seconds:g} s of real time at t={self.env.now:g}, so the "
                f"simulation was aborted (call runtime.shutdown() and init() again). A body "
                f"must not block for real: no OS lock held across get(), no busy loop. "
                f"Suspended tasks: {blocked}. Where it was:\n{alarm.stack}")

    def _deadlock_message(self) -> str:
        live = sorted(self._tasks.values(), key=lambda t: t.id)
        blocked = {t.id: t.name for t in live if t.state == "blocked"}
        pending = {t.id: t.name for t in live if t.state == "pending" and t.stage != "inputs"}
        waiting = {t.id: t.name for t in live if t.state == "pending" and t.stage == "inputs"}
        msg = f"no events left at t={self.env.now:g} while the driver waits; blocked tasks: {blocked}"
        if pending:
            msg += f"; pending tasks that cannot be placed: {pending}"
        if waiting:
            msg += f"; tasks waiting for their arguments: {waiting}"
        if blocked and not self.lending:
            msg += " (lending is off: blocked tasks keep their CPUs)"
        elif blocked:
            msg += (" (a task blocked in get/wait lends only its CPUs; GPUs and custom "
                    "resources stay held)")
        return msg

    def _objs(self, refs: Sequence[ObjectRef]) -> list[Obj]:
        objects = self._objects
        try:
            out = [objects[r.id] for r in refs if r._backend is self]
            if len(out) == len(refs):
                return out
        except KeyError:
            pass
        return [self._obj_of(r) for r in refs]  # slow path: names a foreign or freed ref

    def _foreign(self) -> bool:
        return (threading.get_ident() != self._thread_id
                and not isinstance(core.getcurrent(), TaskGreenlet))

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Values in order (virtual-time wait); raises the first error in ref order.

        Another thread may read refs that are already done; only blocking is refused."""
        if self._foreign() and not self._closed:
            objs = self._objs(refs)
            if not all(o.done for o in objs):
                self._require_driver_or_task("get")  # raises, naming the thread rule
            t = None
        else:
            t = self._require_driver_or_task("get")
            objs = self._objs(refs)
        if t is not None:
            ok = self._task_wait_objs(t, objs, len(objs), timeout)
        else:
            ok = self._drive(objs, len(objs), timeout)
        if not ok:
            left = sum(1 for o in objs if not o.done)
            raise GetTimeoutError(f"get() timed out after {timeout:g} virtual seconds with "
                                  f"{left} of {len(objs)} object(s) not ready")
        out = []
        for o in objs:
            if o.error is not None:
                raise o.error
            out.append(o.value)
        return out

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[int]:
        """Indexes of the first ``num_returns`` done refs, in input order (virtual time)."""
        if self._foreign() and not self._closed:
            objs = self._objs(refs)
            if sum(1 for o in objs if o.done) < num_returns and timeout != 0:
                self._require_driver_or_task("wait")  # raises, naming the thread rule
            return [i for i, o in enumerate(objs) if o.done][:num_returns]
        t = self._require_driver_or_task("wait")
        objs = self._objs(refs)
        if t is not None:
            self._task_wait_objs(t, objs, num_returns, timeout)
        else:
            self._drive(objs, num_returns, timeout)
        return [i for i, o in enumerate(objs) if o.done][:num_returns]

    def done(self, ref: ObjectRef) -> bool:
        """Whether the ref's value or error is ready (never blocks, never advances time)."""
        obj = self._objects.get(ref.id)
        return True if obj is None else obj.done

    def add_done_callback(self, ref: ObjectRef, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` when the ref is done (inside the engine, in virtual time)."""
        obj = self._obj_of(ref)
        if obj.done:
            fn(ref)
            return
        obj.callbacks.append(lambda _o: fn(ref))
        if getattr(fn, "__qualname__", "").startswith("ObjectRef.future"):
            # ``await ref``: nothing else would drive the engine, so the asyncio loop does
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            if threading.get_ident() == self._thread_id and not isinstance(
                    core.getcurrent(), TaskGreenlet):
                loop.call_soon(self._async_drive, loop, obj, ref, fn, 0)

    def _async_drive(self, loop: asyncio.AbstractEventLoop, obj: Obj, ref: ObjectRef,
                     fn: Callable[[ObjectRef], None], rounds: int) -> None:
        """Run the engine from the asyncio loop until ``obj`` is done (for ``await ref``)."""
        if obj.done or self._closed or self._broken is not None:
            return
        if not self._stepping:
            self._run_engine(lambda: obj.done or self.env.peek() == _INF, None)
        if obj.done:
            return
        if rounds < 3 or self._stepping:  # let other coroutines submit what it waits for
            loop.call_soon(self._async_drive, loop, obj, ref, fn, rounds + 1)
        else:
            fn(ref)  # nothing left to run: settle the future (get(timeout=0) says why)

    def sleep(self, seconds: float) -> None:
        """Virtual sleep: a task keeps its slot; the driver's sleep advances the cluster."""
        t = self._require_driver_or_task("sleep")
        if t is not None:
            self._check_alive(t)
            t.token += 1
            token = t.token
            self.env.timeout(seconds).callbacks.append(lambda e: self._resume(t, token, None))
            self._yield(t)
            return
        if self._stepping:
            raise RuntimeError("sleep() from inside a simulation callback")
        if self.autoscaler is not None and seconds > 0:
            self._arm_scale_tick()  # idle nodes may go while the driver sleeps
        self._run_engine(lambda: False, self.env.now + seconds) if seconds > 0 else None

    def now(self) -> float:
        """Virtual seconds since ``init``."""
        return self.env.now

    # ------------------------------------------------------------------ cancel
    def cancel(self, ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
        """Cancel a task: pending ones never run; running ones are unwound at once."""
        self._require_driver_or_task("cancel")
        obj = self._objects.get(ref.id)
        if obj is None or obj.done or obj.task is None:
            return False
        self._cancel_task(obj.task, recursive)
        return True

    def _cancel_task(self, t: Task, recursive: bool) -> None:
        if t.state in OVER:
            return
        if t.state in ("running", "blocked"):
            self._abort(t)
        if t.actor is not None:
            self._forget_call(t)
        t.state = "cancelled"
        t.token += 1
        self._tasks.pop(t.id, None)
        self.plane.end(t.id, E.TASK_CANCELLED, t.node)
        self._complete(t.obj, None, TaskCancelledError(t.name, t.id))
        if recursive:
            for c in t.children:
                self._cancel_task(c, True)

    # ------------------------------------------------------------------ cluster view
    def nodes(self) -> list[NodeInfo]:
        """Every node, in id order, with total and free resources and state."""
        return self.index.nodes()

    def describe(self) -> dict[str, Any]:
        """Backend, policy, virtual time, seed."""
        return {"backend": "sim", "policy": self.plane.policy_name,
                "autoscaler": getattr(self.autoscaler, "name", None),
                "time": f"{self.env.now:g}s (virtual)", "seed": self.seed}

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Unwind suspended bodies in task-id order, fail pending refs, restore time.sleep."""
        if self._closed:
            return
        if isinstance(core.getcurrent(), TaskGreenlet):
            raise RuntimeError("shutdown() cannot be called from inside a sim task")
        self._closed = True
        try:
            own_thread = threading.get_ident() == self._thread_id
            for t in sorted(self._tasks.values(), key=lambda t: t.id):
                g, t.glet = t.glet, None
                t.token += 1
                if own_thread and g is not None:
                    core.kill_greenlet(g)
            err = RuntimeShutdownError("the sim cluster was shut down before this object was "
                                       "ready")
            for t in sorted(self._tasks.values(), key=lambda t: t.id):
                t.state = "cancelled"
                if not t.obj.done:
                    self._complete(t.obj, None, err)
            self._tasks.clear()
            self._shutdown_actors()
        finally:
            if self._watchdog is not None:
                self._watchdog.close()
            if self._patched:
                core.uninstall_sleep(self)


def _keep_initial_nodes(nodes: Any, types: list[NodeType]) -> list[NodeType]:
    """Node types listed in ``nodes=`` as dicts without ``min_count`` keep their ``count``
    as the minimum, so an autoscaler never removes the cluster the user described."""
    if not nodes:
        return types
    out = []
    for item, nt in zip(nodes, types, strict=True):
        if isinstance(item, Mapping) and "min_count" not in item and nt.min_count < nt.count:
            nt = with_changes(nt, min_count=min(nt.count, nt.max_count))
        out.append(nt)
    return out


def _check_speeds(speeds: Any) -> dict[str, dict[str, float]] | None:
    if speeds is None:
        return None
    if not isinstance(speeds, Mapping):
        raise TypeError(f"speeds={speeds!r}: expected {{task kind: {{device model: speed}}}}")
    out: dict[str, dict[str, float]] = {}
    for kind, row in speeds.items():
        if not isinstance(row, Mapping):
            raise TypeError(f"speeds[{kind!r}]={row!r}: expected {{device model: speed}}")
        for model, v in row.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or math.isinf(v):
                raise ValueError(f"speeds[{kind!r}][{model!r}]={v!r}: expected a finite "
                                 f"number > 0")
        out[str(kind)] = {str(m): float(v) for m, v in row.items()}
    return out
