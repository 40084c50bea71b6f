"""Which backend is the current one: set by ``runtime.init`` (or inside a worker process).

A module of its own so that refs (which rebuild themselves on the current backend when
unpickled) and the API (which sets it) both use it without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.errors import RuntimeShutdownError

if TYPE_CHECKING:
    from runtime.backends.base import Backend

__all__ = ["backend_or_none", "require_backend", "set_backend"]

_backend: Backend | None = None


def backend_or_none() -> Backend | None:
    """The current backend, or None."""
    return _backend


def require_backend() -> Backend:
    """The current backend (raises when the runtime is not initialized)."""
    b = _backend
    if b is None:
        raise RuntimeShutdownError(
            "the runtime is not initialized: call runtime.init() (or %cluster connect)")
    return b


def set_backend(backend: Backend | None) -> None:
    """Install ``backend`` as the current one (``init``/``shutdown``, worker processes)."""
    global _backend
    _backend = backend
