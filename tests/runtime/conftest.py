"""Fixtures for local-backend tests: a cluster of the test's own, shut down after it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import runtime


@pytest.fixture
def local() -> Iterator[Callable[..., Any]]:
    """``local(**init_kwargs)`` starts a local cluster; it is shut down (pids checked) after."""
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
        assert not _alive(pid), f"worker pid {pid} outlived shutdown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
