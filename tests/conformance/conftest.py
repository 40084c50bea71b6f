"""The conformance suite's fixtures: every test runs once per backend module.

A backend joins the suite by adding ``tests/conformance/backend_<name>.py`` with
``NAME``, ``CAPABILITIES`` (a subset of ``{"processes", "real_time",
"virtual_time"}``) and a context manager ``start()`` that calls ``runtime.init``
for the standard conformance cluster (node ``cpu`` {CPU: 2}; node ``gpu``
{CPU: 2, GPU: 2} labelled ``accelerator_type="A100"``), yields, and shuts down.

Fixtures: ``cluster`` (one cluster per test module and backend, for tests that
leave it healthy) and ``fresh`` (a cluster of its own per test, for tests that
kill things). A module uses one or the other, never both. Tests needing a
capability are marked ``@pytest.mark.requires("processes")`` and are skipped,
with the reason, on backends without it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import runtime

CAPABILITY_NAMES = {"processes", "real_time", "virtual_time"}


def _discover() -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    pkg = importlib.import_module("tests.conformance")
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("backend_"):
            mod = importlib.import_module(f"tests.conformance.{info.name}")
            out[mod.NAME] = mod
    return dict(sorted(out.items()))


BACKENDS = _discover()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): skip on backends without these capabilities "
        "(processes, real_time, virtual_time)")


class Cluster:
    """What a conformance test knows about the backend it runs on."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.name: str = module.NAME
        self.capabilities: set[str] = set(module.CAPABILITIES)

    def node_with(self, resource: str) -> dict[str, Any]:
        """The first node that has ``resource``."""
        return next(n for n in runtime.nodes() if n["Resources"].get(resource))

    def __repr__(self) -> str:
        return f"Cluster({self.name})"


def _skip_unless_capable(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    for mark in request.node.iter_markers("requires"):
        missing = set(mark.args) - cluster.capabilities
        unknown = set(mark.args) - CAPABILITY_NAMES
        if unknown:
            raise ValueError(f"@pytest.mark.requires{mark.args}: unknown capability "
                             f"{sorted(unknown)}; known: {sorted(CAPABILITY_NAMES)}")
        if missing:
            pytest.skip(f"the {cluster.name} backend lacks {', '.join(sorted(missing))}")


def _clean_start() -> None:
    if runtime.is_initialized():
        runtime.shutdown()


@pytest.fixture(scope="module", params=list(BACKENDS))
def _shared(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    _clean_start()
    mod = BACKENDS[request.param]
    with mod.start():
        yield Cluster(mod)


@pytest.fixture
def cluster(_shared: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The module's shared cluster (started once per backend; leave it healthy)."""
    _skip_unless_capable(request, _shared)
    return _shared


@pytest.fixture(params=list(BACKENDS))
def fresh(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster of this test's own (for tests that kill workers or shut down)."""
    mod = BACKENDS[request.param]
    c = Cluster(mod)
    _skip_unless_capable(request, c)
    _clean_start()
    with mod.start():
        yield c
