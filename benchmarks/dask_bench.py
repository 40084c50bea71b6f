"""The dask backend against raw ``distributed.Client`` calls, in the same run.

Latency: one no-op task submitted and fetched at a time. Throughput: N no-op
tasks submitted, then all fetched. Rows: raw dask, our backend with no policy
(dask's scheduler places), and with the ``fifo`` policy (the backend places and
pins). Targets (issue 5): <= 1.2x raw dask with no policy, <= 2x with a policy.
Nothing is asserted; run with ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def noop(x: Any = None) -> Any:
    """The task body: returns its argument."""
    return x


def _latency(call: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _throughput(run: Callable[[int], Any], n: int) -> float:
    t = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    """Print latency and throughput of raw dask vs the runtime on one LocalCluster."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.dask_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="few tasks: a smoke run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    n_lat = 30 if args.quick else 300
    n_tp = 200 if args.quick else 3000
    repeats = 1 if args.quick else 3

    import distributed

    import runtime

    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                  processes=True, host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address="127.0.0.1:0") as lc:
        rows: list[tuple[str, float, float]] = []
        with distributed.Client(lc, set_as_default=False) as client:
            client.submit(noop, 0, pure=False).result()
            lat = _latency(lambda: client.submit(noop, 1, pure=False).result(), n_lat)
            tp = max(_throughput(lambda n: client.gather(
                [client.submit(noop, i, pure=False) for i in range(n)]), n_tp)
                for _ in range(repeats))
            rows.append(("raw distributed.Client", lat, tp))
        f = runtime.remote(noop)
        for label, opts in (("runtime, no policy", {}), ("runtime, policy=fifo",
                                                         {"policy": "fifo"})):
            with runtime.init(lc, **opts):
                runtime.get(f.remote(0))
                lat = _latency(lambda: runtime.get(f.remote(1)), n_lat)
                tp = max(_throughput(lambda n: runtime.get([f.remote(i) for i in range(n)]),
                                     n_tp) for _ in range(repeats))
                rows.append((label, lat, tp))
    base_lat, base_tp = rows[0][1], rows[0][2]
    print(f"dask backend vs raw dask: {args.workers} workers x {args.threads} threads, "
          f"latency = median of {n_lat}, throughput = best of {repeats} x {n_tp} no-op tasks")
    print(f"{'':26} {'latency ms':>11} {'x raw':>6} {'tasks/s':>9} {'x raw':>6}")
    for label, lat, tp in rows:
        print(f"{label:26} {lat * 1e3:11.2f} {lat / base_lat:6.2f} {tp:9.0f} "
              f"{base_tp / tp:6.2f}")
    print("targets: <= 1.2x with no policy, <= 2x with a policy (x raw: higher is slower)")


if __name__ == "__main__":
    main()
