"""The dask.distributed backend: real nodes behind a dask scheduler.

``runtime.init("tcp://host:8786")`` (or ``init(client)``, ``init(cluster)``)
calls :func:`make_backend`. See ``docs/dask.md`` for the conventions
(a worker's CPU count is its thread count; ``accelerator_type:<model>=1`` among
its resources labels its accelerator) and the differences from Ray.
"""

from __future__ import annotations

from typing import Any

from runtime.backends.dask.backend import DaskBackend
from runtime.backends.dask.common import ACCELERATOR_PREFIX, task_key, worker_shape
from runtime.backends.dask.connect import (
    SCHEMES,
    DaskConnectionError,
    TLSFiles,
    check_timeout,
    connect,
    make_tls,
)

__all__ = ["make_backend", "DaskBackend", "DaskConnectionError", "SCHEMES", "ACCELERATOR_PREFIX",
           "task_key", "worker_shape", "make_tls", "TLSFiles"]

_UNUSED = ("num_cpus", "num_gpus", "resources", "nodes")


def make_backend(address: Any = None, **options: Any) -> DaskBackend:
    """Connect to a dask cluster and return the backend.

    ``address``: a scheduler address (``"tcp://127.0.0.1:8786"``, ``"tls://..."``), a
    ``distributed.Client``, or a dask cluster object (``LocalCluster``, ``SpecCluster``...).
    Options: ``cluster=`` (a cluster manager to scale), ``node_types=`` (what the
    autoscaler or ``scale`` may add), ``autoscaler=``, ``policy=``, ``security=``
    (a ``distributed.security.Security`` for TLS), ``timeout=`` (seconds to connect,
    default 10; :class:`DaskConnectionError` names the address when it fails), ``min_workers=`` (wait until that many workers joined, default 0),
    ``shutdown_cluster=True`` (``shutdown()`` also closes ``cluster``, default False:
    connecting never takes ownership), ``poll_interval=`` and ``autoscale_interval=`` (seconds),
    ``policy_window=`` (how many of the oldest ready tasks the policy sees per round, 256),
    ``prefetch=`` (default True: with a first-fit-style policy, each placed task may have
    one task of its shape queued behind it on its worker; an int sets how many).
    """
    import distributed

    for key in _UNUSED:
        if options.get(key) is not None:
            raise TypeError(
                f"{key}={options[key]!r} is not used by the dask backend: workers declare their "
                f"own resources (dask worker --nthreads 2 --resources 'GPU=1'); to add workers "
                f"of a kind, pass cluster=SpecCluster(...) with node_types=[...]"
            )
    options = {k: v for k, v in options.items() if k not in _UNUSED}
    cluster = options.pop("cluster", None)
    security = options.pop("security", None)
    timeout = check_timeout(options.pop("timeout", 10))
    min_workers = options.pop("min_workers", 0)
    shutdown_cluster = bool(options.pop("shutdown_cluster", False))
    known = {"policy", "autoscaler", "node_types", "poll_interval", "autoscale_interval",
             "policy_window", "prefetch"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for the dask backend; "
                        f"accepted: address, cluster, security, timeout, min_workers, "
                        f"shutdown_cluster, "
                        f"{', '.join(sorted(known))}")
    owns_client = True
    if isinstance(address, distributed.Client):
        client, owns_client = address, False
    else:
        if address is None and cluster is None:
            raise ValueError("address=None: the dask backend needs a scheduler address "
                             "('tcp://host:8786'), a distributed.Client or a cluster object")
        if address is not None and not isinstance(address, str):
            if not hasattr(address, "scheduler_address"):
                raise TypeError(f"address={address!r}: expected a scheduler address string, a "
                                f"distributed.Client or a dask cluster object")
            cluster = cluster if cluster is not None else address
            address = address.scheduler_address
        target = address if address is not None else cluster.scheduler_address
        client = connect(str(target), timeout=timeout, security=security)
    try:
        if min_workers:
            client.wait_for_workers(min_workers, timeout=timeout)
        if shutdown_cluster and cluster is None:
            raise ValueError("shutdown_cluster=True needs cluster= (or a cluster object as address)")
        return DaskBackend(client, owns_client=owns_client, cluster=cluster,
                           owns_cluster=shutdown_cluster, **options)
    except BaseException:
        if owns_client:
            client.close()
        raise
