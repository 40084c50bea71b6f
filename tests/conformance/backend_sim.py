"""Conformance: the sim backend on the standard cluster, in virtual time.

Task bodies run in-process (no worker processes), so tests that kill processes
do not apply; time-outs and sleeps are virtual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import runtime

NAME = "sim"
CAPABILITIES: set[str] = {"virtual_time"}

#: The standard conformance cluster: ``cpu`` {CPU: 2} and ``gpu`` {CPU: 2, GPU: 2} (A100).
NODES = [
    {"name": "cpu", "resources": {"CPU": 2}},
    {"name": "gpu", "resources": {"CPU": 2, "GPU": 2}, "accelerator_type": "A100"},
]


@contextmanager
def start() -> Iterator[runtime.ClusterHandle]:
    """Start the sim backend on the standard cluster; shut it down on exit."""
    handle = runtime.init("sim", nodes=NODES, seed=0)
    try:
        yield handle
    finally:
        runtime.shutdown()
