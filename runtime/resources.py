"""Resources: named amounts a node has and a task requests.

A request is a mapping of resource name to a non-negative amount, e.g.
``{"CPU": 1, "GPU": 0.5}``. Names are free strings; ``CPU``, ``GPU``, ``TPU``,
``QPU`` and ``memory`` (bytes) are understood everywhere. :class:`Resources` is
the validated, immutable, hashable form every layer passes around. This module
imports nothing of ours, so policies, backends and the simulator can all use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["KNOWN_KINDS", "EPSILON", "Resources", "format_resources"]

#: Resource names every layer understands (others are free-form custom resources).
KNOWN_KINDS = ("CPU", "GPU", "TPU", "QPU", "memory")

#: Tolerance for float accounting (fractional GPUs: 0.1 * 10 must fit in 1.0).
EPSILON = 1e-9


def _check_amount(name: Any, amount: Any, where: str) -> float:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}: resource names must be non-empty strings, got {name!r}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(
            f"{where}: amount of resource {name!r} must be a number, "
            f"got {amount!r} ({type(amount).__name__})"
        )
    value = float(amount)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(
            f"{where}: amount of resource {name!r} must be a finite number >= 0, got {amount!r}"
        )
    return value


class Resources(Mapping[str, float]):
    """An immutable, validated mapping of resource name to amount (zeros dropped).

    Supports ``fits(other)``, ``+`` and ``-`` (subtraction refuses to go negative).
    Equal contents give equal hashes, so a ``Resources`` can key an index.
    """

    __slots__ = ("_items", "_hash")

    def __init__(self, amounts: Mapping[str, Any] | None = None, /, *, where: str = "resources"):
        items: dict[str, float] = {}
        if amounts is not None:
            if not isinstance(amounts, Mapping):
                raise TypeError(
                    f"{where}: expected a mapping of resource name to amount, "
                    f"got {amounts!r} ({type(amounts).__name__})"
                )
            for name, amount in amounts.items():
                value = _check_amount(name, amount, where)
                if value > EPSILON:
                    items[name] = value
        self._items = dict(sorted(items.items()))
        self._hash: int | None = None

    @classmethod
    def _trusted(cls, items: dict[str, float]) -> Resources:
        """Build from already-validated amounts (internal fast path)."""
        self = cls.__new__(cls)
        self._items = dict(sorted((k, v) for k, v in items.items() if v > EPSILON))
        self._hash = None
        return self

    # Mapping protocol -------------------------------------------------------
    def __getitem__(self, name: str) -> float:
        return self._items[name]

    def get(self, name: str, default: Any = 0.0) -> Any:  # type: ignore[override]
        """Amount of ``name`` (0.0 when absent)."""
        return self._items.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Resources):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == {k: float(v) for k, v in other.items() if v}
        return NotImplemented

    def __repr__(self) -> str:
        return f"Resources({format_resources(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Resources, (self._items,))

    # Arithmetic -------------------------------------------------------------
    def fits(self, capacity: Mapping[str, float]) -> bool:
        """True when every amount here is available in ``capacity``."""
        for name, amount in self._items.items():
            if capacity.get(name, 0.0) + EPSILON < amount:
                return False
        return True

    def missing(self, capacity: Mapping[str, float]) -> dict[str, float]:
        """The amounts that ``capacity`` lacks to satisfy this request."""
        return {
            n: a - capacity.get(n, 0.0)
            for n, a in self._items.items()
            if capacity.get(n, 0.0) + EPSILON < a
        }

    def __add__(self, other: Mapping[str, float]) -> Resources:
        out = dict(self._items)
        for name, amount in other.items():
            out[name] = out.get(name, 0.0) + amount
        return Resources._trusted(out)

    def __sub__(self, other: Mapping[str, float]) -> Resources:
        out = dict(self._items)
        for name, amount in other.items():
            left = out.get(name, 0.0) - amount
            if left < -EPSILON:
                raise ValueError(
                    f"capacity would go negative: {name} {out.get(name, 0.0)} - {amount}"
                )
            out[name] = max(left, 0.0)
        return Resources._trusted(out)

    def scaled(self, factor: float) -> Resources:
        """Every amount multiplied by ``factor``."""
        return Resources._trusted({k: v * factor for k, v in self._items.items()})

    def to_dict(self) -> dict[str, float]:
        """A plain ``dict`` copy (for JSON, dask, reprs)."""
        return dict(self._items)


def format_resources(res: Mapping[str, float]) -> str:
    """``CPU=1, GPU=0.5`` style text for messages and reprs."""
    if not res:
        return "nothing"
    parts = []
    for name, amount in res.items():
        text = f"{amount:g}" if name != "memory" else _fmt_bytes(amount)
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g}{unit}"
        n /= 1024
    return f"{n:g}B"  # pragma: no cover
