"""Fixtures for the sim backend tests: a started sim cluster that is always shut down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import runtime as rt
from runtime.backends.sim import SimBackend
from runtime.backends.sim.core import real_sleep


@pytest.fixture
def sim() -> Iterator[Callable[..., SimBackend]]:
    """``sim(**init_options)`` starts a sim cluster; teardown shuts it down and checks
    that ``time.sleep`` is the real one again."""

    def start(**options: Any) -> SimBackend:
        if "nodes" not in options:
            options.setdefault("num_cpus", 2)
        handle = rt.init("sim", **options)
        backend = handle.backend
        assert isinstance(backend, SimBackend)
        return backend

    try:
        yield start
    finally:
        rt.shutdown()
        assert time.sleep is real_sleep
