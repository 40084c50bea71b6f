"""Issue 11.10: plain TCP off this host warns; the documented ``dask scheduler`` /
``dask worker`` commands bind what they say (their HTTP servers too); TLS with
generated certificates as a one-flag option. Real processes, 127.0.0.1 only."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

import runtime
from runtime.backends.dask.connect import DaskConnectionError, make_tls
from runtime.errors import SecurityWarning
from tests.dask.cluster import ROOT, _env, dask_cluster, free_port, run_options

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


def _this_hosts_ip() -> str | None:
    """A non-loopback address of this machine (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_plain_tcp_to_another_host_warns_and_loopback_does_not():
    """A tcp:// address that is not this machine warns (SecurityWarning naming it and
    the fix); 127.0.0.1 does not. Nothing listens at either: both then fail to connect."""
    if runtime.is_initialized():
        runtime.shutdown()
    ip = _this_hosts_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    far = f"tcp://{ip}:{free_port()}"
    with pytest.warns(SecurityWarning, match=rf"{re.escape(far)} without TLS.*security=True"):
        with pytest.raises(DaskConnectionError):
            runtime.init(far, timeout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        with pytest.raises(DaskConnectionError):
            runtime.init(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
    assert not runtime.is_initialized()


def _documented_commands() -> list[str]:
    """The plain ``dask scheduler`` / ``dask worker`` commands of docs/dask.md."""
    text = (ROOT / "docs" / "dask.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = " ".join(cmd.split())
            if cmd.startswith(("dask scheduler", "dask worker")) and "$(" not in cmd \
                    and "--tls" not in cmd:
                cmds.append(cmd)
    return cmds


def _listening(pid: int) -> set[tuple[str, int]]:
    out = set()
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.add((c.laddr.ip, c.laddr.port))
    return out


@pytest.mark.slow
def test_the_documented_commands_bind_only_the_addresses_they_name(tmp_path):
    """Every scheduler and worker command of docs/dask.md, run as written with
    127.0.0.1 for its addresses (and free ports), listens on 127.0.0.1 only, HTTP
    servers included, on the dashboard ports it names."""
    cmds = _documented_commands()
    assert sum(c.startswith("dask scheduler") for c in cmds) >= 1 and \
        sum(c.startswith("dask worker") for c in cmds) >= 2, cmds
    ports = {p: free_port() for p in sorted(set(re.findall(r"\b(87\d\d)\b", " ".join(cmds))))}
    procs: list[tuple[str, subprocess.Popen[bytes], set[int]]] = []
    seen_scheduler = False
    try:
        for i, cmd in enumerate(cmds):
            if cmd.startswith("dask scheduler"):
                if seen_scheduler:
                    continue  # one scheduler is enough (the secure variant is tested below)
                seen_scheduler = True
            fixed = re.sub(r"\b10\.0\.0\.\d+\b", "127.0.0.1", cmd)
            fixed = re.sub(r"\b(87\d\d)\b", lambda m: str(ports[m.group(1)]), fixed)
            argv = shlex.split(fixed)
            argv = [sys.executable, "-m", *argv]
            if argv[3] == "worker":
                argv += ["--local-directory", str(tmp_path / f"w{i}"), "--memory-limit", "1GiB"]
            with (tmp_path / f"p{i}.log").open("wb") as log:
                p = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            named = {int(x) for x in re.findall(r"--dashboard-address 127\.0\.0\.1:(\d+)", fixed)}
            procs.append((fixed, p, named))
            if argv[3] == "scheduler":
                port = ports["8786"]
                deadline = time.monotonic() + 60
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.5).close()
                        break
                    except OSError:
                        assert p.poll() is None and time.monotonic() < deadline, \
                            (tmp_path / f"p{i}.log").read_text()[-2000:]
                        time.sleep(0.1)
        deadline = time.monotonic() + 60
        for cmd, p, named in procs:
            want = 2 if " scheduler " in cmd else 3  # comm + HTTP; a worker's nanny too
            while not named <= {port for _, port in _listening(p.pid)} or \
                    len(_listening(p.pid)) < want:
                assert p.poll() is None, f"{cmd} exited"
                assert time.monotonic() < deadline, f"{cmd} did not listen: {_listening(p.pid)}"
                time.sleep(0.2)
            ips = {ip for ip, _ in _listening(p.pid)}
            assert ips == {"127.0.0.1"}, f"{cmd} listens on {sorted(_listening(p.pid))}"
    finally:
        for _, p, _ in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, p, _ in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@runtime.remote
def add(a, b):
    return a + b


@pytest.mark.slow
def test_tls_with_generated_certificates_in_one_flag(tmp_path, monkeypatch):
    """make_tls writes a private certificate; a real TLS scheduler and worker started
    with its flags accept rt.init(address, security=True) (found in NBCLUSTER_TLS_DIR)
    and refuse plain TCP; security=True without credentials says how to make them."""
    if runtime.is_initialized():
        runtime.shutdown()
    d = tmp_path / "tls"
    files = make_tls(d, hosts=("127.0.0.1",))
    assert {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()} == \
        {"cluster.pem": 0o600, "cluster.key": 0o600}
    assert d.stat().st_mode & 0o777 == 0o700
    flags = subprocess.run([sys.executable, "-m", "runtime.backends.dask.connect",
                            "--tls-flags", str(d)], capture_output=True, text=True,
                           cwd=ROOT, env=_env(), timeout=60, check=True).stdout.split()
    assert flags == ["--protocol", "tls", *files.cli_args()]
    monkeypatch.setenv("NBCLUSTER_TLS_DIR", str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"security=True: no TLS credentials.*make_tls"):
        runtime.init("tls://127.0.0.1:1", security=True, timeout=1)
    monkeypatch.setenv("NBCLUSTER_TLS_DIR", str(d))
    with dask_cluster(tmp_path / "dask", workers={"tlsw": (1, {"CPU": 1})}, tls=files) as c:
        assert c.address.startswith("tls://")
        runtime.init(c.address, security=True, timeout=30, **run_options())
        try:
            assert runtime.get(add.remote(2, 3), timeout=60) == 5
        finally:
            runtime.shutdown()
        with pytest.raises(DaskConnectionError):
            runtime.init(c.address.replace("tls://", "tcp://"), timeout=2)
    assert not runtime.is_initialized()


def test_security_true_uses_a_cluster_object_of_this_process(tmp_path):
    """rt.init(cluster) finds the credentials of a TLS cluster object made here."""
    from distributed import LocalCluster

    if runtime.is_initialized():
        runtime.shutdown()
    sec = make_tls(tmp_path / "tls").security()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls",
                      host="127.0.0.1", dashboard_address=None, security=sec) as cluster:
        runtime.init(cluster, **run_options())
        try:
            assert runtime.get(add.remote(20, 22), timeout=60) == 42
        finally:
            runtime.shutdown()
    assert Path(tmp_path / "tls" / "cluster.key").exists()
