"""The local backend in the conformance suite: worker processes on this machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import runtime

NAME = "local"
CAPABILITIES = {"processes", "real_time"}

#: The standard conformance cluster: a CPU node and a GPU node labelled A100.
NODES = [
    {"name": "cpu", "resources": {"CPU": 2}},
    {"name": "gpu", "resources": {"CPU": 2, "GPU": 2}, "accelerator_type": "A100"},
]


@contextlib.contextmanager
def start() -> Iterator[None]:
    """Start the standard conformance cluster on the local backend, then shut it down."""
    runtime.init(nodes=NODES)
    try:
        yield
    finally:
        runtime.shutdown()
