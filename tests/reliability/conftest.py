"""Fixtures: a local cluster of the test's own, with its object store in a folder of
the test's own (``NBCLUSTER_SHM_DIR``), never the machine's /dev/shm; a dask cluster
of the test's own (real processes on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runtime
from tests.dask.cluster import DaskCluster, dask_cluster
from tests.reliability.helpers import alive


@pytest.fixture
def store_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(shm dir, spill dir) of this test, set in the environment the store reads."""
    shm, spill = tmp_path / "shm", tmp_path / "spill"
    shm.mkdir()
    monkeypatch.setenv("NBCLUSTER_SHM_DIR", str(shm))
    monkeypatch.setenv("NBCLUSTER_SPILL_DIR", str(spill))
    monkeypatch.delenv("NBCLUSTER_SHM_SIZE", raising=False)
    return shm, spill


@pytest.fixture
def local(store_dirs: tuple[Path, Path]) -> Iterator[Callable[..., Any]]:
    """``local(**init_kwargs)`` starts a local cluster; shut down (pids checked) after."""
    started: list[Any] = []

    def start(**kwargs: Any) -> Any:
        if runtime.is_initialized():
            runtime.shutdown()
        runtime.init(**kwargs)
        started.append(runtime.current_backend())
        return started[-1]

    yield start
    pids = [p for b in started for p in b.worker_pids()]
    runtime.shutdown()
    for b in started:
        b.shutdown()
    for pid in pids:
        assert not alive(pid), f"worker pid {pid} outlived shutdown"


@pytest.fixture
def own_procs(tmp_path: Path) -> Iterator[DaskCluster]:
    """A real dask scheduler and one ``dask worker`` (name ``cpu``, 1 thread, with a
    nanny) on 127.0.0.1 for this test; the runtime is shut down and every process
    stopped (pids checked) after."""
    if runtime.is_initialized():
        runtime.shutdown()
    with dask_cluster(tmp_path / "dask", workers={"cpu": (1, {"CPU": 1})}) as c:
        try:
            yield c
        finally:
            runtime.shutdown()
