"""The dask backend over TLS: a real ``dask scheduler --protocol tls`` and a TLS worker.

Certificates come from the ``openssl`` CLI in a temporary directory: a CA and one
cert (subjectAltName IP:127.0.0.1, DNS:localhost) that the scheduler, the worker
and the client all present, plus a second, untrusted CA with a cert of its own for
the refused-client cases.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from distributed import Client
from distributed.security import Security

import runtime
from runtime.backends.dask.connect import DaskConnectionError
from tests.dask.cluster import DaskCluster, TLSFiles, _identity, dask_cluster, run_options

pytestmark = [
    pytest.mark.dask,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("openssl") is None,
                       reason="the openssl CLI is not on PATH (needed to make test certificates)"),
]

#: Seconds a refused client may take to fail (the ``timeout=`` it is given).
REFUSE_TIMEOUT = 3.0

_LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _openssl(*args: str, cwd: Path) -> None:
    """Run one ``openssl`` command; fail with its output if it fails."""
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stdout}{proc.stderr}")


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256): returns (cert, key)."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return cert, key


def make_leaf(d: Path, name: str, ca: tuple[Path, Path], serial: int) -> TLSFiles:
    """A cert + key for 127.0.0.1/localhost signed by ``ca`` (server and client use)."""
    key, csr, cert, ext = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem",
                           d / f"{name}.ext")
    ext.write_text(_LEAF_EXT)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", str(serial), "-days", "2", "-sha256", "-extfile", str(ext),
             "-out", str(cert), cwd=d)
    _openssl("verify", "-CAfile", str(ca[0]), str(cert), cwd=d)
    return TLSFiles(ca_file=ca[0], cert=cert, key=key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSFiles]:
    """``good``: signed by the cluster's CA; ``rogue``: signed by another CA."""
    d = tmp_path_factory.mktemp("tls")
    good = make_leaf(d, "node", make_ca(d, "cluster-ca"), serial=1)
    rogue = make_leaf(d, "rogue", make_ca(d, "rogue-ca"), serial=2)
    return {"good": good, "rogue": rogue}


@pytest.fixture(scope="module")
def tls_procs(tmp_path_factory: pytest.TempPathFactory,
              certs: dict[str, TLSFiles]) -> Iterator[DaskCluster]:
    """A TLS scheduler and one TLS worker ``tlsw`` (2 threads), stopped on teardown."""
    if runtime.is_initialized():
        runtime.shutdown()
    with dask_cluster(tmp_path_factory.mktemp("dask-tls"), workers={"tlsw": (2, {"CPU": 2})},
                      tls=certs["good"]) as c:
        try:
            yield c
        finally:
            runtime.shutdown()


@pytest.fixture
def rt_tls(tls_procs: DaskCluster) -> Iterator[DaskCluster]:
    """The runtime connected over TLS with the cluster's client cert (shut down after)."""
    if runtime.is_initialized():
        runtime.shutdown()
    runtime.init(tls_procs.address, timeout=30, **tls_procs.client_options(), **run_options())
    try:
        yield tls_procs
    finally:
        runtime.shutdown()


@runtime.remote
def where_and_add(a: int, b: int) -> tuple[str, int]:
    """(worker name, a + b): proves the task ran on a dask worker."""
    import distributed

    return str(distributed.get_worker().name), a + b


@runtime.remote
def total(xs: list[int]) -> int:
    """Sum of a list passed by ref."""
    return sum(xs)


@runtime.remote(num_cpus=1)
def nested(n: int) -> int:
    """Submits a child task from the worker (worker -> scheduler over TLS too)."""
    if n == 0:
        return 0
    return 1 + runtime.get(nested.remote(n - 1))


def _io_threads() -> int:
    return sum(t.name == "IO loop" for t in threading.enumerate())


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _listening(pid: int) -> set[str]:
    out = set()
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.add(c.laddr.ip)
    return out


def test_cluster_listens_on_tls_only(tls_procs: DaskCluster) -> None:
    """Scheduler, worker and nanny use ``tls://127.0.0.1`` addresses and bind nothing else."""
    assert tls_procs.address.startswith("tls://127.0.0.1:")
    with Client(tls_procs.address, timeout=30, set_as_default=False,
                **tls_procs.client_options()) as c:
        info = _identity(c)
    assert info["address"] == tls_procs.address
    assert len(info["workers"]) == 1, info["workers"]
    [(addr, w)] = info["workers"].items()
    assert addr.startswith("tls://127.0.0.1:") and w["nanny"].startswith("tls://127.0.0.1:")
    assert tls_procs.scheduler is not None
    for pid in (tls_procs.scheduler.pid, tls_procs.workers["tlsw"].proc.pid):
        assert _listening(pid) == {"127.0.0.1"}, pid


def test_tasks_put_and_nodes_over_tls(rt_tls: DaskCluster) -> None:
    """Remote tasks, put + task, nested tasks and nodes() all work through TLS."""
    backend = runtime.current_backend()
    assert backend.client.scheduler.address == rt_tls.address
    assert runtime.get(where_and_add.remote(2, 3), timeout=60) == ("tlsw", 5)
    ref = runtime.put(list(range(100)))
    assert runtime.get(total.remote(ref), timeout=60) == 4950
    assert runtime.get(ref, timeout=30) == list(range(100))
    assert runtime.get(nested.remote(3), timeout=60) == 3
    nodes = {n["NodeID"]: n for n in runtime.nodes()}
    assert set(nodes) == {"tlsw"}
    assert nodes["tlsw"]["Resources"] == {"CPU": 2.0}


def _no_client_cert(files: dict[str, TLSFiles], address: str) -> tuple[str, Security | None]:
    return address, Security(tls_ca_file=str(files["good"].ca_file), require_encryption=True)


def _untrusted_client_cert(files: dict[str, TLSFiles],
                           address: str) -> tuple[str, Security | None]:
    # trusts the cluster's CA, but presents a cert the cluster's CA did not sign
    return address, Security(tls_ca_file=str(files["good"].ca_file),
                             tls_client_cert=str(files["rogue"].cert),
                             tls_client_key=str(files["rogue"].key), require_encryption=True)


def _untrusted_ca(files: dict[str, TLSFiles], address: str) -> tuple[str, Security | None]:
    # presents the rogue cert and trusts only the rogue CA: rejects the scheduler too
    return address, files["rogue"].security()


def _plain_tcp(files: dict[str, TLSFiles], address: str) -> tuple[str, Security | None]:
    return address.replace("tls://", "tcp://", 1), None


def _tls_without_security(files: dict[str, TLSFiles],
                          address: str) -> tuple[str, Security | None]:
    return address, None


@pytest.mark.parametrize("client", [
    pytest.param(_untrusted_client_cert, id="cert-from-other-ca"),
    pytest.param(_untrusted_ca, id="trusts-other-ca"),
    pytest.param(_plain_tcp, id="plain-tcp"),
])
def test_client_without_the_right_certificates_is_refused(
        tls_procs: DaskCluster, certs: dict[str, TLSFiles],
        client: Callable[[dict[str, TLSFiles], str], tuple[str, Any]]) -> None:
    """A client lacking a cert signed by the cluster's CA gets DaskConnectionError naming
    the address within its timeout, leaves no loop thread, and the cluster still serves."""
    if runtime.is_initialized():
        runtime.shutdown()
    address, security = client(certs, tls_procs.address)
    kw = {"security": security} if security is not None else {}
    log = tls_procs.workdir / "scheduler.log"
    refusals = log.read_text().count("TLS handshake failed")
    before = _io_threads()
    start = time.monotonic()
    with pytest.raises(DaskConnectionError) as info:
        runtime.init(address, timeout=REFUSE_TIMEOUT, **kw, **run_options())
    elapsed = time.monotonic() - start
    assert info.value.address == address
    assert address in str(info.value)
    assert elapsed < REFUSE_TIMEOUT + 5, f"refused after {elapsed:.1f} s"
    assert not runtime.is_initialized()
    _wait_for(lambda: _io_threads() <= before, 10, "the failed client's loop thread to stop")
    # the scheduler itself refused the handshake (not some unrelated failure)
    _wait_for(lambda: log.read_text().count("TLS handshake failed") > refusals, 10,
              "the scheduler to log the refused TLS handshake")
    # the refused attempt did not hurt the cluster: the right cert still gets in
    runtime.init(tls_procs.address, timeout=30, **tls_procs.client_options(), **run_options())
    try:
        assert runtime.get(where_and_add.remote(1, 1), timeout=60) == ("tlsw", 2)
    finally:
        runtime.shutdown()


@pytest.mark.parametrize("client", [
    pytest.param(_no_client_cert, id="no-client-cert"),
    pytest.param(_tls_without_security, id="tls-without-security"),
])
def test_tls_without_a_client_certificate_says_what_to_pass(
        tls_procs: DaskCluster, certs: dict[str, TLSFiles],
        client: Callable[[dict[str, TLSFiles], str], tuple[str, Any]]) -> None:
    """A tls:// address with no client certificate fails at once, naming the address and
    the security= argument to pass (distributed itself raises a bare TypeError)."""
    if runtime.is_initialized():
        runtime.shutdown()
    address, security = client(certs, tls_procs.address)
    kw = {"security": security} if security is not None else {}
    start = time.monotonic()
    with pytest.raises(DaskConnectionError) as info:
        runtime.init(address, timeout=REFUSE_TIMEOUT, **kw, **run_options())
    assert time.monotonic() - start < REFUSE_TIMEOUT
    assert info.value.address == address and address in str(info.value)
    assert "security=" in str(info.value) and "tls_client_cert" in str(info.value)
    assert not runtime.is_initialized()
