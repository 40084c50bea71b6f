"""The sim backend: ``runtime.init("sim", nodes=[...])`` runs real task bodies in virtual time.

Each task body runs for real, in-process, in its own greenlet; simpy owns the
clock, durations come from the ``sim_duration=`` cost model plus virtual
``time.sleep``, and placement uses the same policy objects as the other backends.
See ``docs/sim-backend.md``.
"""

from __future__ import annotations

import inspect
from typing import Any

from runtime.backends.sim.backend import DEFAULT_CPUS, SimBackend

__all__ = ["SimBackend", "make_backend", "DEFAULT_CPUS"]


def make_backend(address: Any = None, **options: Any) -> SimBackend:
    """Build a sim cluster; ``options`` are :class:`SimBackend`'s keywords."""
    if address not in (None, "sim"):
        raise ValueError(f"address={address!r}: the sim backend takes address 'sim' (or None)")
    accepted = [p for p in inspect.signature(SimBackend.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"init('sim'): unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"accepted: {', '.join(accepted)}")
    return SimBackend(**options)
