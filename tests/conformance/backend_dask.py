"""Conformance: the dask backend against a real ``dask scheduler`` + two ``dask worker``s.

Workers run on 127.0.0.1 with ``--nthreads 2 --resources "CPU=2"`` (node ``cpu``)
and ``--resources "CPU=2,GPU=2,accelerator_type:A100=1"`` (node ``gpu``): the
worker's name is its node id, and the ``accelerator_type:<model>`` resource is
the accelerator label convention of the dask backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import runtime
from tests.dask.cluster import conformance_session

NAME = "dask"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect the runtime, and tear everything down after."""
    with conformance_session() as handle:
        yield handle
