"""Overhead of ``%%remote`` over a bare ``runtime.get(f.remote())``, inside a real kernel.

Starts an IPython kernel (jupyter_client), connects the local backend there and
times, inside the kernel, (a) a bare round trip of a trivial task and (b) a
trivial ``%%remote`` cell (analysis, shipping, submit, wait, pull, display).
It also times whole execute requests from the client side, and ``%%px`` on one
ipyparallel engine when ipyparallel is installed. Prints a table; asserts nothing.

Run: ``python -m benchmarks.magics_bench [--quick] [--n N]``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_SETUP = """
%load_ext kernel_ext
%cluster connect --cpus 2
import time, statistics, json, runtime
@runtime.remote
def _bench_noop():
    return None
_ip = get_ipython()
def _bench(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out
def _bare():
    runtime.get(_bench_noop.remote())
def _cell():
    _ip.run_cell_magic("remote", "", "y = 1\\ny")
for _ in range(5):
    _bare(); _cell()
"""


def _start_kernel() -> tuple[Any, Any]:
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _execute(kc: Any, code: str, timeout: float = 120) -> tuple[str | None, float]:
    """Run ``code``; returns (text/plain result or None, client-side seconds until idle)."""
    t = time.perf_counter()
    msg_id = kc.execute(code)
    result = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "execute_result":
            result = msg["content"]["data"].get("text/plain")
        elif kind == "error":
            raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return result, time.perf_counter() - t
    raise TimeoutError(code)


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:8.3f}"


_PX_SETUP = """
import ipyparallel as ipp
_px_cluster = ipp.Cluster(n=1, log_level=40)
_px_client = _px_cluster.start_and_connect_sync()
_px_client[:].activate()          # registers %%px for the one engine
def _px():
    _ip.run_cell_magic("px", "--block", "y = 1\\ny")
for _ in range(5):
    _px()
"""


def _px_times(kc: Any, n: int) -> list[float] | None:
    """Median-ready times of a trivial ``%%px`` cell on one engine (None: not installed)."""
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        return None
    try:
        _execute(kc, _PX_SETUP, timeout=180)
        res, _ = _execute(kc, f"json.dumps(_bench(_px, {n}))")
        return json.loads(ast.literal_eval(res)) if res else None
    finally:
        try:
            _execute(kc, "_px_client.close(); _px_cluster.stop_cluster_sync()", timeout=60)
        except Exception as exc:  # noqa: BLE001 - report, keep the other figures
            print(f"(stopping the ipyparallel cluster failed: {exc})")


def main(argv: list[str] | None = None) -> None:
    """Print median times (ms) of a bare round trip and of a trivial ``%%remote`` cell."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.magics_bench")
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--n", type=int, default=None, help="repetitions per measurement")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    n = args.n or (20 if args.quick else 300)
    km, kc = _start_kernel()
    try:
        _execute(kc, _SETUP)
        res, _ = _execute(kc, f"json.dumps([_bench(_bare, {n}), _bench(_cell, {n})])")
        bare, cell = json.loads(ast.literal_eval(res)) if res else ([], [])
        client_bare = [_execute(kc, "runtime.get(_bench_noop.remote())")[1]
                       for _ in range(max(n // 5, 5))]
        client_cell = [_execute(kc, "%%remote\ny = 1\ny")[1] for _ in range(max(n // 5, 5))]
        _execute(kc, "%cluster disconnect")
        px = _px_times(kc, n)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    print(f"%%remote overhead on the local backend (median of {n}; ms)")
    print(f"{'measurement':<46}{'bare get':>10}{'%%remote':>10}{'overhead':>10}")
    over = statistics.median(cell) - statistics.median(bare)
    print(f"{'inside the kernel (trivial task / cell)':<46}{_ms(bare):>10}{_ms(cell):>10}"
          f"{over * 1e3:10.3f}")
    over_c = statistics.median(client_cell) - statistics.median(client_bare)
    print(f"{'client execute request until idle':<46}{_ms(client_bare):>10}"
          f"{_ms(client_cell):>10}{over_c * 1e3:10.3f}")
    print("target: a trivial %%remote cell under 3 ms median inside the kernel")
    if px is None:
        print("%%px on one ipyparallel engine: skipped (ipyparallel is not installed; "
              "pip install ipyparallel to compare)")
    else:
        ratio = statistics.median(cell) / statistics.median(px)
        print(f"{'in kernel: %%px --block, 1 ipyparallel engine':<46}{'':>10}{_ms(px):>10}")
        print(f"%%remote / %%px = {ratio:.2f} (target: at most 0.5)")


if __name__ == "__main__":
    main()
