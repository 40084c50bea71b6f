"""Trace export, workloads (DAG patterns, trace replay), plots, experiments and the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from simulator.engine import Simulation
from simulator.experiments import Cell, format_table, run_cell, run_grid, summarize, write_outputs
from simulator.workloads import (
    ALIBABA_PAI,
    PHILLY,
    WORKLOADS,
    DagJobs,
    Merged,
    TraceFormat,
    TraceReplay,
    get_workload,
    many_models,
    map_reduce,
    nested_tree,
    write_synthetic_trace,
)

from .conftest import mixed_jobs, small_cluster

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_chrome_trace_has_one_track_per_device(tmp_path):
    """The Perfetto JSON names every node and puts concurrent GPU tasks on separate tracks."""
    sim = Simulation(small_cluster(), mixed_jobs(120, 1.0), seed=1).run()
    path = tmp_path / "t.json"
    doc = sim.trace.to_chrome(path)
    assert json.loads(path.read_text()) == doc
    procs = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert "a100-000000" in procs
    spans = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    assert len(spans) == 120
    by_track: dict = {}
    for e in spans:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for ivs in by_track.values():  # no overlap on one track
        ivs.sort()
        assert all(a[1] <= b[0] + 1e-6 for a, b in zip(ivs, ivs[1:], strict=False))
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["name"] == "thread_name"}
    assert set(by_track) <= set(names)
    gpu_tracks = {k for k in by_track if names[k].startswith("GPU")}
    assert len(gpu_tracks) >= 2
    assert doc["otherData"]["digest"] == sim.digest()


def test_dag_patterns_respect_dependencies():
    """In every seed pattern, no step starts before all its dependencies finished."""
    for dag in (map_reduce(6, 2), many_models(4), nested_tree(2, 3)):
        sim = Simulation(small_cluster(), DagJobs(5, 0.05, dag), seed=2).run()
        tasks = list(DagJobs(5, 0.05, dag).tasks(2))
        ends = {}
        starts = {}
        for e in sim.trace.events():
            if e.kind == "task_finished":
                ends[e.task] = e.time
            elif e.kind == "task_started":
                starts[e.task] = e.time
        assert len(ends) == len(tasks)
        for t in tasks:
            for d in t.deps:
                assert starts[t.id] >= ends[d] - 1e-9
        assert sim.metrics()["jobs"] == 5


def test_synthetic_trace_replays(tmp_path):
    """The generated trace replays with its documented columns; times are shifted to 0."""
    path = write_synthetic_trace(tmp_path / "s.csv", n=120, seed=3)
    wl = TraceReplay(path)
    tasks = list(wl.tasks(0))
    assert len(tasks) == 120 and tasks[0].submit == 0.0
    assert {t.tenant for t in tasks} >= {"vision", "nlp"}
    assert any(t.accelerator_type == "A100" for t in tasks)
    assert any(t.request.get("TPU") for t in tasks)
    sim = Simulation(get_cluster_with_tpu(), wl, policy="best_fit").run()
    assert sim.metrics()["finished"] == 120


def get_cluster_with_tpu():
    from simulator.cluster import demo_cluster

    return demo_cluster()


def test_alibaba_style_columns_are_mapped(tmp_path):
    """A PAI-style task table (percent CPUs/GPUs, start/end times) maps onto our columns."""
    p = tmp_path / "pai.csv"
    p.write_text("job_name,task_name,inst_num,status,start_time,end_time,plan_cpu,plan_mem,"
                 "plan_gpu,gpu_type,user\n"
                 "j1,worker,1,Terminated,1000,1600,600,29,100,V100,u1\n"
                 "j2,ps,1,Terminated,1010,1010,200,10,50,MISC,u2\n"
                 "j3,worker,1,Failed,1020,,100,10,0,,u1\n")
    wl = TraceReplay(p, ALIBABA_PAI)
    tasks = list(wl.tasks(0))
    assert wl.skipped == 1  # no end time
    assert tasks[0].duration == 600 and tasks[0].request == {"CPU": 6.0, "GPU": 1.0}
    assert tasks[0].accelerator_type == "V100" and tasks[0].tenant == "u1"
    assert tasks[1].request == {"CPU": 2.0, "GPU": 0.5} and tasks[1].accelerator_type is None
    with pytest.raises(ValueError, match="unknown key"):
        TraceFormat("x", columns={"gpus": "num_gpu"})
    with pytest.raises(ValueError, match=r"line 2.*'plan_cpu'"):
        bad = tmp_path / "bad.csv"
        bad.write_text("start_time,end_time,plan_cpu\n1,2,lots\n")
        list(TraceReplay(bad, ALIBABA_PAI).tasks(0))


def test_philly_style_timestamps_are_mapped(tmp_path):
    """A Philly-style job log with timestamp strings replays: times become seconds after the
    first submit (read as UTC, whatever the local zone), run_time or end - start is the
    duration, 'None' times are missing (row skipped), a zone suffix is honoured."""
    p = tmp_path / "philly.csv"
    p.write_text("jobid,user,vc,status,submitted_time,start_time,end_time,run_time,num_gpus\n"
                 "application_1,u1,vc_a,Pass,2017-10-03 06:33:24,2017-10-03 06:34:00,"
                 "2017-10-03 07:34:00,,8\n"
                 "application_2,u2,vc_b,Pass,2017-10-03 06:30:00,2017-10-03 06:31:00,"
                 "2017-10-03 06:41:00,45,1\n"
                 "application_3,u2,vc_b,Killed,2017-10-03 07:00:00,None,None,,2\n"
                 "application_4,u3,vc_a,Pass,2017-10-03T09:00:00+02:00,2017-10-03T09:00:10+02:00,"
                 "2017-10-03T09:00:40+02:00,,1\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = ("import sys; from simulator.workloads import TraceReplay, PHILLY; "
            "w = TraceReplay(sys.argv[1], PHILLY); "
            "print([(t.submit, t.duration, t.tenant, dict(t.request), t.job) for t in w.tasks(0)],"
            " w.skipped)")
    outs = set()
    for tz in ("UTC", "Asia/Kolkata"):
        out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True,
                             text=True, env={**env, "TZ": tz}, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        outs.add(out.stdout)
    assert len(outs) == 1  # no local time zone dependence
    wl = TraceReplay(p, PHILLY)
    tasks = list(wl.tasks(0))
    assert wl.skipped == 1  # application_3 never ran
    # by submit: application_2 (06:30), 1 (06:33:24), 4 (09:00+02:00 = 07:00 UTC)
    assert [t.tenant for t in tasks] == ["vc_b", "vc_a", "vc_a"]
    assert [t.submit for t in tasks] == [0.0, 204.0, 1800.0]
    assert [t.duration for t in tasks] == [45.0, 3600.0, 30.0]
    assert tasks[1].request == {"CPU": 1.0, "GPU": 8.0}
    sim = Simulation(get_cluster_with_tpu(), wl, policy="best_fit").run()
    assert sim.metrics(check=True)["finished"] == 3
    bad = tmp_path / "bad_philly.csv"
    bad.write_text("jobid,submitted_time,run_time,num_gpus\nj1,yesterday noon,10,1\n")
    with pytest.raises(ValueError, match=r"line 2.*'submitted_time'.*timestamp.*yesterday"):
        list(TraceReplay(bad, PHILLY).tasks(0))


def test_every_workload_preset_runs():
    """Each named workload runs on the demo cluster to completion."""
    from simulator.cluster import demo_cluster

    for name in sorted(WORKLOADS):
        sim = Simulation(demo_cluster(), get_workload(name), policy="best_fit").run()
        m = sim.metrics()
        assert m["finished"] == m["tasks"] > 0, name


def test_merged_renumbers_ids_and_deps():
    """Merging workloads keeps deps pointing at the right (renumbered) tasks."""
    wl = Merged([DagJobs(3, 0.1, map_reduce(3, 1), name="a"), DagJobs(3, 0.2, many_models(2),
                                                                          name="b")])
    tasks = list(wl.tasks(0))
    ids = [t.id for t in tasks]
    assert ids == list(range(len(tasks)))
    seen = set()
    for t in tasks:
        assert set(t.deps) <= seen
        seen.add(t.id)


def test_plots_render(tmp_path):
    """Utilization, Gantt and JCT-CDF figures render to PNG headless."""
    from simulator import plots

    sim = Simulation(small_cluster(), mixed_jobs(100, 0.5), seed=1).run()
    for fig in (plots.utilization_plot(sim), plots.gantt(sim), plots.jct_cdf([sim])):
        png = plots.to_png(fig)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_experiment_grid_writes_csv_summary_and_plots(tmp_path):
    """A 2x2x1x2 grid gives 8 rows in grid order, a CI summary and plots."""
    rows = run_grid(["qpu", "bursty"], ["fifo", "best_fit"], ["none"], [0, 1],
                    executor="serial", progress=False)
    assert [(r["workload"], r["policy"], r["seed"]) for r in rows][:3] == [
        ("qpu", "fifo", 0), ("qpu", "fifo", 1), ("qpu", "best_fit", 0)]
    summary = summarize(rows)
    assert len(summary) == 4 and all(s["seeds"] == 2 for s in summary)
    assert all(s["jct_mean_ci95"] >= 0 for s in summary)
    paths = write_outputs(rows, tmp_path / "out")
    with paths["results"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert paths["plot_jct_mean"].stat().st_size > 1000
    # per workload: utilization and Gantt of each policy's first cell, one JCT CDF
    png = b"\x89PNG\r\n\x1a\n"
    for w in ("qpu", "bursty"):
        names = [f"{w}_jct_cdf.png"] + [f"{w}_{p}_{k}.png" for p in ("fifo", "best_fit")
                                          for k in ("utilization", "gantt")]
        for name in names:
            f = tmp_path / "out" / name
            data = f.read_bytes()
            assert data[:8] == png and len(data) > 2000, name
    assert paths["jct_cdf_qpu"] == tmp_path / "out" / "qpu_jct_cdf.png"
    assert "±" in format_table(summary)
    # a cell is deterministic: the same seed gives the same digest
    assert run_cell(Cell("qpu", "fifo", "none", 0))["digest"] == rows[0]["digest"]


def test_grid_rejects_unknown_names():
    """Unknown policy or workload names fail before anything runs."""
    with pytest.raises(ValueError, match="nope"):
        run_grid(["qpu"], ["nope"], executor="serial", progress=False)
    with pytest.raises(ValueError, match="unknown workload"):
        run_grid(["nothing"], ["fifo"], executor="serial", progress=False)


@pytest.mark.slow
def test_cli_demo_and_experiment(tmp_path):
    """`python -m simulator demo` prints a policy table; `experiment` writes its files."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "simulator", "demo", "--scale", "1"],
                         capture_output=True, text=True, timeout=100, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert "best_fit" in out.stdout and "JCT mean" in out.stdout
    out = subprocess.run([sys.executable, "-m", "simulator", "experiment", "--workloads", "qpu",
                          "--policies", "fifo,spread", "--seeds", "0,1", "--executor", "process",
                          "--out", str(tmp_path / "exp")],
                         capture_output=True, text=True, timeout=100, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "exp" / "summary.csv").exists()
    for name in ("qpu_jct_cdf.png", "qpu_fifo_utilization.png", "qpu_spread_gantt.png"):
        assert (tmp_path / "exp" / name).read_bytes()[:4] == b"\x89PNG"
    assert "[4/4]" in out.stderr


@pytest.mark.slow
def test_grid_on_the_local_backend_leaves_no_workers():
    """executor='local' runs cells as runtime tasks; results match the serial run; no orphans."""
    psutil = pytest.importorskip("psutil")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rows = run_grid(["qpu"], ["fifo", "spread"], ["none"], [0, 1], executor="local", jobs=2,
                    progress=False)
    serial = run_grid(["qpu"], ["fifo", "spread"], ["none"], [0, 1], executor="serial",
                      progress=False)
    assert [r["digest"] for r in rows] == [r["digest"] for r in serial]
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in left if psutil.pid_exists(p)],
                                    timeout=10)
    assert not alive, [p.pid for p in alive]
