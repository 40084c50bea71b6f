"""Connecting to a dask scheduler: address checks, a bounded connect, a clear error, TLS.

A failed ``distributed.Client(address)`` raises a bare ``OSError`` after its
timeout and leaves its event-loop thread running (the interpreter then waits at
exit). :func:`connect` checks the address first, closes whatever a failed
attempt opened, and raises :class:`DaskConnectionError` naming the address.

Security: a plain ``tcp://`` connection to a host that is not this machine warns
(:class:`~runtime.errors.SecurityWarning`): whoever reaches that scheduler runs
code on every worker. :func:`make_tls` writes a certificate for every role of a
cluster (like ``Security.temporary()``, but in files the ``dask scheduler`` and
``dask worker`` commands can read); ``security=True`` then finds it (or the
credentials of a cluster object made in this process).
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed

from runtime.errors import NBClusterError, SecurityWarning

__all__ = ["DaskConnectionError", "SCHEMES", "check_address", "check_timeout", "connect",
           "TLSFiles", "make_tls", "tls_dir", "resolve_security", "warn_if_insecure"]

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
    """A client connected to ``address``; raises :class:`DaskConnectionError` on failure.

    ``security=True``: the credentials of a cluster object made in this process for
    that address, else those :func:`make_tls` wrote to :func:`tls_dir`."""
    check_address(address)
    security = resolve_security(address, security)
    warn_if_insecure(address, security)
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


# ---------------------------------------------------------------------------- security
#: Schemes whose traffic is neither encrypted nor authenticated.
PLAIN = ("tcp", "ws", "ucx")


def _host(address: str) -> str:
    rest = address.split("://", 1)[1] if "://" in address else address
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    return host.strip("[]")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def warn_if_insecure(address: str, security: Any = None) -> None:
    """Warn when ``address`` is plain (``tcp://``) and not on this machine."""
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme not in PLAIN or security is not None or _loopback(_host(address)):
        return
    warnings.warn(SecurityWarning(
        f"nbcluster: connecting to the dask scheduler at {address} without TLS: anyone who "
        f"can reach it can run code on every worker, and the traffic is not encrypted. "
        f"Start the scheduler and workers with TLS (certificates from "
        f"runtime.backends.dask.connect.make_tls(...); see docs/dask.md, 'Security') and connect "
        f"with runtime.init('tls://{address.split('://', 1)[-1]}', security=True)."),
        stacklevel=4)


def tls_dir() -> Path:
    """Where :func:`make_tls` writes by default: ``$NBCLUSTER_TLS_DIR`` or ``~/.nbcluster/tls``."""
    env = os.environ.get("NBCLUSTER_TLS_DIR")
    return Path(env) if env else Path.home() / ".nbcluster" / "tls"


@dataclass(frozen=True)
class TLSFiles:
    """A cluster's TLS credentials: one certificate (its own CA) and key, for every role."""

    ca_file: Path
    cert: Path
    key: Path

    def cli_args(self) -> list[str]:
        """The flags for ``dask scheduler`` and ``dask worker`` (add ``--protocol tls``)."""
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]

    def security(self) -> Any:
        """A ``distributed.security.Security`` for clients, schedulers and workers."""
        from distributed.security import Security

        c, k, ca = str(self.cert), str(self.key), str(self.ca_file)
        return Security(tls_ca_file=ca, tls_client_cert=c, tls_client_key=k,
                        tls_scheduler_cert=c, tls_scheduler_key=k, tls_worker_cert=c,
                        tls_worker_key=k, require_encryption=True)


def _files(d: Path) -> TLSFiles:
    return TLSFiles(d / "cluster.pem", d / "cluster.pem", d / "cluster.key")


def make_tls(directory: str | os.PathLike[str] | None = None, *,
             hosts: tuple[str, ...] = (), days: int = 365) -> TLSFiles:
    """Write a self-signed certificate and key for a cluster (``Security.temporary()``
    style: the certificate is its own CA, one for every role) into ``directory``
    (default :func:`tls_dir`), readable by this user only; copy it to each machine.

    ``hosts``: names and IPs to list in the certificate besides 127.0.0.1 and localhost
    (dask does not check host names; they help other tools). Made with ``openssl``, or
    with the ``cryptography`` package when it is installed."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days={days!r}: expected a whole number of days >= 1")
    d = Path(directory) if directory is not None else tls_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    files = _files(d)
    names = ["DNS:dask-internal", "DNS:localhost", "IP:127.0.0.1"]
    for h in hosts:
        try:
            names.append(f"IP:{ipaddress.ip_address(h)}")
        except ValueError:
            names.append(f"DNS:{h}")
    old = os.umask(0o077)
    try:
        if shutil.which("openssl"):
            _openssl(files, names, days)
        else:
            _cryptography(files, names, days)
    finally:
        os.umask(old)
    for f in (files.cert, files.key):
        os.chmod(f, 0o600)
    return files


def _openssl(files: TLSFiles, names: list[str], days: int) -> None:
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(files.key), "-out",
           str(files.cert), "-days", str(days), "-subj", "/CN=dask-internal",
           "-addext", "subjectAltName=" + ",".join(names),
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"openssl could not make the certificate: {r.stderr.strip()}")


def _cryptography(files: TLSFiles, names: list[str], days: int) -> None:
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise RuntimeError("make_tls() needs the openssl command or the cryptography "
                           "package (pip install cryptography)") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    alt = [x509.IPAddress(ipaddress.ip_address(n[3:])) if n.startswith("IP:")
           else x509.DNSName(n[4:]) for n in names]
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cluster_security(address: str) -> Any:
    """The ``security`` of a dask cluster object in this process serving ``address``."""
    try:
        from distributed.deploy.spec import SpecCluster
    except ImportError:  # pragma: no cover
        return None
    for c in list(getattr(SpecCluster, "_instances", ())):
        try:
            if c.scheduler_address == address:
                return getattr(c, "security", None)
        except Exception:  # noqa: BLE001 - a closing cluster
            continue
    return None


def resolve_security(address: str, security: Any) -> Any:
    """``security=True`` (or a ``tls://`` address without one): the credentials of a
    cluster object in this process at ``address``, else the files in :func:`tls_dir`."""
    if security is not None and security is not True:
        return security
    found = _cluster_security(address)
    if found is not None and _has_client_tls(found):
        return found
    if security is None:
        return None
    files = _files(tls_dir())
    if files.cert.exists() and files.key.exists():
        return files.security()
    raise ValueError(
        f"security=True: no TLS credentials for {address}: no cluster object in this "
        f"process serves it, and {files.cert} does not exist. Make them once with "
        f"runtime.backends.dask.connect.make_tls() (or python -m runtime.backends.dask.connect "
        f"--make-tls DIR), start the scheduler and workers with their cli_args(), or pass "
        f"security=distributed.security.Security(...)")


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.backends.dask.connect --make-tls [DIR] [--host H]...`` writes
    the certificate; ``--tls-flags [DIR]`` prints the dask CLI flags that use it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m runtime.backends.dask.connect",
                                 description="TLS credentials for a dask cluster")
    ap.add_argument("--make-tls", nargs="?", const="", metavar="DIR",
                    help=f"write cluster.pem and cluster.key (default {tls_dir()})")
    ap.add_argument("--tls-flags", nargs="?", const="", metavar="DIR",
                    help="print --protocol tls and the --tls-* flags for dask scheduler/worker")
    ap.add_argument("--host", action="append", default=[], help="a host name or IP to list")
    args = ap.parse_args(argv)
    if args.make_tls is None and args.tls_flags is None:
        ap.error("give --make-tls or --tls-flags")
    if args.make_tls is not None:
        files = make_tls(args.make_tls or None, hosts=tuple(args.host))
        print(f"wrote {files.cert} and {files.key}")
    if args.tls_flags is not None:
        files = _files(Path(args.tls_flags) if args.tls_flags else tls_dir())
        if not files.key.exists():
            print(f"no {files.key}: run with --make-tls first", file=sys.stderr)
            return 2
        print(" ".join(["--protocol", "tls", *files.cli_args()]))
    return 0


if __name__ == "__main__":  # pragma: no cover - a command-line tool
    raise SystemExit(main())
