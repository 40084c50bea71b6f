"""The main-job demo, part 1: the runtime on the embedded local backend.

``python -m runtime.demo`` emulates a small heterogeneous cluster with real
worker processes (two "A100" nodes, one "V100" node, one CPU node), then runs
remote functions, a nested fan-out, an actor and a failing task, and prints
what happened. Nothing to start beforehand.
"""

from __future__ import annotations

import time

import runtime as rt

NODES = [
    {"name": "a100", "num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100", "count": 2},
    {"name": "v100", "num_cpus": 1, "num_gpus": 1, "accelerator_type": "V100"},
    {"name": "cpu", "num_cpus": 2},
]


@rt.remote
def square(x: int) -> int:
    """A CPU task."""
    return x * x


@rt.remote(num_gpus=1, accelerator_type="A100")
def train(shard: list[int]) -> float:
    """A 'GPU' task pinned to A100 nodes (logical GPUs: no real GPU needed)."""
    return sum(shard) / len(shard)


@rt.remote
def fan_out(n: int) -> int:
    """A task that submits tasks and waits for them (nested parallelism)."""
    return sum(rt.get([square.remote(i) for i in range(n)]))


@rt.remote
class Counter:
    """An actor: state lives in its own process; calls run in order."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


@rt.remote
def fails() -> None:
    """A task whose error comes back with its remote traceback."""
    raise ValueError("bad input in a remote task")


def main() -> None:
    """Run the demo and print a short report."""
    t0 = time.perf_counter()
    cluster = rt.init(nodes=NODES)
    try:
        print(f"started in {time.perf_counter() - t0:.2f} s")
        print(cluster)
        print("squares:", rt.get([square.remote(i) for i in range(8)]))
        print("train on A100 nodes:", rt.get([train.remote(list(range(k, k + 10)))
                                                for k in range(4)]))
        print("nested fan-out of 20:", rt.get(fan_out.remote(20)))
        c = Counter.remote()
        print("actor calls in order:", rt.get([c.add.remote(1) for _ in range(5)]))
        try:
            rt.get(fails.remote())
        except ValueError as err:
            print(f"remote error is still a ValueError ({isinstance(err, ValueError)}): "
                  f"{str(err).splitlines()[0]}")
        ready, rest = rt.wait([square.remote(i) for i in range(6)], num_returns=3)
        print(f"wait: {len(ready)} ready, {len(rest)} not yet")
        print()
        print(rt.current_backend().log.counts())
        print(cluster)
    finally:
        rt.shutdown()
    print(f"done in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
