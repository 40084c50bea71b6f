"""%%remote flags and %cluster scale through a real kernel on a multi-node local cluster,
and %%remote on the sim backend in a real kernel."""

from __future__ import annotations

import psutil
import pytest

from tests.kernel_ext.kernel_harness import Kernel, first, stream_text

pytestmark = [pytest.mark.timeout(120)]

NODES = ('[{"name": "cpu", "resources": {"CPU": 1}},'
         ' {"name": "gpu", "resources": {"CPU": 1, "GPU": 1}, "accelerator_type": "A100"},'
         ' {"name": "tpu", "resources": {"CPU": 2, "TPU": 1}}]')


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _no_leftovers(k: Kernel, children: set[int]) -> None:
    """Close the kernel; every process it (or its cluster) started must be gone."""
    pid = k.km.provisioner.process.pid if k.km.provisioner else None
    children |= _descendants(pid) if pid else set()
    k.close()
    _gone, alive = psutil.wait_procs([psutil.Process(c) for c in children
                                      if psutil.pid_exists(c)], timeout=15)
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel with a three-node-type local cluster (cpu; gpu, an A100; tpu)."""
    cwd = tmp_path_factory.mktemp("kernel-nodes")
    (cwd / "helpers_mod.py").write_text("def square(v):\n    return v * v\n")
    k = Kernel(str(cwd))
    children: set[int] = set()
    try:
        k.value(f"%load_ext kernel_ext\nimport runtime\nnodes = {NODES}\n"
                "%cluster connect -O nodes=nodes\n1")
        yield k
    finally:
        _no_leftovers(k, children)


def last_task(kernel: Kernel, attr: str) -> str:
    """An attribute of the newest task record in the kernel's cluster log."""
    return kernel.value("max(runtime.current_backend().log.tasks.values(), "
                        f"key=lambda r: r.id).{attr}")


def test_accelerator_lands_on_the_labelled_node(kernel):
    """--accelerator A100 puts the cell on the node labelled A100 (seen in the handle)."""
    for _ in range(2):
        shown = kernel.value("%%remote --bg -o acc --accelerator A100\n'on a100'")
        assert "%%remote" in shown
        assert kernel.value("acc.result(timeout=30), acc.node") == "('on a100', 'gpu-0')"
    # without the flag, first-fit takes the first node (in id order) with a free CPU
    kernel.value("%%remote --bg -o plain\n'x'")
    assert kernel.value("plain.result(timeout=30), plain.node") == "('x', 'cpu-0')"
    assert kernel.value("%%remote --gpus 1 --accelerator A100\n'gpu'") == "'gpu'"
    assert last_task(kernel, "node") == "'gpu-0'"
    assert last_task(kernel, "resources") == "{'CPU': 1.0, 'GPU': 1.0}"
    err = first(kernel.run("%%remote --accelerator V100\n1"), "error")
    assert err is not None and err["content"]["ename"] == "InfeasibleRequestError"
    assert "V100" in err["content"]["evalue"]


def test_custom_resource_limits_concurrency(kernel, tmp_path):
    """With one TPU, only one of two --bg cells needing TPU=1 runs at a time, on tpu-0,
    although tpu-0 has CPUs for both."""
    go = tmp_path / "go"
    cell = ("%%remote --bg -o {name} --resources TPU=1\nimport os, time\n"
            f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n'{{name}} done'")
    kernel.value(cell.format(name="t1"))
    kernel.value(cell.format(name="t2"))
    assert kernel.wait_until(lambda: kernel.value("t1.state, t2.state") ==
                             "('running', 'pending')", 15)
    assert kernel.value("t1.node, runtime.available_resources().get('TPU', 0.0)") == \
        "('tpu-0', 0.0)"
    assert kernel.value("runtime.current_backend().log.tasks[t2.task_id].resources") == \
        "{'CPU': 1.0, 'TPU': 1.0}"
    go.write_text("go")
    assert kernel.value("t1.result(timeout=30), t2.result(timeout=30), t2.node") == \
        "('t1 done', 't2 done', 'tpu-0')"
    assert kernel.value("runtime.current_backend().log.tasks[t2.task_id].started >= "
                        "runtime.current_backend().log.tasks[t1.task_id].finished") == "True"


def test_push_ships_names_the_analysis_cannot_see(kernel):
    """A name reached only through globals() travels with --push, not without it."""
    kernel.value("hidden = 41\n1")
    assert kernel.value("%%remote --push hidden\nglobals()['hidden'] + 1") == "42"
    err = first(kernel.run("%%remote\nglobals()['hidden'] + 1"), "error")
    assert err is not None and err["content"]["ename"] == "KeyError"
    assert "hidden" in err["content"]["evalue"]


def test_module_imported_in_an_earlier_cell(kernel):
    """Modules imported by earlier cells (the stdlib under an alias, and a module from the
    notebook's folder) are imported on the worker and usable in the remote cell."""
    kernel.value("import json as js\nimport helpers_mod\n1")
    msgs = kernel.run("%%remote\nimport os\nprint('pid', os.getpid())\n"
                      "js.dumps({'sq': helpers_mod.square(7)})")
    assert first(msgs, "error") is None
    res = first(msgs, "execute_result")
    assert res is not None and res["content"]["data"]["text/plain"] == "'{\"sq\": 49}'"
    worker_pid = int(stream_text(msgs).split()[1])
    assert worker_pid != kernel.value("import os\nos.getpid()")


def test_cluster_scale_adds_and_removes_nodes(kernel):
    """%cluster scale TYPE N adds nodes with workers and removes them again; the removed
    workers' processes are gone; bad input is a UsageError naming the type."""
    res = first(kernel.run("%cluster scale cpu 3"), "execute_result")
    assert res is not None
    status = res["content"]["data"]["text/plain"]
    assert "cpu-1" in status and "cpu-2" in status
    pids = kernel.value("sorted(w.pid for w in runtime.current_backend()._workers.values()"
                        " if w.node in ('cpu-1', 'cpu-2'))")
    added = [int(p) for p in pids.strip("[]").split(",")]
    assert len(added) == 2 and all(psutil.pid_exists(p) for p in added)
    assert kernel.value("runtime.cluster_resources()['CPU']") == "6.0"
    kernel.run("%cluster scale cpu 1")
    assert kernel.value("sorted(n.id for n in runtime.current_backend().nodes() if n.node_type == 'cpu')") == \
        "['cpu-0']"
    _gone, alive = psutil.wait_procs([psutil.Process(p) for p in added
                                      if psutil.pid_exists(p)], timeout=15)
    assert not alive
    assert kernel.value("[e.data['reason'] for e in runtime.current_backend().log"
                        ".scale_events][-2:]") == "['scale by hand', 'scale by hand']"
    msgs = kernel.run("%cluster scale h100 2")
    shown = stream_text(msgs, "stderr")
    assert "UsageError" in shown and "'h100'" in shown and "'cpu', 'gpu', 'tpu'" in shown
    assert "Traceback" not in shown


def test_sim_backend_in_a_real_kernel(tmp_path):
    """%cluster connect sim -O ...: a %%remote cell runs in virtual time, its output and
    names come back, and %cluster status shows the virtual clock."""
    k = Kernel(str(tmp_path))
    try:
        k.value("%load_ext kernel_ext\nimport runtime\nsim_nodes = [{'name': 'gpu', 'resources': "
                "{'CPU': 4, 'GPU': 1}, 'accelerator_type': 'A100', 'count': 2}]\n1")
        res = first(k.run("%cluster connect sim -O nodes=sim_nodes -O seed=3"),
                    "execute_result")
        assert res is not None and "sim" in res["content"]["data"]["text/plain"]
        k.value("xs = [1, 2, 3]\n1")
        msgs = k.run("%%remote --gpus 1 --accelerator A100\nimport time\nprint('in sim')\n"
                     "time.sleep(7200)\ntotal = sum(xs)\ntotal * 2")
        assert first(msgs, "error") is None
        assert "in sim" in stream_text(msgs)
        assert first(msgs, "execute_result")["content"]["data"]["text/plain"] == "12"
        assert k.value("total, runtime.now() >= 7200") == "(6, True)"
        out = first(k.run("%cluster status"), "execute_result")["content"]["data"]
        assert "gpu-0" in out["text/plain"] and "time=7200s (virtual)" in out["text/plain"]
        assert "7200s (virtual)" in out["text/html"]
        mon = stream_text(k.run("%cluster monitor --text"))
        assert "virtual time 7200" in mon
        # the sim backend scales by hand too (the status table lists the new node)
        out = first(k.run("%cluster scale gpu 3"), "execute_result")["content"]["data"]
        assert "gpu-2" in out["text/plain"]
        out = first(k.run("%cluster scale 1"), "execute_result")["content"]["data"]
        assert "gpu-1" not in out["text/plain"] and "gpu-0" in out["text/plain"]
        k.run("%cluster disconnect")
    finally:
        _no_leftovers(k, set())
