"""A small shared-memory filesystem (Docker's 64 MB /dev/shm) and crashed drivers.

Each driver here is a real process whose store lives in a 64 MB tmpfs the test
mounts itself in a private mount namespace (``unshare -rm``), pointed to by
``NBCLUSTER_SHM_DIR`` -- or mounted over ``/dev/shm`` itself, as in a container.
Where namespaces are not allowed, a plain folder with ``NBCLUSTER_SHM_SIZE=64M``
stands in (the store then assumes that size). The machine's /dev/shm is never used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runtime
from tests.reliability.helpers import (
    ROOT,
    alive,
    can_mount_tmpfs,
    env,
    reap_pids,
    run_driver,
    segments,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

BIG_VALUES = textwrap.dedent("""
    import json, os, warnings
    import numpy as np
    import runtime as rt

    MB = 2**20
    SHM, SPILL = os.environ.get("NBCLUSTER_SHM_DIR", "/dev/shm"), os.environ["NBCLUSTER_SPILL_DIR"]

    @rt.remote(max_retries=0)
    def total(a):
        return [float(a.sum()), a.nbytes]

    @rt.remote(max_retries=0)
    def big(n):
        return np.ones(n // 8)

    rt.init(num_cpus=1)
    b = rt.current_backend()
    out = {"pids": b.worker_pids()}
    try:
        r = rt.put(np.ones(100 * MB // 8))                               # a 100 MB put
        out["put"] = rt.get(total.remote(r), timeout=60)
        out["arg"] = rt.get(total.remote(np.ones(100 * MB // 8)), timeout=60)  # a 100 MB argument
        held = [rt.put(np.full(8 * MB // 8, float(i))) for i in range(10)]      # ten held 8 MB puts
        out["held"] = [rt.get(total.remote(h), timeout=60)[0] / MB for h in held]
        res = rt.get(big.remote(100 * MB), timeout=60)                   # a 100 MB result
        out["result"] = [float(res.sum()), res.nbytes]
        out["spilled"] = len(os.listdir(SPILL))
        out["in_shm"] = len([f for f in os.listdir(SHM) if f.startswith("nbc_")])
        out["pids"] = sorted(set(out["pids"]) | set(b.worker_pids()))
    finally:
        rt.shutdown()
    out["left"] = sorted(os.listdir(SHM)) + sorted(os.listdir(SPILL))
    print("RESULT " + json.dumps(out), flush=True)
""")

EXPECTED = {"put": [100 * 2**20 / 8, 100 * 2**20], "arg": [100 * 2**20 / 8, 100 * 2**20],
            "held": [float(i) for i in range(10)], "result": [100 * 2**20 / 8, 100 * 2**20]}


def _check_big_values(run, *, in_tmpfs: bool) -> None:
    assert run.returncode == 0, f"the driver died (SIGBUS is -7): {run.describe()}"
    assert run.result is not None, run.describe()
    for key, want in EXPECTED.items():
        assert run.result[key] == want, (key, run.describe())
    assert run.result["spilled"] >= 1, "nothing went to the spill folder"
    if in_tmpfs:
        assert run.result["in_shm"] >= 1, "nothing used the shared memory that was free"
    assert run.result["left"] == [], "shutdown left files behind"
    assert run.stderr.count("ObjectSpilledWarning") == 1, run.describe()
    assert "--shm-size" in run.stderr and "NBCLUSTER_SPILL_DIR" in run.stderr


def test_big_values_in_a_64mb_shm_dir_spill_to_disk_with_one_warning(tmp_path):
    """RELIABILITY 24: a 100 MB put, a 100 MB argument, ten held 8 MB puts and a 100 MB
    result all work with a 64 MB shared-memory folder: what does not fit goes to the
    spill folder on disk, with one warning; the driver never dies of SIGBUS."""
    shm, spill = tmp_path / "shm", tmp_path / "spill"
    shm.mkdir()
    extra = {"NBCLUSTER_SHM_DIR": str(shm), "NBCLUSTER_SPILL_DIR": str(spill)}
    mounts = {str(shm): "64m"} if can_mount_tmpfs() else None
    if mounts is None:
        extra["NBCLUSTER_SHM_SIZE"] = "64M"
    run = run_driver(BIG_VALUES, mounts=mounts, extra_env=extra)
    _check_big_values(run, in_tmpfs=True)


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a private mount namespace "
                    "(unshare -rm) to put a 64 MB tmpfs over /dev/shm")
def test_a_64mb_dev_shm_as_in_docker_never_kills_the_driver(tmp_path):
    """The container case with no setting at all: /dev/shm itself is a 64 MB tmpfs
    (mounted over it in a private namespace). Before the fix the 100 MB put killed
    the driver with SIGBUS."""
    spill = tmp_path / "spill"
    run = run_driver(BIG_VALUES, mounts={"/dev/shm": "64m"},
                     extra_env={"NBCLUSTER_SPILL_DIR": str(spill)})
    _check_big_values(run, in_tmpfs=True)


CRASHING_DRIVER = textwrap.dedent("""
    import json, time
    import numpy as np
    import runtime as rt

    @rt.remote
    def big():
        return np.ones(2**20)                     # an 8 MB result: a segment a worker made

    rt.init(num_cpus=1)
    refs = [rt.put(np.ones(2**20)) for _ in range(3)] + [big.remote()]
    rt.get(refs[-1], timeout=60)
    print("READY " + json.dumps(rt.current_backend().worker_pids()), flush=True)
    time.sleep(120)
""")


def test_segments_of_a_crashed_driver_are_swept_by_the_next_init(tmp_path, local, store_dirs):
    """RELIABILITY 24: a SIGKILLed driver leaves its segments behind; the next init()
    removes them (their driver's pid is gone) and keeps those of a live driver."""
    shm, spill = store_dirs
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_DRIVER], cwd=ROOT,
                            env=env(NBCLUSTER_SHM_DIR=str(shm), NBCLUSTER_SPILL_DIR=str(spill)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line + proc.stderr.read()
        workers = json.loads(line.split(" ", 1)[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        reap_pids(workers)  # they notice their driver is gone within about a second
        left = segments(shm, proc.pid)
        assert len(left) == 4, left  # 3 puts and the worker's result
        keep = shm / f"nbc_{live.pid}_{live.pid}_0"
        keep.write_bytes(b"x" * 4096)  # a segment of a driver that still runs
        backend = local(num_cpus=1)
        assert segments(shm, proc.pid) == []
        assert backend.swept[0] == 4 and backend.swept[1] >= 4 * 8 * 2**20
        assert keep.exists(), "the segment of a live driver was removed"
    finally:
        for p in (proc, live):
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stdout:
                p.stdout.close()
                p.stderr.close()
    assert not alive(proc.pid)


def test_bad_store_settings_name_the_setting_the_value_and_what_is_accepted(store_dirs,
                                                                           monkeypatch):
    """A size that is not one, or a relative folder, fails init naming the setting."""
    if runtime.is_initialized():
        runtime.shutdown()
    monkeypatch.setenv("NBCLUSTER_SHM_SIZE", "lots")
    with pytest.raises(ValueError, match=r"NBCLUSTER_SHM_SIZE='lots'.*'64M'"):
        runtime.init(num_cpus=1)
    monkeypatch.setenv("NBCLUSTER_SHM_SIZE", "64M")
    monkeypatch.setenv("NBCLUSTER_SHM_DIR", "relative/dir")
    with pytest.raises(ValueError, match=r"shm_dir='relative/dir'.*absolute"):
        runtime.init(num_cpus=1)
    assert not runtime.is_initialized()


def test_a_shm_size_setting_sends_what_does_not_fit_to_disk(local, store_dirs, monkeypatch):
    """NBCLUSTER_SHM_SIZE caps what the store puts in its shm folder; values past it go
    to the spill folder and come back right, read-only, without a copy."""
    np = pytest.importorskip("numpy")
    shm, spill = store_dirs
    monkeypatch.setenv("NBCLUSTER_SHM_SIZE", "4M")
    local(num_cpus=1)
    with pytest.warns(runtime.errors.ObjectSpilledWarning, match="did not fit"):
        refs = [runtime.put(np.full(2**17, float(i))) for i in range(6)]  # 1 MiB each
    assert 1 <= len(segments(shm)) <= 3 and len(segments(spill)) >= 3
    values = runtime.get(refs, timeout=30)
    assert [float(v[0]) for v in values] == [float(i) for i in range(6)]
    assert not any(v.flags.writeable for v in values)
    del refs, values
    runtime.shutdown()
    assert segments(shm) == [] and segments(spill) == []
    assert Path(spill).stat().st_mode & 0o777 == 0o700


def test_store_settings_as_init_options_win_over_the_environment(local, tmp_path,
                                                                 monkeypatch):
    """init(shm_dir=, shm_size=, spill_dir=) sets the store like the variables do, and a
    bad one fails naming it."""
    np = pytest.importorskip("numpy")
    shm, spill = tmp_path / "own-shm", tmp_path / "own-spill"
    shm.mkdir()
    with pytest.raises(ValueError, match=r"shm_size='lots'"):
        local(num_cpus=1, shm_dir=str(shm), shm_size="lots", spill_dir=str(spill))
    local(num_cpus=1, shm_dir=str(shm), shm_size="4M", spill_dir=str(spill))
    with pytest.warns(runtime.errors.ObjectSpilledWarning, match="did not fit"):
        refs = [runtime.put(np.full(2**17, float(i))) for i in range(6)]  # 1 MiB each
    assert 1 <= len(segments(shm)) <= 3 and len(segments(spill)) >= 3
    assert [float(v[0]) for v in runtime.get(refs, timeout=30)] == [float(i) for i in range(6)]
