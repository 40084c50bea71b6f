"""Rich output of remote cells: ``display()`` and matplotlib figures, sent as stdout text.

A worker has no Jupyter kernel, so ``display(HTML(...))`` or ``plt.show()`` there
would print ``<IPython.core.display.HTML object>``. On workers, :func:`install`
replaces IPython's ``display`` (and selects the :mod:`kernel_ext.mplbackend`
matplotlib backend), which write each display as one marked line on stdout:
``MARK`` + base64(JSON of data, metadata, transient) + ``END``. Stdout already
travels to the notebook on every backend; the notebook's relay
(:mod:`kernel_ext.output`) cuts these lines out and publishes them as
``display_data`` in the cell, in order with the text around them.

Nothing here imports IPython or matplotlib until they are used.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from typing import Any

__all__ = ["MARK", "END", "encode", "decode", "display", "install", "display_figure",
           "flush_figures", "use_matplotlib_backend", "MPL_BACKEND"]

#: Starts a display line (ASCII record/unit separators: never in ordinary text).
MARK = "\x1e\x1fnbcluster-display:"
#: Ends it.
END = "\x1f\x1e\n"
#: The matplotlib backend workers use (``plt.show()`` sends PNGs like the inline one).
MPL_BACKEND = "module://kernel_ext.mplbackend"

_lock = threading.Lock()
_installed = False
_formatter: Any = None


def encode(data: dict[str, Any], metadata: dict[str, Any] | None = None,
           transient: dict[str, Any] | None = None) -> str:
    """One display as a marked line (bytes values are base64-encoded, as Jupyter wants)."""
    clean = {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v
             for k, v in data.items()}
    body = json.dumps({"data": clean, "metadata": metadata or {},
                       "transient": transient or {}}, default=repr)
    return MARK + base64.b64encode(body.encode("utf-8")).decode("ascii") + END


def decode(payload: str) -> dict[str, Any]:
    """The dict (``data``, ``metadata``, ``transient``) of the text between MARK and END."""
    return json.loads(base64.b64decode(payload.encode("ascii")).decode("utf-8"))


def _emit(data: dict[str, Any], metadata: dict[str, Any] | None = None,
          transient: dict[str, Any] | None = None) -> None:
    out = sys.stdout
    out.write(encode(data, metadata, transient))
    try:
        out.flush()
    except Exception:  # noqa: BLE001 - a closed stream: the display is lost, not the task
        pass


def _get_formatter() -> Any:
    global _formatter
    if _formatter is None:
        from IPython.core.formatters import DisplayFormatter

        fmt = DisplayFormatter()
        fmt.formatters["image/png"].for_type_by_name("matplotlib.figure", "Figure",
                                                     _figure_png)
        _formatter = fmt
    return _formatter


def _figure_png(fig: Any) -> bytes:
    """A figure as PNG bytes, as the inline backend draws it (``bbox_inches='tight'``)."""
    import io

    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", bbox_inches="tight",
                            facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor())
    return buf.getvalue()


def display(*objs: Any, include: Any = None, exclude: Any = None,
            metadata: dict[str, Any] | None = None, transient: dict[str, Any] | None = None,
            display_id: Any = None, raw: bool = False, clear: bool = False,
            **kwargs: Any) -> None:
    """IPython's ``display`` for workers: each object goes to the notebook cell."""
    if transient is None and display_id not in (None, False, True):
        transient = {"display_id": str(display_id)}
    for obj in objs:
        if raw:
            data, md = dict(obj), dict(metadata or {})
        else:
            data, md = _get_formatter().format(obj, include=include, exclude=exclude)
            if metadata:
                md = {**md, **metadata}
        if data:
            _emit(data, md, transient)


def display_figure(fig: Any) -> None:
    """Send one matplotlib figure to the notebook cell as ``image/png``."""
    try:
        png = _figure_png(fig)
    except Exception as exc:  # noqa: BLE001 - say so instead of losing it silently
        print(f"[%%remote: a figure could not be drawn: {type(exc).__name__}: {exc}]",
              file=sys.stderr)
        return
    width, height = fig.get_size_inches() * fig.dpi
    _emit({"image/png": png, "text/plain": f"<Figure size {width:g}x{height:g} with "
                                           f"{len(fig.axes)} Axes>"})


def flush_figures(skip: Any = None) -> None:
    """Show the figures a cell left open (what the inline backend does after a cell)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or plt.get_backend() != MPL_BACKEND:
        return
    from matplotlib._pylab_helpers import Gcf

    for manager in Gcf.get_all_fig_managers():
        if manager.canvas.figure is not skip:
            display_figure(manager.canvas.figure)
    plt.close("all")


def _inline_like(name: str) -> bool:
    return not name or any(k in name.lower() for k in ("inline", "ipympl", "widget", "nbagg"))


def use_matplotlib_backend() -> None:
    """Make workers draw with :data:`MPL_BACKEND` unless a non-notebook one was chosen."""
    if _inline_like(os.environ.get("MPLBACKEND", "")):
        os.environ["MPLBACKEND"] = MPL_BACKEND
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return
    current = dict.__getitem__(mpl.rcParams, "backend")
    if isinstance(current, str) and current != MPL_BACKEND and _inline_like(current):
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.switch_backend(MPL_BACKEND)
        else:
            mpl.use(MPL_BACKEND)


def install() -> None:
    """On a worker (no kernel here): route ``display()`` and figures to the notebook."""
    global _installed
    with _lock:
        if not _installed:
            _installed = True
            try:
                import IPython.core.display as core_display
                import IPython.core.display_functions as functions
                import IPython.display as public
            except ImportError:  # no IPython on this worker: display() cannot be called
                pass
            else:
                for module in (functions, core_display, public):
                    if hasattr(module, "display"):
                        module.display = display  # type: ignore[attr-defined]
    use_matplotlib_backend()
