"""Cost of one scheduling decision vs cluster size: ``python -m benchmarks.policy_bench [--quick]``.

For 1k / 10k / 100k heterogeneous nodes (CPU, GPU, TPU and QPU node shapes),
half loaded at random, it times (1) ``next(index.fitting(task, order))``, the
index query a policy makes, and (2) one whole decision as a simulator makes it:
``policy.schedule([task], index)`` then ``allocate`` and, for the task placed a
step earlier, ``release``. Should grow about logarithmically with the node count.
"""

from __future__ import annotations

import argparse
import random
import time

from runtime.policies import NodeIndex, TaskInfo, get_policy
from runtime.resources import Resources

SHAPES = [
    ("cpu", {"CPU": 32, "memory": 128.0}, None),
    ("gpu", {"CPU": 16, "GPU": 4, "memory": 256.0}, "A100"),
    ("gpu_old", {"CPU": 16, "GPU": 8, "memory": 256.0}, "V100"),
    ("tpu", {"CPU": 8, "TPU": 4}, "TPUv4"),
    ("qpu", {"CPU": 2, "QPU": 1}, "QPU27"),
]
REQUESTS = [{"CPU": 1}, {"CPU": 4, "memory": 8.0}, {"CPU": 2, "GPU": 1}, {"CPU": 1, "TPU": 1},
            {"QPU": 1}, {"CPU": 8}]


def build(n: int, rng: random.Random) -> tuple[NodeIndex, int]:
    """A half-loaded index of ``n`` nodes; returns it and the next task id."""
    idx = NodeIndex()
    for i in range(n):
        name, total, accel = SHAPES[i % len(SHAPES)]
        idx.add_node(f"n{i:06d}", name, total, {"accelerator_type": accel} if accel else {})
    tid = 0
    for i in range(n):
        node = idx.node(f"n{i:06d}")
        for _ in range(rng.randrange(0, 6)):
            req = Resources(rng.choice(REQUESTS))
            if req.fits(node.free):
                idx.allocate(TaskInfo(tid, "w", req), node.id)
                node = idx.node(node.id)
                tid += 1
    return idx, tid


def per_call(fn, budget: float) -> float:  # noqa: ANN001
    """Mean seconds per call of ``fn`` over about ``budget`` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= budget:
            return dt / n


def main(argv: list[str] | None = None) -> None:
    """Print µs per query / decision for fifo, best_fit and spread at each cluster size."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.policy_bench")
    ap.add_argument("--quick", action="store_true", help="small sizes, short runs (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="*", help="node counts (default 1000 10000 100000)")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([200, 2000] if args.quick else [1_000, 10_000, 100_000])
    budget = 0.05 if args.quick else 0.5
    policies = [("fifo", "id"), ("best_fit", "tightest"), ("spread", "loosest")]
    print(f"{'nodes':>8} {'policy':>9} {'fitting() first, us':>20} {'decision, us':>13} "
          f"{'build, s':>9}")
    for n in sizes:
        rng = random.Random(n)
        t0 = time.perf_counter()
        idx, tid = build(n, rng)
        build_s = time.perf_counter() - t0
        for pname, order in policies:
            pol = get_policy(pname)
            probes = [TaskInfo(10**9 + i, "p", Resources(r)) for i, r in enumerate(REQUESTS)]
            k = [0]

            def query() -> None:
                k[0] += 1
                next(idx.fitting(probes[k[0] % len(probes)], order), None)

            held: list[int] = []

            def decide() -> None:
                k[0] += 1
                t = TaskInfo(tid + k[0], "p", Resources(REQUESTS[k[0] % len(REQUESTS)]))
                for p in pol.schedule([t], idx):
                    idx.allocate(t, p.node)
                    held.append(t.id)
                if len(held) > 4:
                    idx.release(held.pop(0))

            q = per_call(query, budget)
            d = per_call(decide, budget)
            while held:
                idx.release(held.pop())
            print(f"{n:>8} {pname:>9} {q * 1e6:>20.1f} {d * 1e6:>13.1f} {build_s:>9.2f}")


if __name__ == "__main__":
    main()
