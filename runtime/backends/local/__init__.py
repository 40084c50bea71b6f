"""The local backend: worker processes on this machine, no server.

``runtime.init()`` (or ``init("local")``) calls :func:`make_backend`. Options:
``num_cpus``, ``num_gpus``, ``resources`` (one node) or ``nodes=[...]`` (several
virtual nodes, see :mod:`runtime.cluster.nodetypes`), ``policy`` (a scheduling policy
object or name), ``autoscaler`` and ``node_types`` (accepted; an autoscaler's
node types make requests feasible), ``speeds`` (task kind -> model -> speed),
``prefetch`` (default True: with the FirstFit policy, each busy worker is sent its next
task ahead of time), ``shm_dir``, ``shm_size`` and ``spill_dir`` (where big objects live:
shared memory, its usable size such as ``"64M"``, and the folder for what does not fit;
default from ``NBCLUSTER_SHM_DIR``, ``NBCLUSTER_SHM_SIZE``, ``NBCLUSTER_SPILL_DIR``),
``max_workers`` (the most task worker processes at once, default 4 per CPU within free
memory, or ``NBCLUSTER_MAX_WORKERS``; at the cap, nested tasks run inside blocked ones).
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_backend"]

_OPTIONS = ("num_cpus", "num_gpus", "resources", "nodes", "policy", "autoscaler",
            "node_types", "speeds", "prefetch", "shm_dir", "shm_size", "spill_dir",
            "max_workers")


def make_backend(address: Any = None, **options: Any) -> Any:
    """Start a local cluster (worker processes here) and return its backend."""
    if address not in (None, "local"):
        raise ValueError(f"address={address!r}: the local backend takes None or 'local'")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"init(): unknown option(s) {', '.join(map(repr, unknown))} for the "
                        f"local backend; accepted: {', '.join(_OPTIONS)}")
    from runtime.backends.local.backend import LocalBackend

    return LocalBackend(**options)
