"""nbcluster's notebook surface: ``%cluster``, ``%%remote`` and a live monitor.

Load it in IPython or Jupyter with ``%load_ext kernel_ext``. Nothing here is
imported by the runtime; workers import only :mod:`kernel_ext.cellrun` (with
:mod:`~kernel_ext.cellexec`, :mod:`~kernel_ext.capture`, :mod:`~kernel_ext.inplace`,
:mod:`~kernel_ext.richout` and :mod:`~kernel_ext.workerns`), which do not need IPython.
``kernel_ext.gather(handles)`` waits for several ``%%remote --bg`` cells with a
progress bar.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension", "gather"]

_ATTR = "_kernel_ext_magics"


def load_ipython_extension(ip: Any) -> None:
    """Register ``%cluster``, ``%%remote`` and ``%remote_preset`` (once per shell)."""
    if getattr(ip, _ATTR, None) is not None:
        return
    from kernel_ext.magics import ClusterMagics

    magics = ClusterMagics(ip)
    ip.register_magics(magics)
    setattr(ip, _ATTR, magics)


def unload_ipython_extension(ip: Any) -> None:
    """Remove the magics and presets, stop monitors and the output relay.

    The connected cluster (if any) keeps running; ``%cluster disconnect`` stops it.
    """
    magics = getattr(ip, _ATTR, None)
    if magics is None:
        return
    magics.close()
    table = ip.magics_manager.magics
    for kind, names in (("line", ("cluster", "remote_preset")), ("cell", ("remote",))):
        for name in names:
            table[kind].pop(name, None)
    for name in magics.presets:
        table["cell"].pop(name, None)
    ip.magics_manager.registry.pop(type(magics).__name__, None)
    setattr(ip, _ATTR, None)


def gather(items: Any, *, timeout: float | None = None, progress: bool = True) -> Any:
    """Wait for several ``%%remote --bg`` handles (or refs) with a progress bar; their results."""
    from kernel_ext.futures import gather as _gather

    return _gather(items, timeout=timeout, progress=progress)
