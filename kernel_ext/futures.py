"""Waiting for several ``%%remote --bg`` cells (or refs) at once, with a progress bar.

``kernel_ext.gather([a, b, c])`` blocks until all are done (interruptible),
showing a progress bar (an ipywidgets bar in a kernel, a text bar elsewhere),
and returns their results in order, raising the first error. It waits through
``runtime.wait``, so it also moves virtual time on the sim backend.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import runtime

__all__ = ["gather"]


def _ref(item: Any) -> runtime.ObjectRef:
    if isinstance(item, runtime.ObjectRef):
        return item
    get = getattr(item, "_runtime_ref_", None)
    if get is None:
        raise TypeError(f"gather(): {type(item).__name__} {item!r} is not a %%remote --bg "
                        f"handle or an ObjectRef")
    return get()


class _Bar:
    """An ipywidgets progress bar in a kernel; a ``\\r`` text bar otherwise."""

    def __init__(self, total: int, show: bool) -> None:
        self.total = total
        self.widget: Any = None
        self.show = show
        if not show:
            return
        try:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None and hasattr(shell, "kernel"):
                import ipywidgets as w
                from IPython.display import display

                self.widget = w.IntProgress(min=0, max=total, value=0,
                                            description=f"0/{total} done")
                display(self.widget)
        except ImportError:
            self.widget = None

    def update(self, done: int) -> None:
        """Show ``done`` of ``total`` finished."""
        if not self.show:
            return
        if self.widget is not None:
            self.widget.value = done
            self.widget.description = f"{done}/{self.total} done"
            if done == self.total:
                self.widget.bar_style = "success"
            return
        width = 20
        full = round(width * done / max(self.total, 1))
        end = "\n" if done == self.total else ""
        sys.stdout.write(f"\r[{'#' * full}{'-' * (width - full)}] {done}/{self.total} done{end}")
        sys.stdout.flush()


def gather(items: Sequence[Any], *, timeout: float | None = None,
           progress: bool = True) -> list[Any]:
    """Wait for every handle (or ref) in ``items``; return their results in order.

    ``timeout`` (seconds; virtual on sim) bounds the whole wait and raises
    ``GetTimeoutError`` naming how many finished; the others go on.
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"gather() expects a list of %%remote --bg handles or ObjectRefs, "
                        f"got {type(items).__name__}")
    items = list(items)
    refs = [_ref(x) for x in items]
    if not refs:
        return []
    backend = refs[0].backend
    sim = getattr(backend, "kind", "") == "sim"
    bar = _Bar(len(refs), progress)
    start = backend.now()
    done = sum(r.done() for r in refs)
    bar.update(done)
    while done < len(refs):
        left = None if timeout is None else timeout - (backend.now() - start)
        if left is not None and left <= 0:
            raise runtime.GetTimeoutError(
                f"gather(): {done} of {len(refs)} finished within {timeout:g}"
                f"{' virtual' if sim else ''} s; the others go on (queued or running; "
                f"runtime.cancel() stops one)")
        step = left if sim else min(0.1, left) if left is not None else 0.1
        ready, _ = runtime.wait(refs, num_returns=min(done + 1, len(refs)), timeout=step)
        if len(ready) != done:
            done = len(ready)
            bar.update(done)
    return list(runtime.get(items))
