"""Simulator speed: tasks/s at 110% offered load, and decision cost vs cluster size.

``python -m benchmarks.sim_bench [--quick] [--tasks N] [--nodes N] [--policy NAME]``
prints a table. The target (issue 3): 1,000,000 tasks on 10,000 heterogeneous
nodes (CPU, V100/A100/H100 GPUs, TPU), best fit, metrics and trace on, in <= 20 s
on one core, under 2 GB; decision cost growing at most logarithmically with nodes.
"""

from __future__ import annotations

import argparse
import resource
import time

from runtime.resources import Resources
from simulator.cluster import bench_cluster
from simulator.engine import Simulation
from simulator.workloads.arrivals import JobMix
from simulator.workloads.base import Exp, Shape

__all__ = ["main", "overload_workload", "run_one"]


def overload_workload(nodes: int, n_tasks: int, load: float = 1.1,
                      mean: float = 100.0) -> JobMix:
    """A CPU/GPU/TPU job mix offering ``load`` x the capacity of ``bench_cluster(nodes)``."""
    cl = bench_cluster(nodes)
    tot: dict[str, float] = {}
    for s in cl.node_specs:
        for k, v in s.resources.items():
            tot[k] = tot.get(k, 0.0) + v * s.count
    lam_gpu = load * tot.get("GPU", 0.0) / mean
    lam_tpu = load * tot.get("TPU", 0.0) / mean
    lam_cpu = max(load * tot["CPU"] / mean - lam_gpu - lam_tpu, 1e-9)
    shapes = [Shape(Resources({"CPU": 1}), "cpu_job", Exp(mean), weight=lam_cpu),
              Shape(Resources({"CPU": 1, "GPU": 1}), "gpu_job", Exp(mean), weight=lam_gpu),
              Shape(Resources({"CPU": 1, "TPU": 1}), "tpu_job", Exp(mean), weight=lam_tpu)]
    return JobMix(n_tasks, lam_cpu + lam_gpu + lam_tpu, shapes,
                  tenants={"a": 1.0, "b": 1.0, "c": 1.0}, name="overload")


def run_one(nodes: int, n_tasks: int, policy: str = "best_fit") -> dict[str, float]:
    """Simulate ``n_tasks`` on ``nodes`` nodes at 110% load; wall time and rates."""
    wl = overload_workload(nodes, n_tasks)
    clock = time.process_time  # CPU time of this process: less noisy on a shared machine
    t0 = clock()
    sim = Simulation(bench_cluster(nodes), wl, policy=policy, seed=1, failures=False)
    t1 = clock()
    sim.run()
    t2 = clock()
    m = sim.metrics()
    t3 = clock()
    run_s = t2 - t1
    return {"nodes": nodes, "tasks": n_tasks, "setup_s": t1 - t0, "run_s": run_s,
            "metrics_s": t3 - t2, "tasks_per_s": n_tasks / run_s,
            "us_per_round": 1e6 * run_s / max(sim.policy_calls, 1),
            "rounds": sim.policy_calls, "events": len(sim.trace),
            "finished": m["finished"], "util_GPU": m.get("util_GPU", 0.0),
            "wait_mean": m["wait_mean"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def decision_cost(nodes: int, decisions: int = 5_000, policy: str = "best_fit",
                  fill: float = 0.9, seed: int = 0) -> dict[str, float]:
    """Microseconds per scheduling decision (policy + validation + allocate + a release)
    on ``bench_cluster(nodes)`` pre-filled to about ``fill`` of every node."""
    import random

    from runtime.cluster import TaskInfo
    from runtime.control import ClusterIndex
    from runtime.policies import get_policy

    rng = random.Random(seed)
    cl = bench_cluster(nodes)
    st = ClusterIndex()
    tid = 0
    for spec in cl.node_specs:
        for i in range(spec.count):
            n = st.add_node(f"{spec.name}-{i:06d}", spec, state="up")
            amount = {k: float(int(v * fill * rng.uniform(0.8, 1.0))) for k, v in
                      spec.resources.items()}
            filler = TaskInfo(tid, "filler", Resources(amount))
            st.allocate_vec(filler, n, n.group.reqvec(filler.request))
            tid += 1
    shapes = [Resources({"CPU": 1}), Resources({"CPU": 1, "GPU": 1}),
              Resources({"CPU": 1, "TPU": 1})]
    pol = get_policy(policy)
    running: list[TaskInfo] = []
    placed = 0
    clock = time.process_time
    t0 = clock()
    for _ in range(decisions):
        task = TaskInfo(tid, "job", rng.choice(shapes), kind="job")
        tid += 1
        for d in pol.schedule([task], st):
            n = st.record(d.node)
            st.allocate_vec(task, n, n.group.reqvec(task.request))
            running.append(task)
            placed += 1
        if running and rng.random() < 0.5:
            done = running.pop(rng.randrange(len(running)))
            st.release(done.id)
    dt = clock() - t0
    return {"nodes": nodes, "policy": policy, "decisions": decisions, "placed": placed,
            "us_per_decision": 1e6 * dt / decisions}


def _table(rows: list[dict[str, float]], cols: list[str]) -> str:
    def fmt(v: object) -> str:
        return f"{v:,.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
    cells = [[fmt(r[c]) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w[i]) for i, c in enumerate(cols))]
    lines += ["  ".join(x[i].rjust(w[i]) for i in range(len(cols))) for x in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sim_bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--policy", default="best_fit")
    ap.add_argument("--skip-scaling", action="store_true",
                    help="skip the decision-cost table")
    args = ap.parse_args(argv)
    n_tasks = args.tasks or (20_000 if args.quick else 1_000_000)
    nodes = args.nodes or (1_000 if args.quick else 10_000)
    cols = ["nodes", "tasks", "run_s", "tasks_per_s", "us_per_round", "rounds", "events",
            "finished", "util_GPU", "wait_mean", "peak_rss_mb"]
    print(f"main run: {n_tasks:,} tasks, {nodes:,} nodes, policy {args.policy}, 110% load, "
          f"trace + metrics on (peak_rss_mb is the process's peak so far)")
    rows = [run_one(nodes, n_tasks, args.policy)]
    if args.tasks is None and args.nodes is None:  # and a run long enough to queue up
        rows.append(run_one(500, 40_000, args.policy) if args.quick
                    else run_one(1_000, 300_000, args.policy))
    print(_table(rows, cols))
    if args.skip_scaling:
        return
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    per = 2_000 if args.quick else 10_000
    print(f"\ndecision cost vs nodes (cluster ~90% full, {per:,} decisions each):")
    rows = [decision_cost(n, per, p) for p in ("best_fit", "fifo", "spread") for n in sizes]
    print(_table(rows, ["policy", "nodes", "decisions", "placed", "us_per_decision"]))


if __name__ == "__main__":
    main()
