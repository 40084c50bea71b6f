"""Object refs and actor handles: the handles users hold.

An :class:`ObjectRef` speaks the ``concurrent.futures.Future`` vocabulary
(``result``, ``done``, ``exception``, ``add_done_callback``, ``cancel``) and is
awaitable, but every blocking call goes through its backend. Refs and handles
pickle by id: inside a task they bind to that worker's backend.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from runtime import session
from runtime.errors import RuntimeShutdownError
from runtime.options import check_timeout

if TYPE_CHECKING:
    import asyncio

    from runtime.backends.base import Backend

__all__ = ["ObjectRef", "ActorHandle", "ActorMethod"]

#: Called with a ref's id whenever a ref is pickled in this process (the local
#: backend uses it to keep objects alive whose refs travel inside other values).
_pickle_hook: Callable[[int], None] | None = None


def _current_backend() -> Backend:
    return session.require_backend()


class ObjectRef:
    """A handle to a task's result or a ``put`` value; hashable, Future-like, awaitable."""

    __slots__ = ("id", "name", "_backend", "__weakref__")

    def __init__(self, id: int, backend: Backend | None = None, name: str = "") -> None:
        self.id = id
        self.name = name
        self._backend = backend
        hook = getattr(backend, "_ref_created", None)
        if hook is not None:
            hook(id)

    def __del__(self) -> None:
        backend = getattr(self, "_backend", None)
        hook = getattr(backend, "_ref_deleted", None)
        if hook is not None:
            try:
                hook(self.id)
            except Exception:  # noqa: BLE001 - never raise from __del__
                pass

    @property
    def backend(self) -> Backend:
        """The backend that owns this ref (the current one for unpickled refs)."""
        if self._backend is None:
            self._backend = _current_backend()
        return self._backend

    def __hash__(self) -> int:
        return hash(("ObjectRef", self.id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __repr__(self) -> str:
        state = "?"
        try:
            state = "done" if self.done() else "pending"
        except Exception:  # noqa: BLE001 - repr must not raise
            pass
        label = f" {self.name}" if self.name else ""
        return f"ObjectRef({self.id}{label}, {state})"

    def __reduce__(self) -> tuple[Any, ...]:
        hook = _pickle_hook
        if hook is not None:
            hook(self.id)
        return (_rebuild_ref, (self.id, self.name))

    # Future vocabulary --------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """The value (blocking up to ``timeout`` s); raises the task's error."""
        return self.backend.get([self], check_timeout(timeout))[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's error, or None when it succeeded (blocks like ``result``)."""
        from runtime.errors import GetTimeoutError

        try:
            self.result(timeout)
        except GetTimeoutError:
            raise
        except BaseException as exc:  # noqa: BLE001 - return, don't raise
            return exc
        return None

    def done(self) -> bool:
        """Whether the value or error is ready (never blocks)."""
        return self.backend.done(self)

    def running(self) -> bool:
        """Whether the task has not finished (started or not)."""
        return not self.done()

    def cancelled(self) -> bool:
        """Whether the task ended by cancellation."""
        from runtime.errors import TaskCancelledError

        return self.done() and isinstance(self.exception(0), TaskCancelledError)

    def cancel(self, force: bool = False) -> bool:
        """Cancel the task (see :func:`runtime.cancel`)."""
        return self.backend.cancel(self, force=force)

    def add_done_callback(self, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` when done (possibly from another thread)."""
        self.backend.add_done_callback(self, fn)

    def future(self) -> asyncio.Future[Any]:
        """An asyncio future on the running loop that completes with this ref."""
        import asyncio  # here, not at import: workers and the API stay light

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(_ref: ObjectRef) -> None:
            def apply() -> None:
                if fut.done():
                    return
                try:
                    fut.set_result(self.result(0))
                except BaseException as exc:  # noqa: BLE001 - forward every error
                    fut.set_exception(exc)

            try:
                loop.call_soon_threadsafe(apply)
            except RuntimeError:  # loop closed
                pass

        self.add_done_callback(settle)
        return fut

    def __await__(self) -> Generator[Any, None, Any]:
        return self.future().__await__()


def _rebuild_ref(id: int, name: str) -> ObjectRef:
    return ObjectRef(id, session.backend_or_none(), name)


class ActorMethod:
    """``handle.method``: call ``.remote(*args)`` to queue a call on the actor."""

    __slots__ = ("_handle", "_name")

    def __init__(self, handle: ActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        """Queue the call; returns the ref of its result."""
        h = self._handle
        return h.backend.call_actor(h._actor_id, self._name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods are called with .remote(): "
                        f"use {self._handle._class_name}.{self._name}.remote(...)")

    def __repr__(self) -> str:
        return f"ActorMethod({self._handle._class_name}.{self._name})"


class ActorHandle:
    """A handle to a live actor; ``handle.method.remote(...)`` queues calls in order."""

    def __init__(self, actor_id: int, class_name: str, methods: tuple[str, ...],
                 backend: Backend | None = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._backend = backend

    @property
    def backend(self) -> Backend:
        """The backend that runs this actor."""
        if self._backend is None:
            self._backend = _current_backend()
        if self._backend is None:  # pragma: no cover - _current_backend raises
            raise RuntimeShutdownError("runtime is not initialized")
        return self._backend

    @property
    def actor_id(self) -> int:
        """The actor's id."""
        return self._actor_id

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"actor {self._class_name} has no method {name!r}; "
                                 f"methods: {', '.join(self._methods) or 'none'}")
        return ActorMethod(self, name)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._methods]

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, id={self._actor_id})"

    def __hash__(self) -> int:
        return hash(("ActorHandle", self._actor_id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handle, (self._actor_id, self._class_name, self._methods))


def _rebuild_handle(actor_id: int, class_name: str, methods: tuple[str, ...]) -> ActorHandle:
    return ActorHandle(actor_id, class_name, methods, session.backend_or_none())
