"""The public, Ray-style API: ``init``, ``remote``, ``get``, ``wait``, ``put``...

This layer validates what users pass (naming the argument, the value and what
would be accepted) and hands everything else to the current backend. It never
blocks by itself: ``get``, ``wait`` and ``sleep`` are the backend's, so the sim
backend can advance virtual time instead.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, overload

from runtime import session
from runtime.backends.base import ActorSpec, Backend, TaskSpec
from runtime.events import Event
from runtime.options import check_timeout as _check_timeout
from runtime.options import option, resource_request, validate_options
from runtime.refs import ActorHandle, ObjectRef

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "cancel", "kill",
    "cluster_resources", "available_resources", "nodes", "sleep", "now", "current_backend",
    "subscribe", "RemoteFunction", "ActorClass", "ClusterHandle",
]

_lock = threading.RLock()

#: Backend modules by name; each exposes ``make_backend(address, **options) -> Backend``.
BACKEND_MODULES = {
    "local": "runtime.backends.local",
    "dask": "runtime.backends.dask",
    "sim": "runtime.backends.sim",
}


_backend_or_none = session.backend_or_none
_require_backend = session.require_backend
_set_backend = session.set_backend


def _auto_init() -> Backend:
    b = session.backend_or_none()
    if b is not None:
        return b
    with _lock:
        if session.backend_or_none() is None:
            init()
        return _require_backend()


def _backend_name(address: Any, backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKEND_MODULES:
            raise ValueError(f"backend={backend!r}: expected one of "
                             f"{', '.join(map(repr, BACKEND_MODULES))}")
        return backend
    if address is None or address == "local":
        return "local"
    if address == "sim":
        return "sim"
    if isinstance(address, str):
        if "://" in address or (":" in address and address.rsplit(":", 1)[1].isdigit()):
            return "dask"
        raise ValueError(
            f"address={address!r}: expected None or 'local' (worker processes here), 'sim' "
            f"(simulated cluster) or a dask scheduler address such as 'tcp://127.0.0.1:8786'"
        )
    # a distributed.Client or a dask cluster object
    if hasattr(address, "scheduler_address") or hasattr(address, "scheduler_info"):
        return "dask"
    raise TypeError(f"address={address!r}: expected a string, a distributed.Client or a dask "
                    f"cluster object, got {type(address).__name__}")


def init(
    address: Any = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: Mapping[str, float] | None = None,
    backend: str | None = None,
    ignore_reinit_error: bool = False,
    **options: Any,
) -> ClusterHandle:
    """Start (or connect to) a cluster and make it the current one.

    ``address=None`` starts the local backend (worker processes here, no server);
    ``"sim"`` a simulated cluster; ``"tcp://host:8786"`` (or a ``distributed.Client``)
    the dask backend. Other keywords (``nodes=``, ``policy=``, ``autoscaler=``...)
    go to the backend. Returns a handle that displays the cluster and works as a
    context manager that shuts down on exit.
    """
    with _lock:
        current = session.backend_or_none()
        if current is not None:
            if ignore_reinit_error:
                return ClusterHandle(current)
            raise RuntimeError(
                "runtime.init() was already called; call runtime.shutdown() first, "
                "or pass ignore_reinit_error=True"
            )
        name = _backend_name(address, backend)
        for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or math.isnan(value) or value < 0):
                raise ValueError(f"{key}={value!r}: expected a number >= 0")
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if num_gpus is not None:
            options["num_gpus"] = num_gpus
        if resources is not None:
            options["resources"] = resources
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("runtime"):
                raise NotImplementedError(f"the {name!r} backend is not available yet") from exc
            raise
        b = module.make_backend(address, **options)
        session.set_backend(b)
        return ClusterHandle(b)


def shutdown() -> None:
    """Stop the current backend: workers exit, pending refs raise a shutdown error.

    Calling it again (or without ``init``) does nothing.
    """
    with _lock:
        b = session.backend_or_none()
        session.set_backend(None)
    if b is not None:
        b.shutdown()


atexit.register(shutdown)


def is_initialized() -> bool:
    """Whether ``init`` was called (and ``shutdown`` not since)."""
    return session.backend_or_none() is not None


def current_backend() -> Backend:
    """The backend in use (raises when the runtime is not initialized)."""
    return _require_backend()


def subscribe(fn: Callable[[Event], None]) -> Callable[[], None]:
    """Call ``fn(event)`` for every event of the current cluster; returns an unsubscribe."""
    return _require_backend().events.subscribe(fn)


# ---------------------------------------------------------------------------
# remote functions and actor classes
# ---------------------------------------------------------------------------


class RemoteFunction:
    """A function decorated with ``@remote``: call ``.remote(*args)`` to run it as a task."""

    def __init__(self, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
        self._function = fn
        self._options = validate_options("task", options)
        self._name = self._options.get("name") or getattr(fn, "__qualname__", None) or repr(fn)
        self._request = resource_request(self._options)
        self._max_retries = option(self._options, "max_retries")
        self._retry_exceptions = option(self._options, "retry_exceptions")
        functools.update_wrapper(self, fn)

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        """Submit one call; returns the ref of its result at once."""
        spec = TaskSpec(self._function, args, kwargs, self._name, self._options, self._request,
                        self._max_retries, self._retry_exceptions)
        return _auto_init().submit(spec)

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options changed (validated now)."""
        return RemoteFunction(self._function, {**self._options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name!r} cannot be called directly; "
            f"use {self._name}.remote(...) (or {self._name}._function(...) to run it here)"
        )

    def __repr__(self) -> str:
        return f"RemoteFunction({self._name}, {self._request!r})"


class ActorClass:
    """A class decorated with ``@remote``: ``.remote(*args)`` starts an actor."""

    def __init__(self, cls: type, options: Mapping[str, Any]) -> None:
        self._cls = cls
        self._options = validate_options("actor", options)
        self._name = self._options.get("name") or cls.__qualname__
        self._methods = tuple(
            n for n, v in inspect.getmembers(cls, callable)
            if not n.startswith("_") or n == "__call__"
        )
        functools.update_wrapper(self, cls, updated=())

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Start an actor; returns its handle at once (the constructor runs remotely)."""
        backend = _auto_init()
        o = self._options
        spec = ActorSpec(
            self._cls, args, kwargs, self._name, o,
            resource_request(o, default_cpus=0.0),
            option(o, "max_restarts", "actor"), option(o, "max_task_retries", "actor"),
            self._methods,
        )
        actor_id = backend.create_actor(spec)
        return ActorHandle(actor_id, self._name, self._methods, backend)

    def options(self, **options: Any) -> ActorClass:
        """A copy with some options changed (validated now)."""
        return ActorClass(self._cls, {**self._options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._name!r} cannot be instantiated directly; "
                        f"use {self._name}.remote(...)")

    def __repr__(self) -> str:
        return f"ActorClass({self._name})"


@overload
def remote(fn_or_class: type) -> ActorClass: ...
@overload
def remote(fn_or_class: Callable[..., Any]) -> RemoteFunction: ...
@overload
def remote(**options: Any) -> Callable[[Any], Any]: ...


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function, or a class an actor class.

    Bare (``@remote``) or with options (``@remote(num_gpus=1, max_retries=2)``);
    options are validated here, naming the keyword on error.
    """
    if args:
        if len(args) != 1 or options or not callable(args[0]):
            raise TypeError("@remote takes a function or class, or only keyword options: "
                            "@remote(num_cpus=1, ...)")
        target = args[0]
        return ActorClass(target, {}) if inspect.isclass(target) else RemoteFunction(target, {})
    validate_options("task", {k: v for k, v in options.items()
                              if k not in ("max_restarts", "max_task_retries", "max_concurrency",
                                           "lifetime")})

    def decorate(target: Any) -> Any:
        if inspect.isclass(target):
            return ActorClass(target, options)
        if not callable(target):
            raise TypeError(f"@remote(...) decorates a function or class, got {target!r}")
        return RemoteFunction(target, options)

    return decorate


# ---------------------------------------------------------------------------
# objects
# ---------------------------------------------------------------------------


def _check_refs(refs: Iterable[Any], fn: str) -> list[ObjectRef]:
    out = list(refs)
    for i, r in enumerate(out):
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{fn}(): item {i} is {type(r).__name__} {r!r}, not an ObjectRef")
    return out


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value of a ref, or a list of values for a list of refs (blocking).

    Raises the task's error (an instance of its own type and of ``TaskError``), or
    ``GetTimeoutError`` (a ``TimeoutError``) after ``timeout`` seconds. Futures over a
    task (``%%remote --bg`` handles) give their own ``result()``.
    """
    t = _check_timeout(timeout)
    if isinstance(refs, ObjectRef):
        return refs.backend.get([refs], t)[0]
    many = isinstance(refs, (list, tuple))
    futures = [r for r in (refs if many else [refs]) if hasattr(r, "_runtime_ref_")]
    if futures:
        # futures over a task (``%%remote --bg`` handles): each gives its own result,
        # waiting on its task's ref; the deadline is on the backend's clock
        items = list(refs) if many else [refs]
        _check_refs([r._runtime_ref_() if hasattr(r, "_runtime_ref_") else r for r in items],
                    "get")
        backend = futures[0]._runtime_ref_().backend
        end = None if t is None else backend.now() + t
        values = []
        for r in items:
            left = None if end is None else max(end - backend.now(), 0.0)
            values.append(r.result(timeout=left) if hasattr(r, "_runtime_ref_")
                          else r.backend.get([r], left)[0])
        return values if many else values[0]
    if not many:
        raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got "
                        f"{type(refs).__name__}")
    items = _check_refs(refs, "get")
    if not items:
        return []
    return items[0].backend.get(items, t)


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split refs into (ready, not ready) once ``num_returns`` are done or time runs out.

    Both lists keep the input order; ``ready`` has at most ``num_returns`` refs.
    Futures over a task (``%%remote --bg`` handles) may be mixed in; they come back as given.
    """
    if isinstance(refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef; "
                        "use wait([ref])")
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(refs).__name__}")
    given = list(refs)  # futures over a task (%%remote --bg handles) wait on their refs
    items = _check_refs([r._runtime_ref_() if hasattr(r, "_runtime_ref_") else r
                         for r in given], "wait")
    if len(set(items)) != len(items):
        raise ValueError("wait() got the same ObjectRef more than once")
    t = _check_timeout(timeout)
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns={num_returns!r}: expected an int")
    if not items:
        return [], []
    if not 1 <= num_returns <= len(items):
        raise ValueError(f"num_returns={num_returns}: expected 1 <= num_returns <= "
                         f"{len(items)} (the number of refs)")
    ready_idx = set(items[0].backend.wait(items, num_returns, t)[:num_returns])
    ready = [r for i, r in enumerate(given) if i in ready_idx]
    rest = [r for i, r in enumerate(given) if i not in ready_idx]
    return ready, rest


def put(value: Any) -> ObjectRef:
    """Store ``value`` once in the object store; pass the ref to many tasks."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself")
    return _auto_init().put(value)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
    """Cancel a task: it never runs if pending; a running one is interrupted
    (its worker killed when ``force``). ``get`` then raises ``TaskCancelledError``."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
    return ref.backend.cancel(ref, force=force, recursive=recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor's process; its pending and later calls raise ``ActorDiedError``."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an ActorHandle, got {type(actor).__name__}")
    actor.backend.kill_actor(actor.actor_id, no_restart=no_restart)


def sleep(seconds: float) -> None:
    """Sleep through the backend: virtual time on the sim backend, real elsewhere."""
    s = _check_timeout(seconds)
    _require_backend().sleep(s or 0.0)


def now() -> float:
    """Seconds since the cluster started (virtual on the sim backend)."""
    return _require_backend().now()


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster's live nodes."""
    return _require_backend().cluster_resources()


def available_resources() -> dict[str, float]:
    """Free resources of the cluster's up nodes."""
    return _require_backend().available_resources()


def nodes() -> list[dict[str, Any]]:
    """One dict per node: ``NodeID``, ``Alive``, ``Resources``, ``Available``, ``Labels``..."""
    return [
        {"NodeID": n.id, "NodeType": n.node_type, "Alive": n.state in ("up", "draining"),
         "State": n.state, "Resources": n.total.to_dict(), "Available": n.free.to_dict(),
         "Labels": dict(n.labels)}
        for n in _require_backend().nodes()
    ]


class ClusterHandle:
    """What ``init`` returns: shows the cluster in a notebook; a context manager."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if session.backend_or_none() is self.backend:
            shutdown()
        else:
            self.backend.shutdown()

    def __repr__(self) -> str:
        from runtime.view import status_text

        return status_text(self.backend)

    def _repr_html_(self) -> str:
        from runtime.view import status_html

        return status_html(self.backend)
