"""Backends: who does the work. Each module is imported only when selected.

``local`` (worker processes here), ``dask`` (a dask.distributed cluster) and
``sim`` (virtual time on the simulator) all implement :class:`.base.Backend`.
"""
