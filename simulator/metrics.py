"""Metrics of a finished run, computed from the engine's records with numpy.

``compute(sim)`` returns a flat dict (one CSV row in experiments):
makespan; job completion time (JCT: a job's last end - its first submit) mean /
p50 / p95 / p99; queueing delay (first start - ready); time-weighted
utilization per resource kind (``util_GPU``) and per device model
(``util[A100]``) = resource-seconds used / resource-seconds available while nodes
were up; cost (node-hours x price, booting included); scale-ups/downs; retries
and preemptions; Jain's fairness index across tenants of their mean slowdown
(JCT / run time; 1.0 = every tenant slowed equally); SLO misses (tasks that ended
after submit + deadline, or failed with a deadline).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from simulator.engine import Simulation

__all__ = ["compute", "jain", "tenant_stats", "in_system_series", "utilization_series",
           "summary_columns", "check_invariants", "InvariantError"]

#: The columns the summary tables show, in order.
summary_columns = ("policy", "autoscaler", "tasks", "finished", "failed", "makespan", "jct_mean",
                   "jct_p50", "jct_p95", "jct_p99", "wait_mean", "util_CPU", "util_GPU",
                   "util_TPU", "util_QPU", "cost", "scale_ups", "scale_downs", "fairness",
                   "slo_misses")


def jain(values: Any) -> float:
    """Jain's fairness index of ``values``: (sum x)^2 / (n * sum x^2); 1.0 for no or equal values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0 or not np.any(x):
        return 1.0
    return float(x.sum() ** 2 / (x.size * (x * x).sum()))


def _q(a: np.ndarray, p: float) -> float:
    return float(np.percentile(a, p)) if a.size else math.nan


def _arrays(sim: Simulation) -> dict[str, np.ndarray]:
    return {
        "job": np.frombuffer(sim.rec_job, dtype=np.int64) if len(sim.rec_job) else np.zeros(0, int),
        "tenant": np.asarray(sim.rec_tenant, dtype=np.int64),
        "submit": np.asarray(sim.rec_submit, dtype=float),
        "ready": np.asarray(sim.rec_ready, dtype=float),
        "start": np.asarray(sim.rec_start, dtype=float),
        "end": np.asarray(sim.rec_end, dtype=float),
        "service": np.asarray(sim.rec_service, dtype=float),
        "deadline": np.asarray(sim.rec_deadline, dtype=float),
        "ok": np.asarray(sim.rec_ok, dtype=bool),
    }


def tenant_stats(sim: Simulation) -> dict[str, dict[str, float]]:
    """Per tenant: tasks, finished, mean slowdown and resource-free mean wait."""
    a = _arrays(sim)
    out: dict[str, dict[str, float]] = {}
    ok = a["ok"]
    slow = np.where(ok & (a["service"] > 0), (a["end"] - a["ready"]) / np.maximum(a["service"], 1e-12), np.nan)
    for i, name in enumerate(sim.tenants):
        m = a["tenant"] == i
        s = slow[m & ok]
        s = s[~np.isnan(s)]
        w = (a["start"] - a["ready"])[m & ok]
        out[name] = {"tasks": float(m.sum()), "finished": float((m & ok).sum()),
                     "slowdown": float(s.mean()) if s.size else math.nan,
                     "wait_mean": float(w.mean()) if w.size else math.nan}
    return out


def compute(sim: Simulation) -> dict[str, Any]:
    """Every metric of the run as a flat dict."""
    a = _arrays(sim)
    ok = a["ok"]
    out: dict[str, Any] = {
        "policy": sim.policy_name, "autoscaler": sim.autoscaler_name,
        "workload": sim.workload_name, "seed": sim.seed,
        "tasks": int(sim._seen), "finished": int(ok.sum()), "failed": int((~ok).sum()),
        "unfinished": int(sim.in_system), "makespan": float(sim.end_time),
    }
    # jobs: JCT over jobs whose every task finished
    if a["job"].size:
        jobs, inv = np.unique(a["job"], return_inverse=True)
        first = np.full(jobs.size, np.inf)
        last = np.full(jobs.size, -np.inf)
        good = np.ones(jobs.size, dtype=bool)
        np.minimum.at(first, inv, a["submit"])
        np.maximum.at(last, inv, a["end"])
        np.logical_and.at(good, inv, ok)
        jct = (last - first)[good]
    else:
        jct = np.zeros(0)
    out.update({"jobs": int(jct.size), "jct_mean": float(jct.mean()) if jct.size else math.nan,
                "jct_p50": _q(jct, 50), "jct_p95": _q(jct, 95), "jct_p99": _q(jct, 99)})
    wait = (a["start"] - a["ready"])[ok]
    sojourn = (a["end"] - a["submit"])[ok]
    out.update({"wait_mean": float(wait.mean()) if wait.size else math.nan,
                "wait_p95": _q(wait, 95),
                "task_time_mean": float(sojourn.mean()) if sojourn.size else math.nan,
                "throughput": float(ok.sum() / sim.end_time) if sim.end_time > 0 else math.nan})
    # utilization
    busy: dict[str, float] = {}
    cap: dict[str, float] = {}
    mbusy: dict[str, float] = {}
    mcap: dict[str, float] = {}
    for g in sim.state.group_records():
        for i, name in enumerate(g.names):
            if name == "memory":
                continue
            busy[name] = busy.get(name, 0.0) + g.busy[i]
            cap[name] = cap.get(name, 0.0) + g.total[i] * g.uptime
            model = g.model_of[i]
            mbusy[model] = mbusy.get(model, 0.0) + g.busy[i]
            mcap[model] = mcap.get(model, 0.0) + g.total[i] * g.uptime
    for name in sorted(cap):
        out[f"util_{name}"] = busy[name] / cap[name] if cap[name] > 0 else math.nan
    for model in sorted(mcap):
        out[f"util[{model}]"] = mbusy[model] / mcap[model] if mcap[model] > 0 else math.nan
    out.update({"cost": float(sim.cost), "scale_ups": sim.scale_ups,
                "scale_downs": sim.scale_downs, "retries": sim.retries,
                "preemptions": sim.preemptions, "policy_calls": sim.policy_calls})
    ts = tenant_stats(sim)
    slows = [v["slowdown"] for v in ts.values() if not math.isnan(v["slowdown"])]
    out["tenants"] = len(ts)
    out["fairness"] = jain(slows)
    late = (a["end"] - a["submit"]) > a["deadline"]
    missed = (ok & late) | (~ok & np.isfinite(a["deadline"]))
    out["slo_tasks"] = int(np.isfinite(a["deadline"]).sum())
    out["slo_misses"] = int(missed.sum())
    out["digest"] = sim.trace.digest() if len(sim.trace) else ""
    return out


class InvariantError(AssertionError):
    """A finished run's records contradict each other (a bug in the engine or a plug-in)."""


def check_invariants(sim: Simulation, rel: float = 1e-9) -> dict[str, float]:
    """Check a run's books; return Little's-law figures ``{"L", "lambda", "W", "T"}``.

    Checks, raising :class:`InvariantError` naming the first broken one: counts add
    up (finished + failed + unfinished = tasks); each record has submit <= ready <=
    start <= end and a run time within [0, end - start]; the number in the system
    never goes negative; utilizations lie in [0, 1]; and for a completed run
    (``sim.done``) the system ends empty, every node's capacity is back, and
    Little's law holds: L (time-average number in system, from the step function)
    = lambda (arrivals / T) x W (mean time in system), within ``rel``.
    """
    def fail(what: str) -> None:
        raise InvariantError(f"simulation {sim.workload_name!r} policy {sim.policy_name!r} "
                             f"seed {sim.seed}: {what}")

    a = _arrays(sim)
    n = a["submit"].size
    ok = a["ok"]
    if n + sim.in_system != sim._seen:
        fail(f"{n} tasks left + {sim.in_system} in the system != {sim._seen} submitted")
    eps = 1e-9 * max(1.0, float(sim.end_time))
    for lo, hi in (("submit", "ready"), ("ready", "start"), ("start", "end")):
        bad = np.flatnonzero(a[lo] > a[hi] + eps)
        if bad.size:
            i = int(bad[0])
            fail(f"task {sim.rec_id[i]} has {lo} {a[lo][i]:g} after {hi} {a[hi][i]:g}")
    run = a["end"] - a["start"]
    bad = np.flatnonzero(ok & ((a["service"] < -eps) | (a["service"] > run + eps)))
    if bad.size:
        i = int(bad[0])
        fail(f"task {sim.rec_id[i]} ran {a['service'][i]:g} s within {run[i]:g} s of start..end")
    t, count = in_system_series(sim)
    if count.size and count.min() < 0:
        fail(f"the number in the system went negative ({count.min():g})")
    for g in sim.state.group_records():
        for i, name in enumerate(g.names):
            cap = g.total[i] * g.uptime
            if g.busy[i] < -eps or (cap > 0 and g.busy[i] > cap * (1 + 1e-9) + eps) or \
                    (cap == 0 and g.busy[i] > eps):
                fail(f"node type {g.spec.name!r}: {name} busy {g.busy[i]:g} resource-seconds "
                     f"of {cap:g} available")
    T = float(sim.end_time)
    out = {"T": T, "L": math.nan, "lambda": math.nan, "W": math.nan}
    if not sim.done:
        return out
    if sim.in_system or (count.size and count[-1] != 0):
        fail(f"the run is done but {sim.in_system} tasks are still in the system")
    for node in sim.state.records().values():
        if node.tasks or any(abs(f - t) > 1e-9 * max(1.0, abs(t))
                             for f, t in zip(node.free, node.group.total, strict=True)):
            fail(f"node {node.id} still holds tasks {sorted(node.tasks)} or capacity "
                 f"(free {tuple(node.free)} of {tuple(node.group.total)}) after the run")
    if n == 0 or T <= 0:
        return out
    L = float(np.sum(count[:-1] * np.diff(t))) / T
    lam = n / T
    W = float((a["end"] - a["submit"]).mean())
    out.update({"L": L, "lambda": lam, "W": W})
    if not math.isclose(L, lam * W, rel_tol=rel, abs_tol=1e-12):
        fail(f"Little's law broken: L = {L!r} but lambda x W = {lam * W!r}")
    return out


def in_system_series(sim: Simulation) -> tuple[np.ndarray, np.ndarray]:
    """Step function of the number of tasks in the system: ``(times, counts)`` (for Little's law)."""
    a = _arrays(sim)
    t = np.concatenate([a["submit"], a["end"]])
    d = np.concatenate([np.ones(a["submit"].size), -np.ones(a["end"].size)])
    order = np.lexsort((-d, t))
    return t[order], np.cumsum(d[order])


def utilization_series(sim: Simulation, resource: str = "GPU",
                       bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Busy fraction of ``resource`` over time (from the trace), in ``bins`` equal slices."""
    tr = sim.trace
    metas = {}
    for i in range(len(tr)):
        if tr.kind[i] == 0:
            metas[tr.task[i]] = dict(tr.metas[tr.aux[i]][3]).get(resource, 0.0)
    end = max(sim.end_time, 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    used = np.zeros(bins)
    for task, _node, s, e, _o in tr.attempts():
        amt = metas.get(task, 0.0)
        if amt <= 0 or e <= s:
            continue
        lo = np.clip(edges[:-1], s, e)
        hi = np.clip(edges[1:], s, e)
        used += amt * (hi - lo)
    cap = np.zeros(bins)
    for s, e, amt in _alive_intervals(sim, resource, end):
        lo = np.clip(edges[:-1], s, e)
        hi = np.clip(edges[1:], s, e)
        cap += amt * (hi - lo)
    return (edges[:-1] + edges[1:]) / 2, np.divide(used, cap, out=np.zeros(bins), where=cap > 0)


def _alive_intervals(sim: Simulation, resource: str,
                     end: float) -> list[tuple[float, float, float]]:
    """``(start, end, amount of resource)`` while each node was up or draining (from the trace)."""
    import json

    from simulator.trace import K

    tr = sim.trace
    total: dict[int, float] = {}
    since: dict[int, float] = {}
    out = []
    for i in range(len(tr)):
        k = tr.kind[i]
        if k not in (K.NODE_ADDED, K.NODE_STATE, K.NODE_REMOVED):
            continue
        n, t = tr.node[i], tr.time[i]
        data = json.loads(tr.notes[tr.aux[i]])
        if k == K.NODE_ADDED:
            total[n] = float(data["total"].get(resource, 0.0))
            state = data["state"]
        elif k == K.NODE_STATE:
            state = data["state"]
        else:
            state = "down"
        alive = state in ("up", "draining")
        if alive and n not in since:
            since[n] = t
        elif not alive and n in since:
            out.append((since.pop(n), t, total.get(n, 0.0)))
    out.extend((s, end, total.get(n, 0.0)) for n, s in since.items())
    return out
