"""Plots of runs with matplotlib's object API (Agg canvas; no pyplot state, works headless).

Each function returns a :class:`matplotlib.figure.Figure`; :func:`to_png` gives
its PNG bytes (``IPython.display.Image(to_png(fig))`` shows it in a notebook).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simulator.metrics import utilization_series

if TYPE_CHECKING:
    from simulator.engine import Simulation

__all__ = ["utilization_plot", "gantt", "jct_cdf", "bar_with_ci", "to_png", "save"]


def _fig(w: float = 8.0, h: float = 3.5) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def utilization_plot(sim: Simulation, resources: Sequence[str] | None = None,
                     bins: int = 200) -> Figure:
    """Busy fraction of each resource kind over virtual time."""
    if resources is None:
        names = {n for g in sim.state.group_records() for n in g.names}
        resources = [r for r in ("CPU", "GPU", "TPU", "QPU") if r in names]
    fig = _fig()
    ax = fig.add_subplot()
    for r in resources:
        t, u = utilization_series(sim, r, bins)
        ax.plot(t, u, label=r)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("utilization")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"utilization: {sim.workload_name}, policy {sim.policy_name}")
    ax.legend(loc="upper right")
    return fig


def gantt(sim: Simulation, max_nodes: int = 25, max_bars: int = 5000) -> Figure:
    """Task attempts per node over time (first ``max_nodes`` nodes by id); failures in red."""
    tr = sim.trace
    nodes = sorted(range(len(tr.node_ids)), key=lambda i: tr.node_ids[i])[:max_nodes]
    row = {n: i for i, n in enumerate(nodes)}
    fig = _fig(9.0, max(2.5, 0.28 * len(nodes) + 1))
    ax = fig.add_subplot()
    colors = {"finished": "tab:blue", "failed": "tab:red", "retried": "tab:orange",
              "preempted": "tab:purple", "running": "tab:gray", "cancelled": "tab:gray"}
    bars: dict[str, list[tuple[float, float, int]]] = {}
    for _task, n, s, e, outcome in tr.attempts()[:max_bars * 4]:
        if n in row:
            bars.setdefault(outcome, []).append((s, max(e - s, 1e-9), row[n]))
    for outcome, items in sorted(bars.items()):
        items = items[:max_bars]
        ax.barh([r for _, _, r in items], [d for _, d, _ in items], left=[s for s, _, _ in items],
                height=0.8, color=colors.get(outcome, "tab:gray"), alpha=0.6, label=outcome)
    ax.set_yticks(range(len(nodes)), [tr.node_ids[n] for n in nodes], fontsize=7)
    ax.set_xlabel("virtual time (s)")
    ax.set_title("Gantt chart (task attempts per node)")
    if bars:
        ax.legend(loc="upper right", fontsize=7)
    return fig


def jct_cdf(runs: Mapping[str, Simulation] | Sequence[Simulation]) -> Figure:
    """CDF of job completion times, one curve per run (labelled by policy unless a mapping)."""
    if not isinstance(runs, Mapping):
        runs = {f"{s.policy_name}/{s.autoscaler_name}": s for s in runs}
    fig = _fig()
    ax = fig.add_subplot()
    for label, sim in runs.items():
        ok = np.asarray(sim.rec_ok, dtype=bool)
        jobs = np.asarray(sim.rec_job)[ok]
        sub = np.asarray(sim.rec_submit)[ok]
        end = np.asarray(sim.rec_end)[ok]
        if not jobs.size:
            continue
        u, inv = np.unique(jobs, return_inverse=True)
        first = np.full(u.size, np.inf)
        last = np.full(u.size, -np.inf)
        np.minimum.at(first, inv, sub)
        np.maximum.at(last, inv, end)
        jct = np.sort(last - first)
        ax.plot(jct, np.arange(1, jct.size + 1) / jct.size, label=label)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("job completion time (s)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("JCT CDF")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def bar_with_ci(labels: Sequence[str], means: Sequence[float], halfwidths: Sequence[float],
                ylabel: str, title: str = "") -> Figure:
    """Bars with confidence-interval whiskers (experiment summaries)."""
    fig = _fig(max(5.0, 0.6 * len(labels) + 2), 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=halfwidths, capsize=3, color="tab:blue", alpha=0.7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure to ``path`` (format from the suffix); returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
