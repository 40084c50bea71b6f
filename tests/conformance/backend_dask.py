"""Conformance: the dask backend against a real ``dask scheduler`` + two ``dask worker``s.

Workers run on 127.0.0.1 with ``--nthreads 2 --resources "CPU=2"`` (node ``cpu``)
and ``--resources "CPU=2,GPU=2,accelerator_type:A100=1"`` (node ``gpu``): the
worker's name is its node id, and the ``accelerator_type:<model>`` resource is
the accelerator label convention of the dask backend.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import runtime
from tests.dask.cluster import dask_cluster, run_options

NAME = "dask"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect the runtime, and tear everything down after."""
    workdir = Path(tempfile.mkdtemp(prefix="nbcluster-dask-"))
    try:
        with dask_cluster(workdir) as c:
            # the runtime owns this cluster: shutdown() stops its processes, as on
            # the local backend (connecting to someone else's cluster never does)
            handle = runtime.init(c.address, cluster=c, shutdown_cluster=True, **run_options())
            try:
                yield handle
            finally:
                runtime.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
