"""The runtime benchmark: the local backend side by side with its peers (issue 2 section 5).

``python -m benchmarks.runtime_bench [--quick] [--no-dask]`` prints one table:
startup to first result, no-op round-trip latency (median and p95), throughput
of no-op tasks, a dependency chain, calls on one actor, a 10 MB numpy array
reaching a task, and idle memory of the worker processes, for the local backend
and ``concurrent.futures.ProcessPoolExecutor(2)``, plus Dask's ``LocalCluster``,
Ray and ipyparallel when they are importable (not with ``--quick``). Nothing is asserted: figures vary
with the machine and its load; compare columns of one run only.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["main"]


def noop(x: Any = None) -> Any:
    """The no-op task body."""
    return x


def inc(x: int) -> int:
    """One step of a chain."""
    return x + 1


def nbytes(a: Any) -> int:
    """Touch an array (sum of its first and last byte) and return its size."""
    return int(a.nbytes)


class Counter:
    """The actor of the actor-call benchmark."""

    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n


def _rss_mb(pids: list[int]) -> float:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return float("nan")
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except Exception:  # noqa: BLE001 - gone
            pass
    return total / 2**20


def _timeit(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ray_style(api: Any, out: dict[str, float], n: dict[str, int]) -> Any:
    """The figures after startup, for any module with Ray's API (``runtime`` or ``ray``).

    ``out["startup"]`` must already be set; returns the actor handle (still alive).
    """
    import numpy as np

    f = api.remote(noop)
    lat = []
    for _ in range(n["latency"]):
        t = time.perf_counter()
        api.get(f.remote())
        lat.append(time.perf_counter() - t)
    out["lat_p50"] = statistics.median(lat)
    out["lat_p95"] = statistics.quantiles(lat, n=20)[18]
    out["throughput"] = n["tasks"] / _timeit(lambda: api.get([f.remote() for _ in
                                                               range(n["tasks"])]))
    g = api.remote(inc)

    def chain() -> None:
        r = g.remote(0)
        for _ in range(n["chain"] - 1):
            r = g.remote(r)
        assert api.get(r) == n["chain"]

    out["chain_step"] = _timeit(chain) / n["chain"]
    c = api.remote(Counter).remote()
    api.get(c.add.remote())
    out["actor"] = n["actor"] / _timeit(lambda: api.get([c.add.remote()
                                                         for _ in range(n["actor"])]))
    arr = np.ones(10 * 2**20, dtype=np.uint8)
    h = api.remote(nbytes)
    api.get(h.remote(api.put(arr[:10])))
    out["array"] = statistics.median(
        [_timeit(lambda: api.get(h.remote(api.put(arr)))) for _ in range(n["array"])])
    return c


def bench_local(n: dict[str, int]) -> dict[str, float]:
    """Every figure for the local backend."""
    import runtime as rt

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    rt.init(num_cpus=2)
    rt.get(rt.remote(noop).remote())
    out["startup"] = time.perf_counter() - t0
    try:
        c = _ray_style(rt, out, n)
        rt.kill(c)
        time.sleep(0.5)
        out["idle_mb"] = _rss_mb(rt.current_backend().worker_pids())
    finally:
        rt.shutdown()
    return out


def bench_ppe(n: dict[str, int]) -> dict[str, float]:
    """The same figures for ``ProcessPoolExecutor(2)`` (no actors)."""
    import numpy as np

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(2) as ex:
        ex.submit(noop).result()
        out["startup"] = time.perf_counter() - t0
        lat = []
        for _ in range(n["latency"]):
            t = time.perf_counter()
            ex.submit(noop).result()
            lat.append(time.perf_counter() - t)
        out["lat_p50"] = statistics.median(lat)
        out["lat_p95"] = statistics.quantiles(lat, n=20)[18]
        out["throughput"] = n["tasks"] / _timeit(
            lambda: [x.result() for x in [ex.submit(noop) for _ in range(n["tasks"])]])

        def chain() -> None:
            x = 0
            for _ in range(n["chain"]):
                x = ex.submit(inc, x).result()

        out["chain_step"] = _timeit(chain) / n["chain"]
        arr = np.ones(10 * 2**20, dtype=np.uint8)
        out["array"] = statistics.median(
            [_timeit(lambda: ex.submit(nbytes, arr).result()) for _ in range(n["array"])])
        out["idle_mb"] = _rss_mb([p.pid for p in ex._processes.values()])  # noqa: SLF001
    return out


def bench_dask(n: dict[str, int]) -> dict[str, float]:
    """The same figures for a Dask ``LocalCluster`` of 2 single-thread worker processes."""
    import numpy as np
    from distributed import Client, LocalCluster

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as lc, Client(lc) as cl:
        cl.submit(noop, 0, pure=False).result()
        out["startup"] = time.perf_counter() - t0
        k = max(20, n["latency"] // 5)
        lat = []
        for i in range(k):
            t = time.perf_counter()
            cl.submit(noop, i, pure=False).result()
            lat.append(time.perf_counter() - t)
        out["lat_p50"] = statistics.median(lat)
        out["lat_p95"] = statistics.quantiles(lat, n=20)[18]
        m = max(200, n["tasks"] // 10)
        out["throughput"] = m / _timeit(lambda: cl.gather(cl.map(noop, range(m), pure=False)))
        c = max(50, n["chain"] // 5)

        def chain() -> None:
            r = cl.submit(inc, 0, pure=False)
            for _ in range(c - 1):
                r = cl.submit(inc, r, pure=False)
            assert r.result() == c

        out["chain_step"] = _timeit(chain) / c
        actor = cl.submit(Counter, actor=True).result()
        a = max(100, n["actor"] // 10)
        out["actor"] = a / _timeit(lambda: [f.result() for f in [actor.add() for _ in range(a)]])
        arr = np.ones(10 * 2**20, dtype=np.uint8)
        out["array"] = statistics.median(
            [_timeit(lambda: cl.submit(nbytes, cl.scatter(arr), pure=False).result())
             for _ in range(n["array"])])
        out["idle_mb"] = _rss_mb([w.process.pid for w in lc.workers.values()
                                  if getattr(w, "process", None) is not None
                                  and w.process.pid])
    return out


def bench_ray(n: dict[str, int]) -> dict[str, float]:
    """The same figures for Ray (``ray.init(num_cpus=2)``, local, no dashboard)."""
    import psutil
    import ray

    out: dict[str, float] = {}
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        ray.get(ray.remote(noop).remote())
        out["startup"] = time.perf_counter() - t0
        c = _ray_style(ray, out, n)
        ray.kill(c)
        time.sleep(0.5)
        now = {p.pid for p in psutil.Process().children(recursive=True)}
        out["idle_mb"] = _rss_mb(sorted(now - before))
    finally:
        ray.shutdown()
    return out


def bench_ipyparallel(n: dict[str, int]) -> dict[str, float]:
    """The same figures for ipyparallel: a controller and 2 engines on 127.0.0.1."""
    import ipyparallel as ipp
    import numpy as np

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    cluster = ipp.Cluster(n=2, controller_ip="127.0.0.1", log_level=40)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(2, timeout=60)
        view = rc.load_balanced_view()
        view.apply_sync(noop)
        out["startup"] = time.perf_counter() - t0
        k = max(20, n["latency"] // 5)
        lat = []
        for _ in range(k):
            t = time.perf_counter()
            view.apply_sync(noop)
            lat.append(time.perf_counter() - t)
        out["lat_p50"] = statistics.median(lat)
        out["lat_p95"] = statistics.quantiles(lat, n=20)[18]
        m = max(200, n["tasks"] // 10)
        out["throughput"] = m / _timeit(lambda: view.map_sync(noop, range(m)))
        c = max(50, n["chain"] // 5)

        def chain() -> None:
            x = 0
            for _ in range(c):
                x = view.apply_sync(inc, x)

        out["chain_step"] = _timeit(chain) / c
        arr = np.ones(10 * 2**20, dtype=np.uint8)
        out["array"] = statistics.median(
            [_timeit(lambda: view.apply_sync(nbytes, arr)) for _ in range(n["array"])])
        out["idle_mb"] = _rss_mb([e["pid"] for e in rc[:].apply_sync(_engine_info)])
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    return out


def _engine_info() -> dict[str, int]:
    import os as _os

    return {"pid": _os.getpid()}


ROWS = [
    ("startup", "startup to first result", "s", "<= 0.5 s"),
    ("lat_p50", "latency, median", "ms", "<= 1.5x PPE, <= 0.25x Ray"),
    ("lat_p95", "latency, p95", "ms", ""),
    ("throughput", "no-op tasks", "/s", ">= 0.8x PPE, >= 4x Ray"),
    ("chain_step", "chain, per step", "ms", "<= 2x PPE"),
    ("actor", "actor calls", "/s", ">= 2x Ray"),
    ("array", "10 MB array put+task", "ms", "<= Ray"),
    ("idle_mb", "idle memory (workers)", "MB", "< 150 MB"),
]


def _fmt(key: str, unit: str, v: float | None) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v * 1000:.3f}"
    if unit == "s":
        return f"{v:.3f}"
    if unit == "/s":
        return f"{v:,.0f}"
    return f"{v:.0f}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table (``--quick``: small counts, local and PPE only)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.runtime_bench",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small counts; local and PPE only (skip Dask, Ray, ipyparallel)")
    ap.add_argument("--no-dask", action="store_true", help="skip Dask's LocalCluster")
    args = ap.parse_args(argv)
    n = ({"latency": 100, "tasks": 2000, "chain": 200, "actor": 1000, "array": 3}
         if args.quick else
         {"latency": 300, "tasks": 10_000, "chain": 1000, "actor": 5000, "array": 7})
    cols: dict[str, dict[str, float]] = {}
    notes = []
    cols["local"] = bench_local(n)
    cols["PPE(2)"] = bench_ppe(n)
    if args.quick or args.no_dask:
        notes.append("Dask LocalCluster: skipped (--quick / --no-dask)")
    elif importlib.util.find_spec("distributed") is None:
        notes.append("Dask LocalCluster: not installed")
    else:
        try:
            cols["Dask"] = bench_dask(n)
        except Exception as exc:  # noqa: BLE001 - a peer failing must not hide our figures
            notes.append(f"Dask LocalCluster: failed ({exc!r})")
    if args.quick:
        notes.append("Ray: skipped (--quick)")
    elif importlib.util.find_spec("ray") is None:
        notes.append("Ray: not installed (pip install '.[bench]'); skipped")
    else:
        try:
            cols["Ray"] = bench_ray(n)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"Ray: failed ({exc!r})")
    if args.quick:
        notes.append("ipyparallel: skipped (--quick)")
    elif importlib.util.find_spec("ipyparallel") is None:
        notes.append("ipyparallel: not installed (pip install '.[bench]'); skipped")
    else:
        try:
            cols["ipyparallel"] = bench_ipyparallel(n)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"ipyparallel: failed ({exc!r})")
    notes.append("peers with '-' have no such feature here (PPE has no actors) or were not run")
    names = list(cols)
    print(f"runtime benchmark ({'quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
          f"counts {n})")
    peers = [p for p in ("PPE(2)", "Ray") if p in cols]
    head = f"{'metric':<26}{'unit':>5}" + "".join(f"{c:>12}" for c in names) + \
        "".join(f"{'local/' + p.split('(')[0]:>11}" for p in peers) + "  target"
    print(head)
    print("-" * len(head))
    for key, label, unit, target in ROWS:
        vals = [cols[c].get(key) for c in names]
        loc = cols["local"].get(key)
        ratios = "".join(
            f"{(f'{loc / cols[p][key]:.2f}x' if loc and cols[p].get(key) else '-'):>11}"
            for p in peers)
        print(f"{label:<26}{unit:>5}" + "".join(f"{_fmt(key, unit, v):>12}" for v in vals)
              + ratios + f"  {target}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
