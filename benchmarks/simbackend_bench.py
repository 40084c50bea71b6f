"""Sim backend speed: how many real task bodies per second it runs in virtual time.

``python -m benchmarks.simbackend_bench [--quick]`` prints one row per workload:
the number of tasks, wall seconds, tasks per wall second and the virtual end time.
Figures are printed, never asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import runtime as rt

NODES = [{"name": "box", "resources": {"CPU": 2, "GPU": 1}}]


def _trivial(n: int) -> int:
    @rt.remote(sim_duration=1)
    def noop(i: int) -> int:
        return i

    rt.get([noop.remote(i) for i in range(n)])
    return n


def _sleepers(n: int) -> int:
    @rt.remote
    def nap() -> None:
        time.sleep(0.5)
        time.sleep(0.5)

    rt.get([nap.remote() for _ in range(n)])
    return n


def _fib(n: int) -> int:
    @rt.remote(sim_duration=1)
    def fib(k: int) -> int:
        if k < 2:
            return k
        return sum(rt.get([fib.remote(k - 1), fib.remote(k - 2)]))

    rt.get(fib.remote(n))
    calls = [1, 1]
    for _ in range(2, n + 1):
        calls.append(calls[-1] + calls[-2] + 1)
    return calls[n]


def _parents(n: int) -> int:
    @rt.remote(sim_duration=1)
    def child(i: int) -> int:
        return i

    @rt.remote
    def parent(i: int) -> int:
        return rt.get(child.remote(i))

    rt.get([parent.remote(i) for i in range(n)])
    return 2 * n


def _actor(n: int) -> int:
    @rt.remote(sim_duration=0.01)
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self) -> int:
            self.n += 1
            return self.n

    c = Counter.remote()
    rt.get([c.add.remote() for _ in range(n)])
    return n


def _run(fn: Callable[[int], int], n: int) -> tuple[int, float, float]:
    gc.collect()  # each row starts from a collected heap (else the order of rows shows)
    rt.init("sim", nodes=NODES, seed=0)
    try:
        t0 = time.perf_counter()
        tasks = fn(n)
        wall = time.perf_counter() - t0
        return tasks, wall, rt.now()
    finally:
        rt.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Print the table (``--quick`` for a small smoke run)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.simbackend_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = p.parse_args(argv)
    q = args.quick
    rows = [
        ("trivial tasks, sim_duration=1", _trivial, 1_000 if q else 10_000),
        ("tasks with 2 x time.sleep(0.5)", _sleepers, 1_000 if q else 10_000),
        (f"fib({12 if q else 16}) nested blocking get", _fib, 12 if q else 16),
        ("parents each blocking on a child", _parents, 200 if q else 2_000),
        ("actor method calls", _actor, 500 if q else 5_000),
    ]
    _run(_trivial, 100)  # warm up imports and caches
    print("sim backend (2 CPU + 1 GPU, FIFO first-fit, trace on)")
    print(f"{'workload':<36} {'tasks':>7} {'wall s':>8} {'tasks/s':>9} {'virtual end':>12}")
    for label, fn, n in rows:
        tasks, wall, vend = _run(fn, n)
        print(f"{label:<36} {tasks:>7} {wall:>8.3f} {tasks / wall:>9.0f} {vend:>12g}")


if __name__ == "__main__":
    main()
