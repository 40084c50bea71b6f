"""Scripted experiments: a grid of workloads x policies x autoscalers x seeds, in parallel.

``run_grid(...)`` runs every cell (one :class:`~simulator.engine.Simulation`
each), on the runtime's local backend when it is available and works, else on a
``concurrent.futures.ProcessPoolExecutor`` (``executor="serial"`` runs in this
process). It prints progress, and returns the rows; ``write_outputs`` writes
``results.csv``, ``summary.csv`` / ``summary.txt`` (mean and 95% confidence
interval across seeds), bar plots of the summary, and for one representative cell
of each policy per workload (its first autoscaler and seed, re-run here: a cell is
deterministic) a utilization-over-time plot and a Gantt chart, plus one JCT CDF per
workload with a curve per policy (:func:`write_run_plots`).
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from simulator.cluster import CLUSTERS

__all__ = ["Cell", "run_cell", "simulate_cell", "run_grid", "summarize", "format_table",
           "write_outputs", "write_run_plots", "SUMMARY_METRICS"]

#: Metrics summarised across seeds.
SUMMARY_METRICS = ("jct_mean", "jct_p95", "wait_mean", "makespan", "util_GPU", "cost",
                   "fairness", "slo_misses", "scale_ups")

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t95(df: int) -> float:
    if df <= 0:
        return math.nan
    best = max(k for k in _T95 if k <= df) if df < 30 else 30
    return _T95[best] if df <= 30 else 1.96


@dataclass(frozen=True)
class Cell:
    """One experiment cell: names (so it pickles) and a seed."""

    workload: str
    policy: str
    autoscaler: str
    seed: int
    cluster: str = "demo"
    scale: int = 1


def simulate_cell(cell: Cell | dict[str, Any]) -> Any:
    """Build and run one cell's :class:`~simulator.engine.Simulation` (returned, run)."""
    from simulator.engine import Simulation
    from simulator.workloads import get_workload

    c = Cell(**cell) if isinstance(cell, dict) else cell
    make = CLUSTERS.get(c.cluster)
    if make is None:
        raise ValueError(f"cluster: unknown cluster {c.cluster!r}; choose one of "
                         f"{', '.join(sorted(CLUSTERS))}")
    return Simulation(make(), get_workload(c.workload, c.scale), policy=c.policy,
                      autoscaler=c.autoscaler, seed=c.seed).run()


def run_cell(cell: Cell | dict[str, Any]) -> dict[str, Any]:
    """Run one cell and return its metrics plus the cell's fields and the run's wall time."""
    c = Cell(**cell) if isinstance(cell, dict) else cell
    t0 = time.perf_counter()
    m = simulate_cell(c).metrics(check=True)  # books and Little's law, on every cell
    m.update({"workload": c.workload, "cluster": c.cluster, "scale": c.scale,
              "wall_s": round(time.perf_counter() - t0, 3)})
    return m


def _cells(workloads: Sequence[str], policies: Sequence[str], autoscalers: Sequence[str],
           seeds: Sequence[int], cluster: str, scale: int) -> list[Cell]:
    for name, vals in (("workloads", workloads), ("policies", policies),
                       ("autoscalers", autoscalers), ("seeds", seeds)):
        if not vals:
            raise ValueError(f"run_grid: {name} must not be empty")
    from runtime.autoscaling import get_autoscaler
    from runtime.policies import get_policy
    from simulator.workloads import get_workload

    for p in policies:
        get_policy(p)  # fail now, naming the bad one
    for a in autoscalers:
        get_autoscaler(a)
    for w in workloads:
        get_workload(w, scale)
    if cluster not in CLUSTERS:
        raise ValueError(f"run_grid: unknown cluster {cluster!r}; choose one of "
                         f"{', '.join(sorted(CLUSTERS))}")
    return [Cell(w, p, a, s, cluster, scale)
            for w, p, a, s in itertools.product(workloads, policies, autoscalers, seeds)]


Executor = Literal["auto", "local", "process", "serial"]


def _run_local(cells: list[Cell], jobs: int, report: Callable[[Cell, dict], None]) -> list[dict]:
    """Run the cells as tasks on the runtime's local backend (raises if it is unusable)."""
    import runtime as rt

    own = not rt.is_initialized()
    if own:
        rt.init(num_cpus=jobs)
    try:
        fn = rt.remote(run_cell)
        refs = [fn.remote(asdict(c)) for c in cells]
        index = {id(r): i for i, r in enumerate(refs)}
        out: list[dict | None] = [None] * len(cells)
        left = list(refs)
        while left:
            done, left = rt.wait(left, num_returns=1)
            for r in done:
                i = index[id(r)]
                out[i] = rt.get(r)
                report(cells[i], out[i])  # type: ignore[arg-type]
        return out  # type: ignore[return-value]
    finally:
        if own:
            rt.shutdown()


def run_grid(workloads: Sequence[str], policies: Sequence[str], autoscalers: Sequence[str] = ("none",),
             seeds: Sequence[int] = (0, 1, 2), *, cluster: str = "demo", scale: int = 1,
             jobs: int | None = None, executor: Executor = "auto",
             progress: bool = True) -> list[dict[str, Any]]:
    """Run the grid; rows come back in grid order whatever the completion order."""
    if executor not in ("auto", "local", "process", "serial"):
        raise ValueError(f"run_grid: executor must be 'auto', 'local', 'process' or 'serial', "
                         f"got {executor!r}")
    cells = _cells(workloads, policies, autoscalers, seeds, cluster, scale)
    jobs = jobs or 2
    done = 0
    t0 = time.perf_counter()

    def report(c: Cell, m: dict) -> None:
        nonlocal done
        done += 1
        if progress:
            print(f"[{done}/{len(cells)}] {c.workload} {c.policy} {c.autoscaler} seed={c.seed}: "
                  f"jct_mean={m.get('jct_mean', math.nan):.1f} ({time.perf_counter() - t0:.1f}s)",
                  file=sys.stderr, flush=True)

    if executor in ("auto", "local"):
        try:
            import importlib.util

            if importlib.util.find_spec("runtime.backends.local") is None:
                raise ImportError("runtime.backends.local is not there")
            return _run_local(cells, jobs, report)
        except Exception as exc:
            if executor == "local":
                raise
            if progress:
                print(f"(local backend unavailable: {type(exc).__name__}: {exc}; "
                      f"using a process pool)", file=sys.stderr)
            done = 0
    if executor == "serial" or jobs == 1:
        rows = []
        for c in cells:
            rows.append(run_cell(c))
            report(c, rows[-1])
        return rows
    results: list[dict | None] = [None] * len(cells)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futs = {pool.submit(run_cell, c): i for i, c in enumerate(cells)}
        for f in as_completed(futs):
            i = futs[f]
            results[i] = f.result()
            report(cells[i], results[i])  # type: ignore[arg-type]
    return results  # type: ignore[return-value]


def summarize(rows: Sequence[dict[str, Any]],
              metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """Mean and 95% CI half-width across seeds for each (workload, policy, autoscaler)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["policy"], r["autoscaler"]), []).append(r)
    out = []
    for (w, p, a), rs in groups.items():
        s: dict[str, Any] = {"workload": w, "policy": p, "autoscaler": a, "seeds": len(rs)}
        for m in metrics:
            vals = [float(r[m]) for r in rs if m in r and r[m] is not None
                    and not math.isnan(float(r[m]))]
            n = len(vals)
            mean = sum(vals) / n if n else math.nan
            if n > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
                hw = _t95(n - 1) * sd / math.sqrt(n)
            else:
                hw = math.nan
            s[m] = mean
            s[f"{m}_ci95"] = hw
        out.append(s)
    return out


def format_table(summary: Sequence[dict[str, Any]],
                 metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """A fixed-width text table: ``mean ± CI`` per metric."""
    head = ["workload", "policy", "autoscaler", *metrics]
    rows = []
    for s in summary:
        cells = [s["workload"], s["policy"], s["autoscaler"]]
        for m in metrics:
            v, hw = s.get(m, math.nan), s.get(f"{m}_ci95", math.nan)
            cells.append(f"{v:.4g}" + ("" if math.isnan(hw) else f" ±{hw:.2g}"))
        rows.append(cells)
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def write_run_plots(rows: Sequence[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """Per workload: re-run the first row (autoscaler, seed) of each policy and write
    ``<workload>_<policy>_utilization.png`` and ``..._gantt.png``, and one
    ``<workload>_jct_cdf.png`` with a curve per policy; returns the paths by key."""
    from simulator.plots import gantt, jct_cdf, save, utilization_plot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    picked: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        per = picked.setdefault(str(r["workload"]), {})
        if r["policy"] not in per:
            per[str(r["policy"])] = r
    paths: dict[str, Path] = {}
    for w, per in picked.items():
        sims = {}
        for p, r in per.items():
            cell = Cell(w, p, str(r["autoscaler"]), int(r["seed"]), str(r.get("cluster", "demo")),
                        int(r.get("scale", 1)))
            sim = simulate_cell(cell)
            if r.get("digest") and sim.digest() != r["digest"]:
                print(f"warning: the re-run of {cell} gave another trace than the grid's",
                      file=sys.stderr)
            sims[f"{p}/{cell.autoscaler} seed {cell.seed}"] = sim
            stem = f"{_safe(w)}_{_safe(p)}"
            paths[f"utilization_{w}_{p}"] = save(utilization_plot(sim),
                                                 out / f"{stem}_utilization.png")
            paths[f"gantt_{w}_{p}"] = save(gantt(sim), out / f"{stem}_gantt.png")
        paths[f"jct_cdf_{w}"] = save(jct_cdf(sims), out / f"{_safe(w)}_jct_cdf.png")
    return paths


def write_outputs(rows: Sequence[dict[str, Any]], out: str | Path,
                  metrics: Sequence[str] = SUMMARY_METRICS, plots: bool = True) -> dict[str, Path]:
    """Write results.csv, summary.csv, summary.txt and (``plots``) one bar plot per metric
    plus the per-run plots of :func:`write_run_plots`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = ["workload", "policy", "autoscaler", "seed", "cluster"]
    cols = first + sorted({k for r in rows for k in r} - set(first))
    paths = {"results": out / "results.csv", "summary": out / "summary.csv",
             "table": out / "summary.txt"}
    with paths["results"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    summary = summarize(rows, metrics)
    scols = list(summary[0]) if summary else []
    with paths["summary"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=scols)
        w.writeheader()
        w.writerows(summary)
    paths["table"].write_text(format_table(summary, metrics) + "\n")
    if plots and summary:
        from simulator.plots import bar_with_ci, save

        for m in ("jct_mean", "cost", "util_GPU"):
            if m not in metrics:
                continue
            labels = [f"{s['workload']}/{s['policy']}/{s['autoscaler']}" for s in summary]
            fig = bar_with_ci(labels, [s[m] for s in summary],
                              [0.0 if math.isnan(s[f"{m}_ci95"]) else s[f"{m}_ci95"]
                               for s in summary], m, f"{m} (mean, 95% CI across seeds)")
            paths[f"plot_{m}"] = save(fig, out / f"{m}.png")
        paths.update(write_run_plots(rows, out))
    return paths
