"""Command line: ``python -m simulator {demo,run,experiment,synth-trace,replay,list}``.

``python -m simulator demo`` is the main-job demo: a policy comparison on a
heterogeneous GPU/TPU/QPU cluster, printed as a table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "demo"]

DEMO_POLICIES = ("fifo", "best_fit", "spread", "hetero", "hetero_cost", "drf", "backfill",
                 "priority")
DEMO_COLUMNS = (("policy", "policy", "{}"), ("finished", "done", "{:d}"),
                ("jct_mean", "JCT mean s", "{:.0f}"), ("jct_p95", "JCT p95 s", "{:.0f}"),
                ("wait_mean", "wait s", "{:.0f}"), ("makespan", "makespan s", "{:.0f}"),
                ("util[A100]", "A100", "{:.0%}"), ("util[H100]", "H100", "{:.0%}"),
                ("util[V100]", "V100", "{:.0%}"), ("util_TPU", "TPU", "{:.0%}"),
                ("util_QPU", "QPU", "{:.0%}"), ("cost", "cost $", "{:.0f}"),
                ("scale_ups", "ups", "{:d}"), ("fairness", "Jain", "{:.2f}"),
                ("slo_misses", "SLO miss", "{:d}"))


def _fmt(v: Any, f: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows of metrics as a fixed-width text table."""
    cells = [[_fmt(r.get(k), f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    out = ["  ".join(h.rjust(w[i]) for i, h in enumerate(heads))]
    out += ["  ".join(c[i].rjust(w[i]) for i in range(len(heads))) for c in cells]
    return "\n".join(out)


def demo(seed: int = 1, scale: int = 3, policies: Sequence[str] | None = None,
         autoscaler: str = "demand", out=sys.stdout) -> list[dict[str, Any]]:
    """Compare policies on the heterogeneous demo cluster and workload; print and return rows."""
    from runtime.policies import POLICIES
    from simulator.cluster import demo_cluster
    from simulator.engine import Simulation
    from simulator.workloads import get_workload

    names = [p for p in (policies or DEMO_POLICIES) if p in POLICIES or policies]
    cluster = demo_cluster(scale, autoscale=autoscaler != "none")
    wl = get_workload("hetero_demo", scale)
    print(f"cluster {cluster.name}: " + ", ".join(
        f"{s.count}x {s.name}" + (f" ({s.accelerators}x {s.accelerator.model})"
                                  if s.accelerator else f" ({s.cpus:g} CPU)")
        for s in cluster.node_specs), file=out)
    print(f"workload {wl.name} (ML jobs on GPU/TPU/CPU with SLOs, many-models DAGs, QPU "
          f"circuits; 3+ tenants), autoscaler {autoscaler}, seed {seed}\n", file=out)
    rows = []
    t0 = time.perf_counter()
    for p in names:
        sim = Simulation(cluster, wl, policy=p, autoscaler=autoscaler, seed=seed).run()
        rows.append(sim.metrics(check=True))
    print(table(rows, DEMO_COLUMNS), file=out)
    print(f"\n{len(rows)} simulations of {rows[0]['tasks']} tasks each in "
          f"{time.perf_counter() - t0:.1f} s wall time (virtual time above)", file=out)
    return rows


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


#: ``replay --format`` choices.
TRACE_FORMATS = ("native", "philly", "alibaba", "philly-csv", "alibaba-csv")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cluster", default=None, help="a preset (see `list`; default demo)")
    g.add_argument("--cluster-file", type=Path, default=None,
                   help="a cluster from a JSON or TOML file (docs/simulator.md)")
    g.add_argument("--machine-spec", type=Path, default=None,
                   help="Alibaba's pai_machine_spec table as the cluster (see --machine-scale)")
    p.add_argument("--machine-scale", type=float, default=1.0,
                   help="with --machine-spec: multiply the machine counts (at least 1 each)")


def _cluster(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Any:
    """The cluster the arguments name: a preset, a cluster file or a PAI machine table."""
    if args.cluster_file is not None:
        from simulator.cluster_file import load_cluster

        return load_cluster(args.cluster_file)
    if args.machine_spec is not None:
        from simulator.workloads.alibaba import machine_spec_cluster

        return machine_spec_cluster(args.machine_spec, scale=args.machine_scale)
    from simulator.cluster import CLUSTERS

    name = args.cluster or "demo"
    if name not in CLUSTERS:
        ap.error(f"--cluster {name!r}: choose one of {', '.join(sorted(CLUSTERS))}, or give "
                 f"--cluster-file")
    return CLUSTERS[name]()


def _trace(args: argparse.Namespace, cluster: Any) -> Any:
    """The replay workload of ``replay``'s arguments; prints what cleaning kept and dropped."""
    from simulator.cluster_file import cluster_devices
    from simulator.workloads import traces

    only = {"--statuses": (args.statuses, ("philly", "alibaba")),
            "--gpu-type": (args.gpu_type, ("philly",)),
            "--job-table": (args.job_table, ("alibaba",)),
            "--group-tag-table": (args.group_tag_table, ("alibaba",))}
    for opt, (value, formats) in only.items():
        if value is not None and args.format not in formats:
            raise ValueError(f"{opt} applies to --format {' or '.join(formats)}, not "
                             f"{args.format!r}")
    if args.format in ("native", "philly-csv", "alibaba-csv"):
        fmt = {"native": traces.NATIVE, "philly-csv": traces.PHILLY,
               "alibaba-csv": traces.ALIBABA_PAI}[args.format]
        wl: Any = traces.TraceReplay(args.path, fmt, time_scale=args.time_scale,
                                     limit=args.limit)
        return wl
    common = dict(gangs=args.gangs, statuses=args.statuses, time_scale=args.time_scale,
                  limit=args.limit, devices=cluster_devices(cluster))
    if args.format == "philly":
        from simulator.workloads.philly import PhillyTrace

        wl = PhillyTrace(args.path, tenant=args.tenant, gpu_type=args.gpu_type, **common)
    else:
        from simulator.workloads.alibaba import AlibabaPAI

        wl = AlibabaPAI(args.path, job_table=args.job_table,
                        group_tag_table=args.group_tag_table, gpu=args.gpu, **common)
    stats = wl.stats
    print(f"trace {wl.name}:\n{stats.summary()}")
    gangs = stats.get("gang jobs", 0) or stats.get("gang tasks (inst_num > 1)", 0)
    if gangs and args.gangs == "split":
        print(f"note: {gangs} gang job(s) split into one task per member (an approximation: "
              f"members start independently; --gangs keep needs gang placement)")
    return wl


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m simulator``."""
    ap = argparse.ArgumentParser(prog="python -m simulator",
                                 description="Simulate heterogeneous clusters reproducibly.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="compare policies on the heterogeneous demo cluster")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--scale", type=int, default=3)
    d.add_argument("--policies", type=_csv, default=None)
    d.add_argument("--autoscaler", default="demand")

    r = sub.add_parser("run", help="one simulation: metrics, optional trace and plots")
    _cluster_args(r)
    r.add_argument("--workload", default="hetero_demo")
    r.add_argument("--scale", type=int, default=1)
    r.add_argument("--policy", default="best_fit")
    r.add_argument("--autoscaler", default="none")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--until", type=float, default=None)
    r.add_argument("--trace", type=Path, default=None, help="write Chrome/Perfetto JSON here")
    r.add_argument("--plots", type=Path, default=None, help="write PNG plots into this folder")

    e = sub.add_parser("experiment", help="a grid of workloads x policies x autoscalers x seeds")
    e.add_argument("--workloads", type=_csv, default=["hetero_demo"])
    e.add_argument("--policies", type=_csv, default=["fifo", "best_fit", "hetero"])
    e.add_argument("--autoscalers", type=_csv, default=["none"])
    e.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0, 1, 2])
    e.add_argument("--cluster", default="demo")
    e.add_argument("--scale", type=int, default=1)
    e.add_argument("--jobs", type=int, default=2)
    e.add_argument("--executor", default="auto", choices=["auto", "local", "process", "serial"])
    e.add_argument("--out", type=Path, default=Path("sim-results"))
    e.add_argument("--no-plots", action="store_true")

    s = sub.add_parser("synth-trace", help="write a small synthetic trace CSV")
    s.add_argument("path", type=Path)
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)

    rp = sub.add_parser("replay", help="replay a trace: our CSV, Philly's job log or Alibaba "
                        "PAI's task table, as published (plain, .gz or .tar.gz)")
    rp.add_argument("path", type=Path, help="native/*-csv: a CSV; philly: cluster_job_log or "
                    "trace-data.tar.gz; alibaba: pai_task_table(.csv|.tar.gz)")
    rp.add_argument("--format", default="native", choices=list(TRACE_FORMATS),
                    help="philly, alibaba: the published formats; philly-csv, alibaba-csv: "
                    "flattened CSV exports (column mappings)")
    _cluster_args(rp)
    rp.add_argument("--policy", default="best_fit")
    rp.add_argument("--autoscaler", default="none")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--until", type=float, default=None)
    rp.add_argument("--time-scale", type=float, default=1.0)
    rp.add_argument("--gangs", default="split", choices=["split", "keep"],
                    help="multi-node jobs: split = one task per member (default; an "
                    "approximation until the engine places gangs), keep = gang tasks")
    rp.add_argument("--statuses", type=_csv, default=None,
                    help="keep only jobs that ended so (philly: Pass,Killed,Failed; alibaba: "
                    "Terminated,Failed,Running,Waiting); default all")
    rp.add_argument("--limit", type=int, default=None, help="the first N jobs/tasks only")
    rp.add_argument("--job-table", type=Path, default=None,
                    help="alibaba: pai_job_table (users, job status, submit times)")
    rp.add_argument("--group-tag-table", type=Path, default=None,
                    help="alibaba: pai_group_tag_table (requested GPU model, for --gpu spec)")
    rp.add_argument("--gpu", default="assigned", choices=["assigned", "spec", "none"],
                    help="alibaba: pin tasks to the GPU model they ran on, asked for, or none")
    rp.add_argument("--gpu-type", default=None,
                    help="philly: pin every job to this device model (run times as measured "
                    "on it)")
    rp.add_argument("--tenant", default="vc", choices=["vc", "user"],
                    help="philly: tenant = virtual cluster or user")

    sub.add_parser("list", help="list policies, autoscalers, workloads and clusters")
    args = ap.parse_args(argv)

    if args.cmd == "demo":
        demo(args.seed, args.scale, args.policies, args.autoscaler)
        return 0
    if args.cmd == "list":
        from runtime.autoscaling import AUTOSCALERS
        from runtime.policies import POLICIES
        from simulator.cluster import CLUSTERS
        from simulator.workloads import WORKLOADS

        for title, reg in (("policies", POLICIES), ("autoscalers", AUTOSCALERS),
                           ("workloads", WORKLOADS), ("clusters", CLUSTERS)):
            print(f"{title}: {', '.join(sorted(reg))}")
        return 0
    if args.cmd == "synth-trace":
        from simulator.workloads.traces import write_synthetic_trace

        print(write_synthetic_trace(args.path, args.n, args.seed))
        return 0
    if args.cmd in ("run", "replay"):
        from simulator.engine import Simulation

        try:
            cluster = _cluster(args, ap)
            if args.cmd == "run":
                from simulator.workloads import get_workload

                wl = get_workload(args.workload, args.scale)
            else:
                wl = _trace(args, cluster)
            sim = Simulation(cluster, wl, policy=args.policy, autoscaler=args.autoscaler,
                             seed=args.seed)
            sim.run(args.until)
        except (ValueError, OSError, NotImplementedError) as e:
            print(f"python -m simulator {args.cmd}: error: {e}", file=sys.stderr)
            return 2
        m = sim.metrics(check=True)
        for k, v in m.items():
            print(f"{k:>14}: {v:.6g}" if isinstance(v, float) else f"{k:>14}: {v}")
        if getattr(args, "trace", None):
            sim.trace.to_chrome(args.trace)
            print(f"trace written to {args.trace} (open in https://ui.perfetto.dev)")
        if getattr(args, "plots", None):
            from simulator import plots

            args.plots.mkdir(parents=True, exist_ok=True)
            plots.save(plots.utilization_plot(sim), args.plots / "utilization.png")
            plots.save(plots.gantt(sim), args.plots / "gantt.png")
            plots.save(plots.jct_cdf([sim]), args.plots / "jct_cdf.png")
            print(f"plots written to {args.plots}")
        return 0
    if args.cmd == "experiment":
        from simulator.experiments import format_table, run_grid, summarize, write_outputs

        rows = run_grid(args.workloads, args.policies, args.autoscalers, args.seeds,
                        cluster=args.cluster, scale=args.scale, jobs=args.jobs,
                        executor=args.executor)
        paths = write_outputs(rows, args.out, plots=not args.no_plots)
        print(format_table(summarize(rows)))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
