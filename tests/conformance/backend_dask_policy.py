"""Conformance: the dask backend with a placement policy (``fifo``, tasks sent ahead).

The same real ``dask scheduler`` + two ``dask worker`` cluster as ``backend_dask``,
but every task is placed by the shared ``FirstFit`` policy object and pinned to
its worker, with the default adaptive prefetch (tasks queued ahead on busy
workers): the whole suite must hold on that path too.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import runtime
from tests.dask.cluster import dask_cluster, run_options

NAME = "dask-fifo"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect with ``policy="fifo"``, tear everything down after."""
    workdir = Path(tempfile.mkdtemp(prefix="nbcluster-dask-"))
    try:
        with dask_cluster(workdir) as c:
            handle = runtime.init(c.address, cluster=c, shutdown_cluster=True, policy="fifo",
                                  **run_options())
            try:
                yield handle
            finally:
                runtime.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
