"""Run every benchmark module in turn: ``python -m benchmarks [--quick] [names...]``."""

from __future__ import annotations

import importlib
import sys

MODULES = ["runtime_bench", "magics_bench", "dask_bench", "simbackend_bench", "policy_bench",
           "sim_bench"]


def main(argv: list[str] | None = None) -> None:
    """Run the named benchmark modules (all by default), passing ``--quick`` through."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("-")]
    names = [a for a in args if not a.startswith("-")] or MODULES
    for name in names:
        mod = name if name.endswith("_bench") else f"{name}_bench"
        try:
            module = importlib.import_module(f"benchmarks.{mod}")
        except ModuleNotFoundError as exc:
            print(f"== {mod}: not available ({exc})")
            continue
        print(f"\n== {mod}")
        module.main(flags)


if __name__ == "__main__":
    main()
