"""Conformance: the dask backend with a placement policy (``fifo``, tasks sent ahead).

The same real ``dask scheduler`` + two ``dask worker`` cluster as ``backend_dask``,
but every task is placed by the shared ``FirstFit`` policy object and pinned to
its worker, with the default adaptive prefetch (tasks queued ahead on busy
workers): the whole suite must hold on that path too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import runtime
from tests.dask.cluster import conformance_session

NAME = "dask-fifo"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect with ``policy="fifo"``, tear everything down after."""
    with conformance_session(policy="fifo") as handle:
        yield handle
