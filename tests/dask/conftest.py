"""Fixtures: real dask scheduler + worker processes on 127.0.0.1, stopped on teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime
from tests.dask.cluster import DaskCluster, dask_cluster, run_options


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """The standard two-node cluster (``cpu``; ``gpu`` with 2 GPUs, A100), one per module."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c


@pytest.fixture
def rt(procs: DaskCluster) -> Iterator[DaskCluster]:
    """The runtime connected to the module's cluster (shut down after the test)."""
    if runtime.is_initialized():
        runtime.shutdown()
    runtime.init(procs.address, **run_options())
    try:
        yield procs
    finally:
        runtime.shutdown()


@pytest.fixture
def own_procs(tmp_path: Path) -> Iterator[DaskCluster]:
    """A cluster of this test's own (for tests that add, remove or kill workers)."""
    if runtime.is_initialized():
        runtime.shutdown()
    with dask_cluster(tmp_path / "dask", workers={"cpu": (1, {"CPU": 1})}) as c:
        try:
            yield c
        finally:
            runtime.shutdown()
