"""The toy program of the sim-backend design note, as a function tests can run anywhere.

2 CPUs + 1 GPU: four ``prep`` tasks, two GPU ``train`` tasks that depend on them,
``wait(num_returns=1)``, fib(6) with nested blocking ``get``, an ordered actor, a
driver ``time.sleep``, a nested exception caught in a task and a driver-side error.
"""

from __future__ import annotations

import time
from typing import Any

import runtime as rt

NODES = [{"name": "box", "resources": {"CPU": 2, "GPU": 1}}]


def run(seed: int = 0) -> dict[str, Any]:
    """Run the toy on a fresh sim cluster; return its figures and the trace hash."""
    rt.init("sim", nodes=NODES, seed=seed)
    try:
        return _program()
    finally:
        rt.shutdown()


def _program() -> dict[str, Any]:
    out: dict[str, Any] = {}

    @rt.remote(sim_duration=lambda i, d: d)
    def prep(i: int, d: float) -> int:
        return i * 10

    @rt.remote(num_gpus=1, num_cpus=0, sim_duration=5)
    def train(x: int) -> int:
        time.sleep(1)
        return x + 1

    preps = [prep.remote(i, d) for i, d in enumerate((1, 3, 4, 6))]
    trains = [train.remote(preps[0]), train.remote(preps[2])]
    ready, _ = rt.wait(preps, num_returns=1)
    out["first_ready"] = (preps.index(ready[0]), rt.now())
    out["trains"] = (rt.get(trains), rt.now())

    @rt.remote(sim_duration=2)
    def fib(n: int) -> int:
        if n < 2:
            return n
        return sum(rt.get([fib.remote(n - 1), fib.remote(n - 2)]))

    start = rt.now()
    out["fib6"] = (rt.get(fib.remote(6)), rt.now() - start)

    @rt.remote(sim_duration=0.3)
    class Counter:
        def __init__(self) -> None:
            self.n = 0
            self.history: list[float] = []

        def add(self) -> int:
            self.n += 1
            self.history.append(round(rt.now(), 6))
            return self.n

        def log(self) -> list[float]:
            return self.history

    c = Counter.remote()
    out["counter"] = rt.get([c.add.remote() for _ in range(5)])
    out["history"] = rt.get(c.log.remote())
    time.sleep(2)
    out["after_sleep"] = rt.now()

    @rt.remote(sim_duration=1)
    def boom() -> None:
        raise ValueError("boom")

    @rt.remote
    def catcher() -> str:
        try:
            rt.get(boom.remote())
        except ValueError as exc:
            return f"caught {type(exc.cause).__name__} at t={rt.now():g}"
        return "not caught"

    out["nested"] = rt.get(catcher.remote())
    try:
        rt.get(boom.remote())
        out["driver_error"] = None
    except rt.TaskError as exc:
        out["driver_error"] = type(exc.cause).__name__
    out["end"] = rt.now()
    out["hash"] = rt.current_backend().trace_hash()  # type: ignore[attr-defined]
    return out


if __name__ == "__main__":
    print(run())
