"""Philly and Alibaba PAI traces in the formats their owners publish, gang jobs, GPU models and
cluster files. Every file is made here, small, in the published layout (no downloads)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from simulator.cluster import ClusterConfig
from simulator.cluster_file import ClusterFileError, cluster_devices, load_cluster
from simulator.devices import DEVICES
from simulator.engine import Simulation
from simulator.nodes import NodeSpec
from simulator.workloads.alibaba import AlibabaPAI, machine_spec_cluster
from simulator.workloads.base import SimTask
from simulator.workloads.philly import PhillyTrace
from simulator.workloads.tracefile import TraceFileError
from simulator.workloads.traces import TraceReplay

ROOT = str(Path(__file__).resolve().parents[2])
T0 = datetime(2017, 10, 7, 1, 0, 0)


def ts(seconds: float | None) -> str | None:
    """A Philly time string ``seconds`` after T0 (None stays None)."""
    return None if seconds is None else (T0 + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%d %H:%M:%S")


def attempt(start, end, *machines):
    return {"start_time": ts(start), "end_time": ts(end),
            "detail": [{"ip": f"m{i}", "gpus": [f"gpu{g}" for g in range(n)]}
                       for i, n in enumerate(machines)]}


def philly_jobs() -> list[dict]:
    """Jobs in the published schema, one per cleaning rule."""
    def job(jobid, status, vc, user, submit, attempts):
        return {"status": status, "vc": vc, "jobid": jobid, "attempts": attempts,
                "submitted_time": ts(submit), "user": user}
    return [
        # two complete attempts: run time = 74 + 600, the 7 s gap between them is queueing
        job("application_a", "Pass", "vc1", "u1", 100, [attempt(130, 204, 8),
                                                        attempt(211, 811, 8)]),
        # first attempt has no start (logging error): left out, never end - submitted_time
        job("application_b", "Killed", "vc2", "u2", 50, [attempt(None, 5000, 1),
                                                         attempt(6000, 6300, 1)]),
        # two machines of 8 GPUs: a gang of 2 x 8
        job("application_c", "Pass", "vc1", "u3", 200, [attempt(220, 1220, 8, 8)]),
        # 8 + 4 GPUs: a gang of 3 x 4 (12 GPUs in all)
        job("application_d", "Failed", "vc2", "u1", 300, [attempt(400, 500, 8, 4)]),
        job("application_e", "Killed", "vc1", "u2", 10, []),  # never scheduled
        job("application_f", "Pass", "vc1", "u2", 20, [attempt(30, None, 2)]),  # still running
        job("application_g", "Pass", "vc2", "u3", 400, [attempt(None, None, 1)]),  # no times
    ]


def write_philly(path: Path, jobs: list[dict] | None = None, how: str = "plain") -> Path:
    text = json.dumps(jobs if jobs is not None else philly_jobs(), indent=4)
    if how == "gzip":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    elif how == "tar.gz":  # like trace-data.tar.gz: trace-data/cluster_job_log inside
        src = path.parent / "trace-data"
        src.mkdir(exist_ok=True)
        (src / "cluster_job_log").write_text(text)
        (src / "cluster_machine_list").write_text("machineId,number of GPUs,single GPU mem\n")
        with tarfile.open(path, "w:gz") as tf:
            tf.add(src / "cluster_machine_list", "trace-data/cluster_machine_list")
            tf.add(src / "cluster_job_log", "trace-data/cluster_job_log")
    else:
        path.write_text(text)
    return path


def as_tuples(tasks) -> list[tuple]:
    return [(t.id, t.submit, t.duration, dict(t.request), t.gang, t.job, t.tenant, t.kind,
             t.accelerator_type) for t in tasks]


def gpu_cluster(*models: tuple[str, int, int]) -> ClusterConfig:
    """Nodes of (model, GPUs per node, count)."""
    return ClusterConfig([NodeSpec(m.lower(), DEVICES[m], g, cpus=32, count=n)
                          for m, g, n in models], name="test-gpus")


# Philly -------------------------------------------------------------------------------------
def test_philly_job_log_cleaning_rules(tmp_path):
    """Run time sums complete attempts only; never-scheduled, still-running and time-less
    jobs are dropped and counted; multi-machine jobs become gangs with the exact total."""
    wl = PhillyTrace(write_philly(tmp_path / "cluster_job_log"))
    tasks = list(wl.tasks(0))
    by_job = dict(zip(wl.job_ids, tasks, strict=True))
    assert sorted(by_job) == ["application_a", "application_b", "application_c",
                              "application_d"]
    assert by_job["application_a"].duration == 74 + 600
    assert by_job["application_b"].duration == 300  # not 5000 - 50 (queueing)
    c, d = by_job["application_c"], by_job["application_d"]
    assert (c.gang, dict(c.request)) == (2, {"GPU": 8.0})
    assert (d.gang, dict(d.request), d.gang * d.request["GPU"]) == (3, {"GPU": 4.0}, 12.0)
    assert by_job["application_a"].gang == 1
    # submit order, shifted so the first kept submit (b at 50 s) is 0
    assert [t.submit for t in tasks] == [0.0, 50.0, 150.0, 250.0]
    assert [t.tenant for t in tasks] == ["vc2", "vc1", "vc1", "vc2"]
    s = wl.stats
    assert s["jobs read"] == 7 and s["kept"] == 4 and wl.skipped == 3
    assert s["dropped: no attempts (never scheduled)"] == 1
    assert s["dropped: still running when the log was taken"] == 1
    assert s["dropped: no attempt with both start and end time"] == 1
    assert s["attempts left out: a time missing"] == 2
    assert s["gang jobs"] == 2
    users = [t.tenant for t in PhillyTrace(tmp_path / "cluster_job_log", tenant="user").tasks(0)]
    assert users == ["u2", "u1", "u3", "u1"]
    only_pass = PhillyTrace(tmp_path / "cluster_job_log", statuses={"Pass"})
    assert [t.job for t in only_pass.tasks(0)] == [0, 1]
    assert only_pass.job_ids == ["application_a", "application_c"]


def test_philly_compressed_files_read_the_same(tmp_path):
    """The plain log, a gzip copy and the published trace-data.tar.gz give the same tasks."""
    plain = as_tuples(PhillyTrace(write_philly(tmp_path / "cluster_job_log")).tasks(0))
    gz = as_tuples(PhillyTrace(write_philly(tmp_path / "log.gz", how="gzip")).tasks(0))
    tgz = as_tuples(PhillyTrace(write_philly(tmp_path / "trace-data.tar.gz", how="tar.gz"))
                    .tasks(0))
    assert plain == gz == tgz and len(plain) == 4


def test_philly_log_larger_than_a_read_chunk(tmp_path):
    """The log is decoded job by job in 1 MiB chunks: a 1.4 MB log gives every job, and an
    error past the first chunk names the line and column json itself reports."""
    jobs = [dict(j, jobid=f"{j['jobid']}_{k}") for k in range(250) for j in philly_jobs()]
    path = write_philly(tmp_path / "cluster_job_log", jobs)
    assert path.stat().st_size > 1.2 * 2 ** 20
    wl = PhillyTrace(path)
    assert wl.load()["jobs read"] == 1750 and wl.stats["kept"] == 1000
    small = [t.duration for t in PhillyTrace(write_philly(tmp_path / "small.json")).tasks(0)]
    assert sorted(t.duration for t in wl.tasks(0)) == sorted(small * 250)
    text = path.read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: int(1.1 * 2 ** 20)])
    try:
        json.loads(cut.read_text())
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
    with pytest.raises(TraceFileError, match=rf"cut\.json', {where}: not valid JSON"):
        PhillyTrace(cut).load()


def test_philly_gangs_split_or_refused_by_the_engine(tmp_path):
    """gangs='keep' hands the engine gang tasks, which it refuses clearly; 'split' runs one
    task per member under the job's id, with the same total GPU demand."""
    path = write_philly(tmp_path / "cluster_job_log")
    cluster = gpu_cluster(("V100", 8, 4))
    with pytest.raises(NotImplementedError, match=r"gang job of 2 members.*gangs='split'"):
        Simulation(cluster, PhillyTrace(path, gangs="keep")).run()
    kept = list(PhillyTrace(path, gangs="keep").tasks(0))
    split = list(PhillyTrace(path, gangs="split").tasks(0))
    assert len(split) == sum(t.gang for t in kept) == 1 + 1 + 2 + 3
    assert sum(t.request["GPU"] for t in split) == sum(t.gang * t.request["GPU"] for t in kept)
    assert all(t.gang == 1 for t in split)
    assert [t.id for t in split] == list(range(len(split)))
    members = [t for t in split if t.request["GPU"] == 4.0]
    assert len(members) == 3 and len({t.job for t in members}) == 1
    sim = Simulation(cluster, PhillyTrace(path, gangs="split"), policy="best_fit").run()
    m = sim.metrics(check=True)
    assert m["finished"] == 7 and m["jobs"] == 4


def test_philly_pinned_model_replays_recorded_run_times(tmp_path):
    """gpu_type pins the jobs and scales durations by the model's speed, so on that model
    each job runs for exactly its recorded time."""
    path = write_philly(tmp_path / "cluster_job_log")
    wl = PhillyTrace(path, gangs="split", gpu_type="K80")
    tasks = list(wl.tasks(0))
    assert {t.accelerator_type for t in tasks} == {"K80"}
    assert tasks[0].duration == 300 * DEVICES["K80"].speed_for("train")
    sim = Simulation(gpu_cluster(("K80", 8, 4), ("V100", 8, 1)), wl).run()
    assert sim.metrics(check=True)["finished"] == 7
    assert sorted(set(sim.rec_service)) == [100.0, 300.0, 674.0, 1000.0]
    with pytest.raises(ValueError, match=r"gpu_type 'Z80'.*known: .*K80"):
        PhillyTrace(path, gpu_type="Z80")


def test_philly_bad_and_truncated_files_name_the_place(tmp_path):
    """Truncated JSON, a bad time, a wrong type and a missing field raise naming the file,
    the JSON path and the value; bad arguments name the argument and what is accepted."""
    full = json.dumps(philly_jobs())
    cut = tmp_path / "cut.json"
    cut.write_text(full[: len(full) // 2])
    with pytest.raises(TraceFileError, match=r"cut\.json.*line 1, column \d+.*truncated"):
        PhillyTrace(cut).load()
    jobs = philly_jobs()
    jobs[1]["attempts"][1]["start_time"] = "07/10/2017 01:00"
    with pytest.raises(TraceFileError, match=r"cluster_job_log\[1\]\.attempts\[1\]\.start_time"
                       r".*'2017-10-07 01:11:39'.*got '07/10/2017 01:00'"):
        list(PhillyTrace(write_philly(tmp_path / "badtime.json", jobs)).tasks(0))
    jobs = philly_jobs()
    jobs[2]["attempts"][0]["detail"][0]["gpus"] = 8
    with pytest.raises(TraceFileError, match=r"cluster_job_log\[2\]\.attempts\[0\]\.detail\[0\]"
                       r"\.gpus.*list of GPU ids, got 8"):
        PhillyTrace(write_philly(tmp_path / "badgpus.json", jobs)).load()
    jobs = philly_jobs()
    del jobs[0]["submitted_time"]
    with pytest.raises(TraceFileError, match=r"cluster_job_log\[0\].*no 'submitted_time'"):
        PhillyTrace(write_philly(tmp_path / "nosubmit.json", jobs)).load()
    obj = tmp_path / "obj.json"
    obj.write_text('{"jobs": []}')
    with pytest.raises(TraceFileError, match="JSON list of jobs"):
        PhillyTrace(obj).load()
    gz = write_philly(tmp_path / "log.gz", how="gzip")
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(TraceFileError, match=r"cut\.gz.*truncated|cut\.gz.*damaged|cut\.gz.*JSON"):
        PhillyTrace(cut_gz).load()
    path = tmp_path / "cluster_job_log"
    write_philly(path)
    with pytest.raises(ValueError, match=r"statuses must be .*Pass, Killed, Failed.*'Done'"):
        PhillyTrace(path, statuses={"Done"})
    with pytest.raises(ValueError, match=r"gangs must be one of keep, split, got 'all'"):
        PhillyTrace(path, gangs="all")
    with pytest.raises(FileNotFoundError, match="nope"):
        PhillyTrace(tmp_path / "nope")


# Alibaba PAI ---------------------------------------------------------------------------------
TASKS = [  # job_name,task_name,inst_num,status,start_time,end_time,plan_cpu,plan_mem,plan_gpu,gpu_type
    "j1,worker,4.0,Terminated,1000.0,1600.0,600.0,29.296875,50.0,T4",
    "j1,ps,1.0,Terminated,1000.0,1600.0,200.0,10.0,,",
    "j2,tensorflow,1.0,Terminated,0.0,0.0,600.0,29.3,100.0,MISC",  # 0 = missing: dropped
    "j3,tensorflow,1.0,Running,2000.0,0.0,600.0,29.3,100.0,V100",  # no end: dropped
    "j4,PyTorchWorker,1.0,Failed,1200.0,1500.0,800.0,50.0,200.0,P100",
    "j5,evaluator,2.0,Terminated,1100.0,1160.0,100.0,4.0,25.0,V100M32",
]
JOBS = [  # job_name,inst_id,user,status,start_time,end_time
    "j1,i1,alice,Terminated,900.0,1600.0",
    "j2,i2,bob,Terminated,0.0,0.0",
    "j3,i3,bob,Running,1990.0,0.0",
    "j4,i4,carol,Failed,1150.0,1500.0",
    "j5,i5,alice,Terminated,1100.0,1160.0",
]
GROUP_TAGS = [  # inst_id,user,gpu_type_spec,group,workload
    "i1,alice,,g1,", "i4,carol,V100,g2,bert", "i5,alice,V100M32,g3,",
]


def write_table(path: Path, rows: list[str], how: str = "plain") -> Path:
    text = "\n".join(rows) + "\n"
    if how == "gzip":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    elif how == "tar.gz":  # like pai_task_table.tar.gz: one pai_task_table.csv inside
        inner = path.parent / (path.name.split(".")[0] + ".csv")
        inner.write_text(text)
        with tarfile.open(path, "w:gz") as tf:
            tf.add(inner, inner.name)
    else:
        path.write_text(text)
    return path


def pai(tmp_path: Path, **kw) -> AlibabaPAI:
    task = write_table(tmp_path / "pai_task_table.csv", TASKS)
    job = write_table(tmp_path / "pai_job_table.csv", JOBS)
    return AlibabaPAI(task, job_table=job, **kw)


def test_alibaba_cleaning_rules_instances_and_tenants(tmp_path):
    """0 times are missing (dropped, never replayed from 0); GPU demand is plan_gpu x
    inst_num; the user and submit time come from pai_job_table; durations are normalised
    by the model the task ran on."""
    wl = pai(tmp_path)
    tasks = list(wl.tasks(0))
    assert [(t.name, t.gang) for t in tasks] == [("worker", 4), ("ps", 1), ("evaluator", 2),
                                                ("PyTorchWorker", 1)]
    gpu_demand = sum(t.gang * t.request.get("GPU", 0.0) for t in tasks)
    assert gpu_demand == 0.5 * 4 + 0.25 * 2 + 2.0  # plan_gpu/100 x inst_num of kept tasks
    assert [dict(t.request) for t in tasks] == [{"CPU": 6.0, "GPU": 0.5}, {"CPU": 2.0},
                                               {"CPU": 1.0, "GPU": 0.25},
                                               {"CPU": 8.0, "GPU": 2.0}]
    assert [t.tenant for t in tasks] == ["alice", "alice", "alice", "carol"]
    # submit = the job's submit time (j1 at 900, j5 at 1100, j4 at 1150), shifted to 0
    assert [t.submit for t in tasks] == [0.0, 0.0, 200.0, 250.0]
    assert tasks[0].job == tasks[1].job != tasks[2].job
    assert [t.accelerator_type for t in tasks] == ["T4", None, "V100M32", "P100"]
    assert [t.kind for t in tasks] == ["train", "cpu", "train", "train"]
    assert tasks[0].duration == 600 * DEVICES["T4"].speed_for("train")
    assert tasks[1].duration == 600  # CPU task: not scaled
    assert tasks[3].duration == 300 * DEVICES["P100"].speed_for("train")
    s = wl.stats
    assert s["tasks read"] == 6 and s["kept"] == 4 and wl.skipped == 2
    assert s["dropped: start_time 0 or empty (missing)"] == 1
    assert s["dropped: end_time 0 or empty (missing: not finished or not recorded)"] == 1
    assert s["instances"] == 4 + 1 + 2 + 1
    alone = AlibabaPAI(tmp_path / "pai_task_table.csv")  # no job table: no users
    assert {t.tenant for t in alone.tasks(0)} == {"default"}
    assert [t.submit for t in alone.tasks(0)] == [0.0, 0.0, 100.0, 200.0]
    ok = pai(tmp_path, statuses={"Terminated"})  # the job's status decides
    assert [t.name for t in ok.tasks(0)] == ["worker", "ps", "evaluator"]
    assert ok.stats["dropped: status Failed not kept"] == 1
    raw = list(pai(tmp_path, normalize=False, gpu="none").tasks(0))
    assert raw[0].duration == 600 and {t.accelerator_type for t in raw} == {None}


def test_alibaba_requested_model_from_group_tags(tmp_path):
    """gpu='spec' pins to gpu_type_spec joined through the job's inst_id (empty: any)."""
    tags = write_table(tmp_path / "pai_group_tag_table.csv", GROUP_TAGS)
    wl = pai(tmp_path, gpu="spec", group_tag_table=tags)
    assert [t.accelerator_type for t in wl.tasks(0)] == [None, None, "V100M32", "V100"]
    with pytest.raises(ValueError, match="gpu='spec' needs job_table and group_tag_table"):
        AlibabaPAI(tmp_path / "pai_task_table.csv", gpu="spec")
    with pytest.raises(ValueError, match=r"gpu must be one of assigned, spec, none, got 'any'"):
        pai(tmp_path, gpu="any")


def test_alibaba_compressed_and_split(tmp_path):
    """A gzip copy and the published .tar.gz read the same; gangs='split' gives inst_num
    one-instance tasks of the same job."""
    plain = as_tuples(pai(tmp_path).tasks(0))
    for how, name in (("gzip", "pai_task_table.csv.gz"), ("tar.gz", "pai_task_table.tar.gz")):
        sub = tmp_path / how
        sub.mkdir()
        task = write_table(sub / name, TASKS, how)
        job = write_table(sub / ("pai_job_table" + name[len("pai_task_table"):]), JOBS, how)
        assert as_tuples(AlibabaPAI(task, job_table=job).tasks(0)) == plain
    split = list(pai(tmp_path, gangs="split").tasks(0))
    assert len(split) == 4 + 1 + 2 + 1 and all(t.gang == 1 for t in split)
    workers = [t for t in split if t.name == "worker"]
    assert len(workers) == 4 and len({t.job for t in workers}) == 1


def test_alibaba_replay_keeps_recorded_times_on_the_trace_models(tmp_path):
    """On a cluster of the models the tasks ran on, each task runs for its recorded time
    and the makespan is that of the cleaned trace (no 0-time row shifts it)."""
    cluster = ClusterConfig([NodeSpec("t4", DEVICES["T4"], 2, cpus=96, count=1),
                             NodeSpec("p100", DEVICES["P100"], 2, cpus=64, count=1),
                             NodeSpec("v100m32", DEVICES["V100M32"], 8, cpus=96, count=1)],
                            name="pai-mini")
    sim = Simulation(cluster, pai(tmp_path, gangs="split"), policy="best_fit").run()
    m = sim.metrics(check=True)
    assert m["finished"] == 8 and m["tenants"] == 2
    assert sorted({round(x, 6) for x in sim.rec_service}) == [60.0, 300.0, 600.0]
    # j1 (submitted first, at 900) runs its 600 s without the trace's 100 s wait and ends last
    assert m["makespan"] == pytest.approx(600.0)


def test_alibaba_bad_and_truncated_files_name_the_place(tmp_path):
    """A bad field, a truncated row, truncated gzip data, a non-integer inst_num and an
    archive without the table raise naming the file, the row and the field."""
    bad = write_table(tmp_path / "bad.csv", [TASKS[0], TASKS[1].replace("200.0", "lots")])
    with pytest.raises(TraceFileError, match=r"bad\.csv.*row 2, field 'plan_cpu'.*got 'lots'"):
        AlibabaPAI(bad).load()
    cut = write_table(tmp_path / "cut.csv", TASKS[:2] + [TASKS[2][:25]])
    with pytest.raises(TraceFileError, match=r"cut\.csv.*row 3: has \d fields, pai_task_table "
                       r"rows have 10 \(a truncated file\?\)"):
        AlibabaPAI(cut).load()
    gz = write_table(tmp_path / "full.csv.gz", TASKS * 50, "gzip")
    cut_gz = tmp_path / "cut.csv.gz"
    cut_gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(TraceFileError, match=r"cut\.csv\.gz.*ends early.*truncated"):
        AlibabaPAI(cut_gz).load()
    frac = write_table(tmp_path / "frac.csv", [TASKS[0].replace("4.0", "2.5", 1)])
    with pytest.raises(TraceFileError, match=r"row 1, field 'inst_num'.*whole.*'2.5'"):
        AlibabaPAI(frac).load()
    job_table = write_table(tmp_path / "pai_job_table.csv", JOBS)
    with pytest.raises(TraceFileError, match=r"pai_job_table\.csv.*row 1: has 6 fields, "
                       r"pai_task_table rows have 10 \(is this a pai_task_table file"):
        AlibabaPAI(job_table).load()
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tf:
        tf.add(job_table, "pai_job_table.csv")
    with pytest.raises(TraceFileError, match=r"no file named 'pai_task_table'.*pai_job_table"):
        AlibabaPAI(other).load()
    with_header = write_table(tmp_path / "h.csv", [
        "job_name,task_name,inst_num,status,start_time,end_time,plan_cpu,plan_mem,plan_gpu,"
        "gpu_type", TASKS[0]])
    assert AlibabaPAI(with_header).stats["kept"] == 1  # a saved header row is tolerated
    with pytest.raises(ValueError, match=r"statuses must be .*Terminated.*got \['Pass'\]"):
        AlibabaPAI(bad, statuses=["Pass"])


def test_machine_spec_cluster(tmp_path):
    """pai_machine_spec becomes one node type per machine shape, counts scaled."""
    spec = write_table(tmp_path / "pai_machine_spec.csv", [
        "m1,T4,96,512,2", "m2,T4,96,512,2", "m3,T4,96,512,2", "m4,V100,96,512,8",
        "m5,P100,64,512,2", "m6,CPU,96,512,0"])
    c = machine_spec_cluster(spec)
    assert {s.name: (s.model, s.accelerators, s.count) for s in c.node_specs} == {
        "t4-2g-96c": ("T4", 2, 3), "v100-8g-96c": ("V100", 8, 1),
        "p100-2g-64c": ("P100", 2, 1), "cpu-0g-96c": ("xeon", 0, 1)}
    half = machine_spec_cluster(spec, scale=0.5)
    assert [s.count for s in half.node_specs] == [1, 2, 1, 1]  # at least one each
    bad = write_table(tmp_path / "spec_bad.csv", ["m1,Z100,96,512,2"])
    with pytest.raises(TraceFileError, match=r"row 1, field 'gpu_type'.*known.*T4.*'Z100'"):
        machine_spec_cluster(bad)


# Gang field, GPU models, our CSV ----------------------------------------------------------------
def test_gang_field_is_validated_and_defaults_to_one():
    assert SimTask(0, 0.0, 1.0, {"GPU": 1}).gang == 1
    assert SimTask(0, 0.0, 1.0, {"GPU": 8}, gang=4).gang == 4
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"gang must be an int >= 1.*got"):
            SimTask(0, 0.0, 1.0, {"GPU": 1}, gang=bad)


def test_trace_gpu_models_exist_with_relative_speeds():
    """The models the traces name are devices, slower than V100 where they should be."""
    speed = {m: DEVICES[m].speed_for("train") for m in
             ("K80", "M40", "M60", "P40", "P100", "T4", "V100", "V100M32", "MISC")}
    assert speed["K80"] < speed["T4"] < speed["P100"] < speed["V100"] == speed["V100M32"]
    assert all(DEVICES[m].kind == "GPU" and DEVICES[m].cost_per_hour > 0 for m in speed)
    assert DEVICES["V100M32"].memory == 2 * DEVICES["V100"].memory


def test_native_csv_missing_start_is_not_run_time(tmp_path):
    """A row whose start_time cell is empty is skipped, not timed from its submit."""
    p = tmp_path / "t.csv"
    p.write_text("submit_time,start_time,end_time,num_gpus\n0,10,70,1\n5,,5000,1\n")
    wl = TraceReplay(p)
    assert [t.duration for t in wl.tasks(0)] == [60.0] and wl.skipped == 1
    q = tmp_path / "nostart.csv"
    q.write_text("submit_time,end_time,num_gpus\n0,70,1\n")
    assert [t.duration for t in TraceReplay(q).tasks(0)] == [70.0]


def test_readers_are_deterministic(tmp_path):
    """Fresh readers of the same files give the same event trace, for any seed."""
    path = write_philly(tmp_path / "cluster_job_log")
    cluster = gpu_cluster(("V100", 8, 2), ("T4", 2, 2), ("P100", 4, 1), ("V100M32", 8, 1))
    digests = {Simulation(cluster, PhillyTrace(path, gangs="split"), seed=s).run().digest()
               for s in (0, 0, 1)}
    assert len(digests) == 1
    first = Simulation(cluster, pai(tmp_path, gangs="split")).run().digest()
    assert Simulation(cluster, pai(tmp_path, gangs="split")).run().digest() == first


# Cluster files ------------------------------------------------------------------------------
CLUSTER = {"name": "pai-mini",
           "devices": {"L4": {"kind": "GPU", "speed": {"train": 1.2}, "memory": 24e9,
                              "cost_per_hour": 0.8}},
           "node_types": [
               {"name": "t4", "accelerator": "T4", "accelerators": 2, "cpus": 96, "count": 2},
               {"name": "p100", "accelerator": "P100", "accelerators": 4, "cpus": 64,
                "count": 1, "max_count": 3, "boot_latency": 120},
               {"name": "v100m32", "accelerator": "V100M32", "accelerators": 8, "cpus": 96,
                "count": 1},
               {"name": "l4", "accelerator": "L4", "accelerators": 1, "cpus": 8, "count": 1},
               {"name": "cpu", "cpus": 64, "count": 1, "spot": True}]}
CLUSTER_TOML = """name = "pai-mini"
[devices.L4]
kind = "GPU"
speed = { train = 1.2 }
memory = 24e9
cost_per_hour = 0.8
[[node_types]]
name = "t4"
accelerator = "T4"
accelerators = 2
cpus = 96
count = 2
[[node_types]]
name = "p100"
accelerator = "P100"
accelerators = 4
cpus = 64
count = 1
max_count = 3
boot_latency = 120
[[node_types]]
name = "v100m32"
accelerator = "V100M32"
accelerators = 8
cpus = 96
count = 1
[[node_types]]
name = "l4"
accelerator = "L4"
accelerators = 1
cpus = 8
count = 1
[[node_types]]
name = "cpu"
cpus = 64
count = 1
spot = true
"""


def test_cluster_file_json_and_toml(tmp_path):
    """JSON and TOML files give the same cluster, with file-defined devices."""
    j = tmp_path / "c.json"
    j.write_text(json.dumps(CLUSTER))
    t = tmp_path / "c.toml"
    t.write_text(CLUSTER_TOML)
    a, b = load_cluster(j), load_cluster(t)
    assert a == b and a.name == "pai-mini"
    assert [(s.name, s.model, s.accelerators, s.count) for s in a.node_specs] == [
        ("t4", "T4", 2, 2), ("p100", "P100", 4, 1), ("v100m32", "V100M32", 8, 1),
        ("l4", "L4", 1, 1), ("cpu", "xeon", 0, 1)]
    assert a.spec("p100").max_count == 3 and a.spec("cpu").spot is True
    assert cluster_devices(a)["L4"].speed_for("train") == 1.2


@pytest.mark.parametrize("change, message", [
    (lambda c: c["node_types"][0].update(gpus=2),
     r"node_types\[0\]: unknown field\(s\) 'gpus'; accepted: name, accelerator, "
     r"accelerators, cpus, .*count"),
    (lambda c: c["node_types"][1].update(accelerator="H200"),
     r"node_types\[1\]\.accelerator: must name a device model; known: .*T4.*got 'H200'"),
    (lambda c: c["node_types"][0].update(count=-2),
     r"node_types\[0\]: NodeSpec 't4': count must be an int >= 0, got -2"),
    (lambda c: c["node_types"][4].update(spot="yes"),
     r"node_types\[4\]\.spot: must be true or false, got 'yes'"),
    (lambda c: c["devices"]["L4"].update(speed={"train": -1}),
     r"devices\.L4: DeviceType 'L4': speed\['train'\] must be a finite number >= 0"),
    (lambda c: c.update(node_types=[]), r"node_types: must be a non-empty list"),
    (lambda c: c.update(nodes=[]), r"unknown field\(s\) 'nodes'; accepted: name, node_types"),
])
def test_bad_cluster_file_names_the_entry(tmp_path, change, message):
    data = json.loads(json.dumps(CLUSTER))
    change(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ClusterFileError, match=r"cluster file '.*bad\.json'.*" + message):
        load_cluster(p)


def test_cluster_file_syntax_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"node_types": [\n  {"name": "a",}\n]}')
    with pytest.raises(ClusterFileError, match=r"c\.json.*not valid JSON at line 2, column"):
        load_cluster(p)
    t = tmp_path / "c.toml"
    t.write_text("name = \n")
    with pytest.raises(ClusterFileError, match=r"c\.toml.*not valid TOML"):
        load_cluster(t)


# CLI ----------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "simulator", "replay", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_cli_replays_both_published_formats_on_a_cluster_file(tmp_path):
    """`replay --format philly|alibaba --cluster-file` runs the published files (T4/P100
    tasks are feasible there); a bad file or kept gangs fail with a clear message."""
    cfile = tmp_path / "cluster.json"
    cfile.write_text(json.dumps(CLUSTER))
    philly = write_philly(tmp_path / "trace-data.tar.gz", how="tar.gz")
    out = _cli(str(philly), "--format", "philly", "--cluster-file", str(cfile))
    assert out.returncode == 0, out.stderr
    assert "kept: 4" in out.stdout and "note: 2 gang job(s) split" in out.stdout
    assert "finished: 7" in out.stdout and "unfinished: 0" in out.stdout
    sub = tmp_path / "pai"
    sub.mkdir()
    task = write_table(sub / "pai_task_table.tar.gz", TASKS, "tar.gz")
    job = write_table(sub / "pai_job_table.csv.gz", JOBS, "gzip")
    out = _cli(str(task), "--format", "alibaba", "--job-table", str(job),
               "--cluster-file", str(cfile), "--policy", "best_fit")
    assert out.returncode == 0, out.stderr
    assert "finished: 8" in out.stdout and "tenants: 2" in out.stdout
    assert "util[T4]" in out.stdout and "util[P100]" in out.stdout
    out = _cli(str(task), "--format", "alibaba", "--gangs", "keep", "--cluster-file", str(cfile))
    assert out.returncode == 2 and "gang job of 4 members" in out.stderr
    bad = write_table(tmp_path / "bad.csv", [TASKS[0].replace(",600.0,", ",six,")])
    out = _cli(str(bad), "--format", "alibaba", "--cluster-file", str(cfile))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.csv" in out.stderr and "'plan_cpu'" in out.stderr and "'six'" in out.stderr
    out = _cli(str(task), "--format", "alibaba", "--cluster-file", str(tmp_path / "none.json"))
    assert out.returncode == 2 and "none.json" in out.stderr
