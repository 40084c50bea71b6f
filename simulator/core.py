"""The simulator's clock: simpy's ``Environment`` plus bare scheduled callbacks.

Task arrivals, starts and finishes are plain callbacks on simpy's heap (no
process, no event object per task), so a task costs a few heap operations;
plug-ins may still use ordinary simpy processes and events beside them.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import BoundClass

__all__ = ["Core"]


class _Call:
    """A bare scheduled callback, shaped like a simpy event for ``Environment.step``."""

    __slots__ = ("callbacks", "_ok", "_value", "args", "bg")

    def __init__(self, fn: Any, args: tuple[Any, ...], bg: bool = False) -> None:
        self.callbacks = [fn]
        self._ok = True
        self._value = None
        self.args = args
        self.bg = bg


class Core(simpy.Environment):
    """simpy's environment plus bare callbacks: ``call_in(delay, fn, *args)`` runs ``fn(event)``.

    *Background* callbacks (periodic plug-in clocks) are counted in ``bg`` so a
    run can stop when nothing but background work is left. The engine's own hot
    callbacks go on the same heap as 5-tuples ``(time, priority, seq, fn, args)``
    run as ``fn(*args)`` (no event object); :meth:`step` and :meth:`run_while`
    understand both shapes, so simpy processes and events still work beside them.
    """

    def __init__(self, initial_time: float = 0.0) -> None:
        super().__init__(initial_time)
        self.bg = 0
        # simpy binds ``timeout``, ``event``, ``process``... to the instance only for
        # attributes of its own class; do it for ours too (else each use builds a method)
        BoundClass.bind_early(self)
        for name, obj in vars(simpy.Environment).items():
            if type(obj) is BoundClass and name not in self.__dict__:
                setattr(self, name, getattr(self, name))

    def call_in(self, delay: float, fn: Any, *args: Any, priority: int = 1,
                background: bool = False) -> None:
        """Run ``fn(ev)`` (``ev.args`` = ``args``) after ``delay``; priority 2 runs after
        every ordinary event of the same instant."""
        if background:
            self.bg += 1
        heappush(self._queue, (self._now + delay, priority, next(self._eid),
                               _Call(fn, args, background)))

    def step(self) -> None:
        """Process the next event (a bare 5-tuple callback or a simpy event)."""
        q = self._queue
        if q and len(q[0]) == 5:
            self._now, _, _, fn, args = heappop(q)
            fn(*args)
            return
        if q and q[0][3].__class__ is _Call and q[0][3].bg:
            self.bg -= 1
        super().step()

    def run_while(self, until: float, active: Any) -> None:
        """Step until the heap is empty, the next event is after ``until``, or ``active()`` is
        false (``active`` is asked only when nothing but background events is left, or when
        ``done`` -- an attribute of ``active``'s owner -- is set)."""
        q = self._queue
        owner = getattr(active, "__self__", None)
        while q:
            if owner is not None:
                if owner.done or len(q) <= self.bg and not active():
                    return
            elif not active():
                return
            e = q[0]
            if e[0] > until:
                self._now = until
                return
            heappop(q)
            self._now = e[0]
            if len(e) == 5:
                e[3](*e[4])
                continue
            ev = e[3]
            if ev.__class__ is _Call and ev.bg:
                self.bg -= 1
            cbs, ev.callbacks = ev.callbacks, None
            for cb in cbs:
                cb(ev)
            if not ev._ok and not hasattr(ev, "_defused"):
                raise ev._value
