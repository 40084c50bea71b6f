"""A matplotlib backend for ``%%remote`` workers: ``plt.show()`` sends PNGs to the cell.

Selected by :func:`kernel_ext.richout.use_matplotlib_backend` as
``module://kernel_ext.mplbackend``. It draws with Agg, like Jupyter's inline
backend, and figures left open at the end of a cell are shown too.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from kernel_ext import richout

__all__ = ["FigureCanvas", "FigureManager", "show"]

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args: Any, block: Any = None, **kwargs: Any) -> None:
    """Send every open figure to the notebook cell, then close them (as inline does)."""
    import matplotlib.pyplot as plt
    from matplotlib._pylab_helpers import Gcf

    for manager in Gcf.get_all_fig_managers():
        richout.display_figure(manager.canvas.figure)
    plt.close("all")
