"""Conformance: the dask backend with ``drf`` (a policy asked to look ahead).

The same real ``dask scheduler`` + two ``dask worker`` cluster as ``backend_dask``,
but every task is placed by the shared ``DRF`` policy object and pinned to
its worker, with the lookahead (the policy picks the task queued behind each
running one): the whole suite must hold on that path too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import runtime
from tests.dask.cluster import conformance_session

NAME = "dask-drf"
CAPABILITIES = {"processes", "real_time"}


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start scheduler + workers, connect with ``policy="drf"``, tear everything down after."""
    with conformance_session(policy="drf") as handle:
        yield handle
