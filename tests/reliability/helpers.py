"""Helpers for the reliability tests: waiting on conditions, pids, drivers in a
private mount namespace with a small tmpfs (Docker's 64 MB /dev/shm, made here)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             step: float = 0.02) -> Any:
    """Poll ``pred`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def reap_pids(pids: Iterable[int], timeout: float = 15.0) -> None:
    """Wait for ``pids`` to exit; SIGKILL and name any that did not."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes outlived their driver: {left}"


def segments(directory: Path | str, pid: int | None = None) -> list[str]:
    """The object-store files in ``directory`` (of driver ``pid`` when given)."""
    prefix = "nbc_" if pid is None else f"nbc_{pid}_"
    try:
        return sorted(f for f in os.listdir(directory) if f.startswith(prefix))
    except FileNotFoundError:
        return []


def env(**extra: str) -> dict[str, str]:
    """The environment for a driver subprocess: this checkout importable."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [out.get("PYTHONPATH")])])
    for k in ("NBCLUSTER_SHM_DIR", "NBCLUSTER_SHM_SIZE", "NBCLUSTER_SPILL_DIR"):
        out.pop(k, None)
    out.update(extra)
    return out


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether this machine lets us mount a tmpfs in a private (user) mount namespace."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = Path(tempfile.mkdtemp(prefix="nbc-probe-"))
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {probe} && touch {probe}/x"],
                           capture_output=True, timeout=20, check=False)
        return r.returncode == 0 and not (probe / "x").exists()
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@dataclass
class DriverRun:
    """What a driver subprocess did: its exit status, output and ``RESULT`` line."""

    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None

    def describe(self) -> str:
        """Exit status and the tail of its output, for assertion messages."""
        return (f"exit status {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}")


def run_driver(code: str, *, mounts: dict[str, str] | None = None,
               extra_env: dict[str, str] | None = None, timeout: float = 90) -> DriverRun:
    """Run ``code`` as a driver process; ``mounts`` ({path: size}) are tmpfs mounted over
    those paths in a private mount namespace first (see :func:`can_mount_tmpfs`).

    The code prints ``RESULT <json>`` (with ``"pids"``: every worker pid it saw); the
    worker pids are checked to exit."""
    cmd = [sys.executable, "-c", code]
    if mounts:
        script = " && ".join(f"mount -t tmpfs -o size={size} tmpfs {path}"
                             for path, size in mounts.items())
        cmd = ["unshare", "-rm", "sh", "-c", script + ' && exec "$@"', "sh", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(**(extra_env or {})), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    result = None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is not None:
        reap_pids(result.get("pids", ()))
    return DriverRun(proc.returncode, out, err, result)
