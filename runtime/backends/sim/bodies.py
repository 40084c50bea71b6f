"""Running task bodies on the sim backend: greenlets, simcalls, ends, failures and retries.

Mixed into :class:`~runtime.backends.sim.backend.SimBackend`. A body starts in a
fresh :class:`~runtime.backends.sim.core.TaskGreenlet` at its virtual start; its
``get``/``wait``/``sleep`` switch back to the engine; when it returns, its
``sim_duration`` (divided by the node's speed for its kind) is charged before it
finishes. Greenlets are switched into only from engine callbacks.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import random
import sys
import traceback
from typing import Any

from greenlet import GreenletExit

from runtime.backends.sim import core
from runtime.backends.sim.core import Obj, Task, TaskGreenlet, Waiter
from runtime.errors import SerializationError, make_task_error
from runtime.events import EventKind as E
from runtime.refs import ObjectRef
from runtime.serialization import check_picklable

__all__ = ["BodiesMixin"]


class BodiesMixin:
    """Starting, suspending, resuming and ending task bodies (mixed into SimBackend)."""

    # ------------------------------------------------------------------ running bodies
    def _start(self, t: Task) -> None:
        t.attempt += 1
        t.state, t.stage = "running", ""
        self._emit(E.TASK_STARTED, t.id, t.node, attempt=t.attempt, name=t.name)
        g = TaskGreenlet(self._run_body)
        g.task = t
        g.backend = self
        g.gr_context = t.ctx
        t.glet = g
        g.switch(t, t.attempt)

    def _run_body(self, t: Task, attempt: int) -> None:
        """Greenlet entry point: run the body, then schedule its end in virtual time."""
        if self.seed is not None:
            self._seed_rngs(t)
        args, kwargs = t.args, t.kwargs
        try:
            if any(isinstance(a, ObjectRef) for a in args):
                args = tuple(self._objects[a.id].value if isinstance(a, ObjectRef) else a
                             for a in args)
            if kwargs and any(isinstance(v, ObjectRef) for v in kwargs.values()):
                kwargs = {k: self._objects[v.id].value if isinstance(v, ObjectRef) else v
                          for k, v in kwargs.items()}
            value = self._call_body(t, args, kwargs)
            delay = self._duration(t, args, kwargs)
            if self.check_pickle and t.init_of is None:
                _check_return(t, value)
        except Exception as exc:  # noqa: BLE001 - the task's error goes to its ref
            tb = exc.__traceback__
            text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
            err = make_task_error(exc, text, task_name=t.name, task_id=t.id, node=t.node)
            retry = t.init_of is None and t.actor is None and _should_retry(t, exc)
            self.env.timeout(0).callbacks.append(
                lambda e, x=exc, r=err, again=retry: self._end_failed(t, attempt, x, r, again))
            return
        finally:
            if t.attempt == attempt:
                t.glet = None
        self.env.timeout(delay).callbacks.append(lambda e: self._end_ok(t, attempt, value))

    def _call_body(self, t: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if t.actor is not None:
            return getattr(t.actor.instance, t.method)(*args, **kwargs)
        return t.fn(*args, **kwargs)

    def _seed_rngs(self, t: Task) -> None:
        random.seed(f"nbcluster-sim:{self.seed}:{t.id}")
        np = sys.modules.get("numpy")
        if np is not None:
            digest = hashlib.sha256(f"{self.seed}:{t.id}".encode()).digest()
            np.random.seed(int.from_bytes(digest[:4], "little"))

    def _duration(self, t: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        d = t.duration
        if d is None:
            return 0.0
        if callable(d):
            d = d(t.method, *args, **kwargs) if t.actor is not None else d(*args, **kwargs)
            if isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d) \
                    or d < 0 or math.isinf(d):
                raise ValueError(f"sim_duration of task {t.name!r} returned {d!r}: expected a "
                                 f"finite number of seconds >= 0")
        if t.node is not None and t.actor is None and d and t.node in self.index:
            speed = self.index.speed(t.info, self.index.node(t.node))
            if not speed > 0:
                raise ValueError(f"task kind {t.info.task_kind!r} has speed {speed!r} on node "
                                 f"{t.node}: it cannot run there (speeds must be > 0)")
            d = d / speed
        return float(d)

    def _end_ok(self, t: Task, attempt: int, value: Any) -> None:
        if t.attempt != attempt or t.state != "running":
            return
        t.state = "finished"
        self._tasks.pop(t.id, None)
        # an actor's constructor keeps the actor's resources after its task is over
        self.plane.end(t.id, E.TASK_FINISHED, t.node, keep=t.init_of is not None)
        self._complete(t.obj, value, None)
        self._after_end(t, True, value)

    def _end_failed(self, t: Task, attempt: int, exc: Exception, err: BaseException,
                    retry: bool) -> None:
        if t.attempt != attempt or t.state != "running":
            return
        if retry:
            self._requeue(t, E.TASK_RETRIED, node=t.node, attempt=t.attempt,
                          reason=f"raised {type(exc).__name__}")
            return
        self._fail(t, err, f"raised {type(exc).__name__}")
        self._after_end(t, False, err)

    def _release(self, t: Task) -> None:
        """Give back what the task holds (less what it lent while blocked)."""
        t.lent = None
        if t.holds and t.actor is None and t.init_of is None:
            self.plane.stop(t.id)

    def _fail(self, t: Task, err: BaseException, reason: str, *, publish: bool = True) -> None:
        """Finish ``t`` with an error (its greenlet, if any, must already be gone); the
        plane publishes ``task_failed`` (unless it already did: ``publish=False``)."""
        t.state = "failed"
        t.token += 1
        self._tasks.pop(t.id, None)
        if publish:
            self.plane.end(t.id, E.TASK_FAILED, t.node, error=type(err).__name__,
                           reason=reason)
        self._complete(t.obj, None, err)
        if t.init_of is not None:
            self._init_failed(t, err)

    def _complete(self, obj: Obj, value: Any, error: BaseException | None) -> None:
        watch = self._watch
        if watch is not None and obj.id in watch:
            self._watch_left -= 1
        obj.done = True
        obj.value = value
        obj.error = error
        obj.task = None
        callbacks, obj.callbacks = obj.callbacks, []
        for cb in callbacks:
            cb(obj)
        if obj.refs <= 0:
            self._objects.pop(obj.id, None)

    def _abort(self, t: Task) -> None:
        """Stop a running attempt: release its resources and unwind its greenlet."""
        t.token += 1
        self._release(t)
        g, t.glet = t.glet, None
        t.state, t.stage = "pending", "stopped"
        if g is not None and not g.dead:
            if isinstance(core.getcurrent(), TaskGreenlet):
                self.env.timeout(0).callbacks.append(lambda e: core.kill_greenlet(g))
            else:
                core.kill_greenlet(g)

    # ------------------------------------------------------------------ simcalls in bodies
    def _yield(self, t: Task) -> Any:
        g = t.glet
        assert g is not None and g is core.getcurrent()
        return g.parent.switch()

    @staticmethod
    def _check_alive(t: Task) -> None:
        """A body being unwound (cancelled, killed) may not block again: keep unwinding."""
        if t.glet is not core.getcurrent():
            raise GreenletExit

    def _resume(self, t: Task, token: int, value: Any) -> None:
        if t.token != token or t.glet is None:
            return
        t.state, t.stage = "running", ""
        t.glet.switch(value)

    def _block(self, t: Task, objs: list[Obj], k: int, timeout: float | None) -> bool:
        """Suspend ``t`` until ``k`` of ``objs`` are done (True) or the timeout passes (False);
        its CPU is lent meanwhile (GPUs and custom resources are kept)."""
        self._check_alive(t)
        t.token += 1
        token = t.token

        def ready(ok: bool) -> None:
            if t.token != token:
                return
            t.wake = ok
            t.stage = "resuming"  # goes on once the plane gave its CPU back
            if self.plane.want_back(t.id):
                self.env.timeout(0).callbacks.append(lambda e: self._resume(t, token, ok))

        w = Waiter(k, ready)
        for o in objs:
            o.callbacks.append(w)
        if timeout is not None:
            def on_timeout(_e: Any) -> None:
                if not w.fired:
                    w.fired = True
                    ready(False)

            self.env.timeout(timeout).callbacks.append(on_timeout)
        cpu = t.info.request.get("CPU", 0.0)
        t.state, t.stage = "blocked", ""
        if self.lending and t.holds and cpu and t.actor is None and t.init_of is None:
            t.lent = {"CPU": cpu}
            self.plane.lend(t.id, t.lent)
        else:
            self.plane.lend(t.id, {})
        return bool(self._yield(t))

    def _task_wait_objs(self, t: Task, objs: list[Obj], k: int, timeout: float | None) -> bool:
        need = k - sum(1 for o in objs if o.done)
        if need <= 0:
            return True
        if timeout == 0:
            return False
        return self._block(t, [o for o in objs if not o.done], need, timeout)


def _check_return(t: Task, value: Any) -> None:
    try:
        pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - name the culprit
        try:
            check_picklable(value, f"the return value of {t.name}()")
        except SerializationError:
            raise
        except Exception:  # noqa: BLE001 - cloudpickle could pickle it
            return


def _should_retry(t: Task, exc: Exception) -> bool:
    r = t.retry_exceptions
    if not r or not (t.max_retries == -1 or t.attempt <= t.max_retries):
        return False
    return r is True or isinstance(exc, tuple(r))
