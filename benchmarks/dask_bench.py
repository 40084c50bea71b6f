"""The dask backend against raw ``distributed.Client`` calls, in the same run.

Latency: the median of n no-op tasks submitted and fetched one at a time.
Throughput: N no-op tasks submitted, then all fetched. Rows: raw dask, our
backend with no policy (dask's scheduler places), with the ``fifo`` policy
(first fit: the backend places and pins) and with the ``drf`` policy (a policy
that is not first fit).

Method: one ``LocalCluster`` for the whole run, measured in R interleaved rounds
(default 5). Each round measures every row in turn (the starting row rotates
from round to round, so no row always runs last), each runtime row on a fresh
``runtime.init(cluster, ...)`` with one warm-up task (init, warm-up and shutdown
are not timed); the raw client stays open all run. On a small machine the dask
scheduler's speed drifts over a run, so each row's ratio to raw is taken within
its round, and the table gives the median over rounds of those ratios (with the
min-max range of the throughput ratio) next to the median absolute figures.

Targets (issue 5): <= 1.2x raw dask with no policy, <= 2x with a policy.
Nothing is asserted; run with ``--quick`` for a smoke run (one small round).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

RAW = "raw distributed.Client"
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("runtime, no policy", {}),
    ("runtime, policy=fifo", {"policy": "fifo"}),
    ("runtime, policy=drf", {"policy": "drf"}),
]


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
    out = run(n)
    rate = n / (time.perf_counter() - t)
    if list(out) != list(range(n)):  # a fast wrong answer must not pass as a figure
        raise RuntimeError(f"throughput run returned wrong results: {list(out)[:5]}...")
    return rate


def _measure_raw(client: Any, n_lat: int, n_tp: int) -> tuple[float, float]:
    client.submit(noop, 0, pure=False).result()
    lat = _latency(lambda: client.submit(noop, 1, pure=False).result(), n_lat)
    tp = _throughput(lambda n: client.gather(
        [client.submit(noop, i, pure=False) for i in range(n)]), n_tp)
    return lat, tp


def _measure_runtime(lc: Any, opts: dict[str, Any], n_lat: int, n_tp: int) -> tuple[float, float]:
    import runtime

    f = runtime.remote(noop)
    runtime.init(lc, **opts)
    try:
        runtime.get(f.remote(0))
        lat = _latency(lambda: runtime.get(f.remote(1)), n_lat)
        tp = _throughput(lambda n: runtime.get([f.remote(i) for i in range(n)]), n_tp)
    finally:
        try:
            runtime.shutdown()
        except Exception:  # the figures are taken; report the failure and go on
            print(f"warning: runtime.shutdown() failed after {opts or 'no policy'}:\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)
    return lat, tp


def main(argv: list[str] | None = None) -> None:
    """Print latency and throughput of raw dask vs the runtime on one LocalCluster."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.dask_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round, few tasks: a smoke run")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 5, 1 with --quick)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if rounds < 1:
        p.error("--rounds must be >= 1")
    n_lat = 30 if args.quick else 60
    n_tp = 200 if args.quick else 2000

    import distributed

    labels = [RAW] + [label for label, _ in ROWS]
    lat: dict[str, list[float]] = {label: [] for label in labels}
    tp: dict[str, list[float]] = {label: [] for label in labels}
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                  processes=True, host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address="127.0.0.1:0") as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        for r in range(rounds):
            # Rotate the starting row each round so that no row always runs last.
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in order:
                if label == RAW:
                    a, b = _measure_raw(client, n_lat, n_tp)
                else:
                    a, b = _measure_runtime(lc, dict(ROWS)[label], n_lat, n_tp)
                lat[label].append(a)
                tp[label].append(b)
            if rounds > 1:
                parts = ", ".join(f"{label.removeprefix('runtime, ')} "
                                  f"{tp[RAW][r] / tp[label][r]:.2f}x" for label, _ in ROWS)
                print(f"round {r + 1}/{rounds}: raw {tp[RAW][r]:.0f} tasks/s; "
                      f"throughput x raw: {parts}", file=sys.stderr, flush=True)

    # Per-round ratios to raw (higher is slower), then the median over rounds.
    lat_x = {k: [v / lat[RAW][i] for i, v in enumerate(vs)] for k, vs in lat.items()}
    tp_x = {k: [tp[RAW][i] / v for i, v in enumerate(vs)] for k, vs in tp.items()}
    med = statistics.median
    print(f"dask backend vs raw dask: {args.workers} workers x {args.threads} threads, "
          f"{rounds} interleaved round(s); per round and row: latency = median of {n_lat}, "
          f"throughput = {n_tp} no-op tasks")
    print("figures: medians over rounds; x raw: median of the per-round ratios "
          "(higher is slower); range: min-max of the per-round throughput ratio")
    print(f"{'':26} {'latency ms':>11} {'x raw':>6} {'tasks/s':>9} {'x raw':>6} "
          f"{'range':>11}")
    for label in labels:
        rng = f"{min(tp_x[label]):.2f}-{max(tp_x[label]):.2f}"
        print(f"{label:26} {med(lat[label]) * 1e3:11.2f} {med(lat_x[label]):6.2f} "
              f"{med(tp[label]):9.0f} {med(tp_x[label]):6.2f} {rng:>11}")
    print("targets: <= 1.2x with no policy, <= 2x with a policy (x raw: higher is slower)")


if __name__ == "__main__":
    main()
