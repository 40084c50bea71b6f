"""%%remote on a real dask cluster (``dask scheduler`` + two ``dask worker`` processes on
127.0.0.1) through a real kernel: output (also of nested tasks) streams into the cell,
displays and figures, the interrupt's one line, the pending notice, --all per worker."""

from __future__ import annotations

import re

import pytest

from tests.kernel_ext.kernel_harness import Kernel, cell_output, first, stream_text

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel connected to a dask cluster: w1 (2 threads, CPU=2), w2 (CPU=1, GPU=1)."""
    from tests.dask.cluster import dask_cluster, run_options

    workers = {"w1": (2, {"CPU": 2}), "w2": (1, {"CPU": 1, "GPU": 1})}
    with dask_cluster(tmp_path_factory.mktemp("dask-cells"), workers) as dc:
        k = Kernel(str(tmp_path_factory.mktemp("dask-kernel")))
        try:
            k.value(f"%load_ext kernel_ext\nimport runtime\n%cluster connect {dc.address} "
                    f"-O poll_interval={run_options()['poll_interval']}\n1")
            yield k
            k.run("%cluster disconnect")
        finally:
            k.close()


def test_output_streams_into_the_cell_while_it_runs(kernel, tmp_path):
    """stdout and stderr of a cell on a dask worker arrive in the cell before it ends."""
    go = tmp_path / "go"
    msg_id = kernel.submit(
        "%%remote\nimport os, sys, time\nprint('started on', os.getpid(), flush=True)\n"
        "print('a warning', file=sys.stderr)\n"
        f"deadline = time.time() + 30\nwhile not os.path.exists({str(go)!r}) "
        "and time.time() < deadline:\n    time.sleep(0.02)\nprint('finished')\n7")
    assert kernel.wait_until(lambda: "started on" in stream_text(kernel.for_request(msg_id)),
                             30)
    assert not kernel.idle(msg_id)
    go.write_text("go")
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 30)
    msgs = kernel.for_request(msg_id)
    out = stream_text(msgs)
    worker_pid = int(out.split()[2])
    assert worker_pid != int(kernel.value("import os\nos.getpid()"))
    assert out.index("started on") < out.index("finished")
    assert cell_output(msgs, "stderr") == "a warning\n"
    assert first(msgs, "execute_result")["content"]["data"]["text/plain"] == "7"


def test_nested_tasks_output_is_routed_and_coalesced(kernel):
    """Tasks the cell submits (and theirs) print into the cell, in a few messages."""
    kernel.value("@runtime.remote\ndef leaf(i):\n    for j in range(100):\n"
                 "        print('leaf', i, j)\n    return i\n"
                 "@runtime.remote\ndef branch(i):\n    print('branch', i)\n"
                 "    return runtime.get(leaf.remote(i))\n1")
    msgs = kernel.run("%%remote\nprint('total', sum(runtime.get([branch.remote(i) "
                      "for i in range(3)])))", timeout=60)
    text = stream_text(msgs)
    assert text.count("leaf ") == 300 and text.count("branch ") == 3 and "total 3" in text
    assert len([m for m in msgs if m["msg_type"] == "stream"]) < 60


def test_displays_figures_and_in_place_changes(kernel):
    """display(HTML), a matplotlib figure, ``+=`` and an item store, from a dask worker."""
    kernel.value("d = {'k': 1}\ncounter = 1\n1")
    msgs = kernel.run("%%remote\nfrom IPython.display import display, HTML\n"
                      "display(HTML('<b>from dask</b>'))\nimport matplotlib.pyplot as plt\n"
                      "plt.plot([1, 2])\nplt.show()\nd['k'] = 2\ncounter += 1", timeout=60)
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert [("text/html" in x, "image/png" in x) for x in shown] == [(True, False),
                                                                    (False, True)]
    assert kernel.value("d, counter") == "({'k': 2}, 2)"


def test_interrupt_is_one_line_and_the_next_cell_runs(kernel, tmp_path):
    """Interrupting a dask cell cancels it with one line of output."""
    started = tmp_path / "started"
    msg_id = kernel.submit(f"%%remote\nimport time\nopen({str(started)!r}, 'w').write('x')\n"
                           "time.sleep(60)")
    assert kernel.wait_until(started.exists, 30)
    kernel.km.interrupt_kernel()
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 5)
    err = first(kernel.for_request(msg_id), "error")
    assert err is not None and err["content"]["ename"] == "KeyboardInterrupt"
    assert len(err["content"]["traceback"]) == 1 and "cancelled" in err["content"]["traceback"][0]
    assert kernel.value("%%remote\n'after'") == "'after'"


def test_pending_notice_names_the_holder(kernel, tmp_path):
    """A --gpus 1 cell behind another says it waits for GPU=1 and who holds it."""
    gate = tmp_path / "gate"
    try:
        kernel.value("%%remote --bg -o gpu_job --gpus 1\nimport os, time\n"
                     f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n'g'")
        assert kernel.wait_until(lambda: kernel.value("gpu_job.state") == "'running'", 30)
        holder = kernel.value("gpu_job.task_id")
        assert f"(task {holder})" in first(kernel.run("%cluster status"), "execute_result")[
            "content"]["data"]["text/plain"]
        msgs = kernel.run("%%remote --gpus 1 --timeout 2.5\n'second'", timeout=30)
        notice = stream_text(msgs, "stderr")
        assert re.search(rf"needs CPU=1, GPU=1; GPU=1 held by %%remote \[\d+\] \(task "
                         rf"{holder}\) since \d+ s", notice), notice
        assert "never started" in first(msgs, "error")["content"]["evalue"]
    finally:
        gate.write_text("go")
    assert kernel.value("gpu_job.result(timeout=30)") == "'g'"


def test_setup_cell_runs_on_every_worker(kernel):
    """--all runs once per dask worker, lines labelled [w1] / [w2]; later cells see it."""
    msgs = kernel.run("%%remote --all\nimport os\nprint('ready in', os.getpid())\n"
                      "token = os.getpid()", timeout=60)
    assert first(msgs, "error") is None
    text = stream_text(msgs)
    pids = dict(re.findall(r"\[(w\d)\] ready in (\d+)", text))
    assert sorted(pids) == ["w1", "w2"] and len(set(pids.values())) == 2
    assert kernel.value("%%remote --gpus 1\nimport os\ntoken == os.getpid()") == "True"
    assert kernel.value("%%remote\nimport os\ntoken == os.getpid()") == "True"
