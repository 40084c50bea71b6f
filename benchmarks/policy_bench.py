"""Cost of one scheduling decision vs cluster size: ``python -m benchmarks.policy_bench [--quick]``.

For 1k / 10k / 100k heterogeneous nodes (CPU, GPU, TPU and QPU node shapes),
half loaded at random, it times (1) ``next(index.fitting(task, order))``, the
index query a policy makes, (2) one bare decision: ``policy.schedule([task], index)``
then ``allocate`` and, for the task placed five decisions earlier, ``release``; and
(3) the same decision through the control plane, as every backend and the simulator
make it (``submit``, one round with its validation, ``end``). All should stay flat
(at most logarithmic) in the node count.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from runtime.control import ClusterIndex, ControlPlane
from runtime.events import EventKind
from runtime.policies import TaskInfo, get_policy
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


def build(n: int, rng: random.Random, idx: ClusterIndex | None = None
          ) -> tuple[ClusterIndex, int]:
    """A half-loaded index of ``n`` nodes; returns it and the next task id."""
    idx = ClusterIndex() if idx is None else idx
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


def per_call(fn: Callable[[int], None], budget: float) -> float:
    """Mean seconds per call of ``fn(i)`` over about ``budget`` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        for i in range(n, n + 50):
            fn(i)
        n += 50
        dt = time.perf_counter() - t0
        if dt >= budget:
            return dt / n


def query_fn(idx: ClusterIndex, order: str) -> Callable[[int], None]:
    """One index query: the first fitting node of a probe task."""
    probes = [TaskInfo(10**9 + i, "p", Resources(r)) for i, r in enumerate(REQUESTS)]

    def query(i: int) -> None:
        next(idx.fitting(probes[i % len(probes)], order), None)  # type: ignore[arg-type]

    return query


def decide_fn(idx: ClusterIndex, pname: str, first_id: int,
              held: list[int]) -> Callable[[int], None]:
    """One decision: schedule one task, allocate it, release one placed 5 decisions ago."""
    pol = get_policy(pname)

    def decide(i: int) -> None:
        t = TaskInfo(first_id + i, "p", Resources(REQUESTS[i % len(REQUESTS)]))
        for p in pol.schedule([t], idx):
            idx.allocate(t, p.node)
            held.append(t.id)
        if len(held) > 4:
            idx.release(held.pop(0))

    return decide


def plane_fn(plane: ControlPlane, first_id: int, held: list[int]) -> Callable[[int], None]:
    """The same decision through the control plane: submit, one round, end."""
    def decide(i: int) -> None:
        t = TaskInfo(first_id + i, "p", Resources(REQUESTS[i % len(REQUESTS)]))
        plane.submit(t)
        if plane.schedule():
            held.append(t.id)
        else:
            plane.end(t.id, EventKind.TASK_CANCELLED)
        if len(held) > 4:
            plane.end(held.pop(0), EventKind.TASK_FINISHED)

    return decide


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
          f"{'via the plane, us':>18} {'build, s':>9}")
    for n in sizes:
        rng = random.Random(n)
        t0 = time.perf_counter()
        idx, tid = build(n, rng)
        build_s = time.perf_counter() - t0
        for pname, order in policies:
            held: list[int] = []
            q = per_call(query_fn(idx, order), budget)
            d = per_call(decide_fn(idx, pname, tid, held), budget)
            tid += 10**7
            while held:
                idx.release(held.pop())
            plane = ControlPlane(pname)
            _, ptid = build(n, random.Random(n), plane.index)
            g = per_call(plane_fn(plane, ptid + 10**8, held), budget)
            print(f"{n:>8} {pname:>9} {q * 1e6:>20.1f} {d * 1e6:>13.1f} {g * 1e6:>18.1f} "
                  f"{build_s:>9.2f}")


if __name__ == "__main__":
    main()
