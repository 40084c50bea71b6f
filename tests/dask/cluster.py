"""Start and stop a real dask cluster (``dask scheduler`` + ``dask worker`` processes).

Everything binds 127.0.0.1 on free ports, waits with timeouts, and is killed on
``stop()`` (process groups, SIGTERM then SIGKILL), checking that no pid is left.
Used by ``tests/dask`` and ``tests/conformance/backend_dask.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from runtime.backends.dask.connect import TLSFiles  # the PEM files of a TLS cluster

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests" / "conformance"), str(ROOT / "tests" / "dask")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("DASK_DISTRIBUTED__ADMIN__TICK__LIMIT", "30s")  # quiet on a busy machine
    env.setdefault("DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE", "false")
    return env


@dataclass
class WorkerProc:
    """One ``dask worker`` process (a nanny and its worker child)."""

    name: str
    nthreads: int
    resources: Mapping[str, float]
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class DaskCluster:
    """A scheduler process and named worker processes on 127.0.0.1 (TLS if ``tls`` is set)."""

    workdir: Path
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    tls: TLSFiles | None = None

    def start_scheduler(self, timeout: float = 60) -> str:
        """Start the scheduler; returns its address once it accepts connections."""
        port = free_port()
        log = self.workdir / "scheduler.log"
        cmd = [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
               "--port", str(port), "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        if self.tls is not None:
            cmd += ["--protocol", "tls", *self.tls.cli_args()]
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.scheduler = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)
        self.pids.add(self.scheduler.pid)
        self.address = f"{self.scheme}://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return self.address
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"dask scheduler did not listen within {timeout} s: "
                           f"{log.read_text()[-2000:]}")

    @property
    def scheme(self) -> str:
        """The comm scheme of this cluster's addresses: ``tls`` or ``tcp``."""
        return "tls" if self.tls is not None else "tcp"

    def client_options(self) -> dict[str, Any]:
        """Keywords for ``distributed.Client`` / ``runtime.init`` to reach this cluster."""
        return {"security": self.tls.security()} if self.tls is not None else {}

    def add_worker(self, name: str, nthreads: int, resources: Mapping[str, float] | None = None,
                   *, nanny: bool = True) -> WorkerProc:
        """Start one ``dask worker`` (it joins asynchronously; see :meth:`wait_workers`)."""
        res = dict(resources or {})
        log = self.workdir / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "dask", "worker", self.address, "--name", name,
               "--nthreads", str(nthreads), "--nworkers", "1", "--host", "127.0.0.1",
               "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--death-timeout", "60",
               "--memory-limit", "2GiB",
               "--local-directory", str(self.workdir / f"w-{name}")]
        if res:
            cmd += ["--resources", ",".join(f"{k}={v:g}" for k, v in res.items())]
        if not nanny:
            cmd.append("--no-nanny")
        if self.tls is not None:
            cmd += ["--protocol", "tls", *self.tls.cli_args()]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.pids.add(proc.pid)
        wp = WorkerProc(name, nthreads, res, proc, log)
        self.workers[name] = wp
        return wp

    def wait_workers(self, names: list[str] | None = None, timeout: float = 60) -> None:
        """Block until the named workers (default: all started) are connected."""
        from distributed import Client

        want = set(names or self.workers)
        with Client(self.address, timeout=timeout, set_as_default=False,
                    **self.client_options()) as c:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = _identity(c)
                have = {str(w.get("name")) for w in info["workers"].values()}
                if want <= have:
                    return
                for n in want:
                    p = self.workers[n].proc
                    if p.poll() is not None:
                        raise RuntimeError(f"dask worker {n} exited: "
                                           f"{self.workers[n].log.read_text()[-2000:]}")
                time.sleep(0.1)
        raise TimeoutError(f"dask workers {sorted(want - have)} did not join within {timeout} s")

    def worker_pid(self, name: str) -> int:
        """Pid of the worker process itself (the nanny's child), for SIGKILL tests."""
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False,
                    **self.client_options()) as c:
            for addr, w in _identity(c)["workers"].items():
                if str(w.get("name")) == name:
                    return int(c.run(os.getpid, workers=[addr])[addr])
        raise KeyError(f"no worker named {name!r}")

    def kill_worker_process(self, name: str) -> int:
        """SIGKILL the worker process (its nanny restarts it); returns the pid killed."""
        pid = self.worker_pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop_worker(self, name: str, timeout: float = 20) -> None:
        """Stop one ``dask worker`` (nanny and worker) and wait for its processes to exit."""
        wp = self.workers.pop(name)
        _stop_group(wp.proc, timeout)

    def stop(self, timeout: float = 20) -> None:
        """Stop every process and check that none is left."""
        procs = [w.proc for w in self.workers.values()]
        self.workers.clear()
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        for p in procs:
            _stop_group(p, timeout)
        if self.scheduler is not None:
            _stop_group(self.scheduler, timeout)
            self.scheduler = None

    def close(self, timeout: float = 20) -> None:
        """Same as :meth:`stop` (the name dask cluster managers use)."""
        self.stop(timeout)

    def leftover_pids(self) -> list[int]:
        """Pids of processes this cluster started (or their children) that still run."""
        return [p for p in self.pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _identity(client: Any) -> dict[str, Any]:
    """The scheduler's identity with every worker, asked now.

    Not ``client.scheduler_info()``: that returns a cache the client's periodic
    callback may overwrite at any moment with an identity listing no workers.
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1))


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    children: list[psutil.Process] = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)
    _signal_group(proc, signal.SIGKILL)  # stragglers in the group
    gone, alive = psutil.wait_procs(children, timeout=10)
    for c in alive:
        c.kill()
    psutil.wait_procs(alive, timeout=5)


#: The standard conformance cluster: node name -> (threads, dask resources).
CONFORMANCE_WORKERS: dict[str, tuple[int, dict[str, float]]] = {
    "cpu": (2, {"CPU": 2}),
    "gpu": (2, {"CPU": 2, "GPU": 2, "accelerator_type:A100": 1}),
}


@contextmanager
def dask_cluster(workdir: Path, workers: Mapping[str, tuple[int, Mapping[str, float]]]
                 | None = None, timeout: float = 90, *,
                 tls: TLSFiles | None = None) -> Iterator[DaskCluster]:
    """A running scheduler + workers (default: the conformance cluster); stopped on exit.

    With ``tls``, every process listens on ``tls://`` and requires certificates
    signed by ``tls.ca_file``; connect with ``c.client_options()``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    c = DaskCluster(workdir, tls=tls)
    try:
        c.start_scheduler(timeout)
        for name, (n, res) in (workers or CONFORMANCE_WORKERS).items():
            c.add_worker(name, n, res)
        c.wait_workers(timeout=timeout)
        yield c
    finally:
        c.stop()
        left = c.leftover_pids()
        if left:
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"dask processes left running after stop: {left}")


def run_options() -> dict[str, Any]:
    """Options for ``runtime.init`` on a test cluster (fast polling)."""
    return {"poll_interval": 0.2}


@contextmanager
def conformance_session(**init_options: Any) -> Iterator[Any]:
    """The standard two-node cluster in a temporary folder, with the runtime connected
    and owning it (``shutdown()`` stops its processes, as on the local backend);
    everything is torn down after. ``init_options`` go to ``runtime.init``."""
    import shutil
    import tempfile

    import runtime

    workdir = Path(tempfile.mkdtemp(prefix="nbcluster-dask-"))
    try:
        with dask_cluster(workdir) as c:
            handle = runtime.init(c.address, cluster=c, shutdown_cluster=True,
                                  **init_options, **run_options())
            try:
                yield handle
            finally:
                runtime.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
