"""Conformance: the dask backend with ``drf`` (a policy asked to look ahead).

The same real ``dask scheduler`` + two ``dask worker`` cluster as ``backend_dask``,
but every task is placed by the shared ``DRF`` policy object and pinned to
its worker, with the lookahead (the policy picks the task queued behind each
running one): the whole suite must hold on that path too.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import runtime
from tests.dask.cluster import dask_cluster, run_options

NAME = "dask-drf"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect with ``policy="drf"``, tear everything down after."""
    workdir = Path(tempfile.mkdtemp(prefix="nbcluster-dask-"))
    try:
        with dask_cluster(workdir) as c:
            handle = runtime.init(c.address, cluster=c, shutdown_cluster=True, policy="drf",
                                  **run_options())
            try:
                yield handle
            finally:
                runtime.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
