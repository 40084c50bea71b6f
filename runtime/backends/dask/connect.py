"""Connecting to a dask scheduler: address checks, a bounded connect, a clear error.

A failed ``distributed.Client(address)`` raises a bare ``OSError`` after its
timeout and leaves its event-loop thread running (the interpreter then waits at
exit). :func:`connect` checks the address first, closes whatever a failed
attempt opened, and raises :class:`DaskConnectionError` naming the address.
"""

from __future__ import annotations

import math
from typing import Any

import distributed

from runtime.errors import NBClusterError

__all__ = ["DaskConnectionError", "SCHEMES", "check_address", "check_timeout", "connect"]

#: Address schemes dask's comm layer understands (``tcp://host:port`` is the usual one).
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


class DaskConnectionError(NBClusterError, ConnectionError):
    """The dask scheduler at ``address`` could not be reached within ``timeout`` seconds."""

    def __init__(self, address: str, timeout: float, cause: BaseException | None = None,
                 hint: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        why = f": {cause}" if cause is not None and str(cause) else ""
        hint = hint or ("Is a scheduler running there (dask scheduler --host HOST --port "
                        "PORT) and reachable from here? Pass timeout= to wait longer; if it "
                        "uses TLS, connect to tls://... with security=Security(...).")
        super().__init__(
            f"could not connect to the dask scheduler at {address!r} within {timeout:g} s"
            f"{why}. {hint}")


def check_timeout(timeout: Any) -> float:
    """Validate the ``timeout=`` option (seconds, a finite number > 0)."""
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or math.isnan(timeout) or math.isinf(timeout) or timeout <= 0):
        raise ValueError(f"timeout={timeout!r}: expected seconds to wait for the scheduler, "
                         f"a finite number > 0 (default 10)")
    return float(timeout)


def check_address(address: str) -> str:
    """Validate a scheduler address string: a known scheme (or none) and a host."""
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme not in SCHEMES:
            raise ValueError(
                f"address={address!r}: unknown scheme {scheme + '://'!r}; a dask scheduler "
                f"address starts with one of {', '.join(s + '://' for s in SCHEMES)} "
                f"(e.g. 'tcp://127.0.0.1:8786')")
    else:
        rest = address
    if not rest.strip() or rest.startswith(":"):
        raise ValueError(f"address={address!r}: no host; expected e.g. 'tcp://127.0.0.1:8786'")
    return address


class _Client(distributed.Client):
    """A ``distributed.Client`` that cleans up after itself when it fails to connect."""

    def start(self, **kwargs: Any) -> Any:
        """Connect; on failure close the client and stop its event-loop thread."""
        try:
            return super().start(**kwargs)
        except BaseException:
            try:
                self.close(timeout=2)
            except Exception:  # noqa: BLE001 - half-open: close what we can
                pass
            try:
                self._loop_runner.stop()
            except Exception:  # noqa: BLE001 - already stopped
                pass
            raise


def _has_client_tls(security: Any) -> bool:
    """Whether ``security`` gives a client TLS context (a CA and a client certificate)."""
    if security is None:
        return False
    try:
        return security.get_connection_args("client").get("ssl_context") is not None
    except Exception:  # noqa: BLE001 - unreadable files: let the connect attempt say so
        return True


def connect(address: str, *, timeout: float, security: Any = None) -> distributed.Client:
    """A client connected to ``address``; raises :class:`DaskConnectionError` on failure."""
    check_address(address)
    if address.startswith("tls://") and not _has_client_tls(security):
        raise DaskConnectionError(
            address, timeout, hint="A tls:// scheduler needs a client certificate: pass "
            "security=distributed.security.Security(tls_ca_file=..., tls_client_cert=..., "
            "tls_client_key=..., require_encryption=True).")
    kw: dict[str, Any] = {"timeout": timeout, "set_as_default": False}
    if security is not None:
        kw["security"] = security
    try:
        return _Client(address, **kw)
    except (OSError, TimeoutError) as exc:
        raise DaskConnectionError(address, timeout, exc) from exc
