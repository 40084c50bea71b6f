"""Adding and retiring dask workers of named node types on a ``SpecCluster``.

The control plane's scale planner decides how many workers of each node type the
cluster should have; :class:`SpecClusterManager` carries that out on a dask cluster
manager (``SpecCluster`` / ``LocalCluster``), naming workers ``<node type>-<n>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.backends.dask.common import ACCELERATOR_PREFIX
from runtime.cluster import NodeType

__all__ = ["SpecClusterManager"]


class SpecClusterManager:
    """Adds and retires workers of named node types on a dask ``SpecCluster``.

    Worker names are ``<node type>-<n>``; each worker gets ``nthreads`` = the
    type's CPU count and its other resources (and ``accelerator_type:<model>=1``)
    as dask worker resources.
    """

    def __init__(self, cluster: Any, node_types: Mapping[str, NodeType]) -> None:
        if not hasattr(cluster, "worker_spec") or not hasattr(cluster, "new_spec"):
            raise TypeError(f"cluster={cluster!r}: expected a dask SpecCluster or LocalCluster "
                            f"(an object with worker_spec and new_spec)")
        self.cluster = cluster
        self.node_types = node_types
        self._n = itertools.count(1)

    def spec_for(self, nt: NodeType, name: str) -> dict[str, Any]:
        """The dask worker spec of one node of type ``nt``."""
        base = dict(self.cluster.new_spec)
        options = dict(base.get("options") or {})
        res = {k: v for k, v in nt.resources.items() if k not in ("memory",)}
        if nt.accelerator_type:
            res[ACCELERATOR_PREFIX + nt.accelerator_type] = 1
        options.update(nthreads=max(int(nt.resources.get("CPU", 1)), 1), resources=res,
                       name=name)
        if "memory" in nt.resources:
            options["memory_limit"] = int(nt.resources["memory"])
        return {"cls": base.get("cls"), "options": options}

    def _apply(self, fn: Any) -> None:
        def run() -> Any:
            fn(self.cluster.worker_spec)
            return self.cluster._correct_state()

        self.cluster.loop.add_callback(run)

    def add(self, node_type: str, count: int) -> list[str]:
        """Start ``count`` workers of ``node_type``; returns their names."""
        nt = self.node_types[node_type]
        taken = set(map(str, self.cluster.worker_spec))  # the cluster may come with workers
        names: list[str] = []
        while len(names) < count:
            name = f"{node_type}-{next(self._n)}"
            if name not in taken:
                names.append(name)
        specs = {n: self.spec_for(nt, n) for n in names}
        self._apply(lambda ws: ws.update(specs))
        return names

    def remove(self, names: Sequence[str]) -> None:
        """Retire the named workers gracefully (their data moves first)."""
        names = list(names)
        self._apply(lambda ws: [ws.pop(n, None) for n in names])

    def names(self) -> list[str]:
        """Names of the workers the cluster should have (running or booting)."""
        return [str(n) for n in self.cluster.worker_spec]
