"""%%remote and %cluster through a real Jupyter kernel (jupyter_client, iopub messages)."""

from __future__ import annotations

import psutil
import pytest

from tests.kernel_ext.kernel_harness import Kernel, first, stream_text

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel with the extension and a 2-CPU local cluster; no process outlives it."""
    k = Kernel(str(tmp_path_factory.mktemp("kernel")))
    pid = k.km.provisioner.process.pid if k.km.provisioner else None
    children: set[int] = set()

    def record() -> None:
        try:
            children.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    try:
        k.value("%load_ext kernel_ext\n%cluster connect --cpus 2\n1")
        record()
        yield k
    finally:
        record()  # workers started since (replacements after a crash) count too
        k.close()
    assert pid is not None
    _gone, alive = psutil.wait_procs([psutil.Process(c) for c in children
                                      if psutil.pid_exists(c)], timeout=15)
    assert not alive, f"processes left behind: {alive}"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stream_result_and_pulled_names(kernel):
    """Output lands in the cell (its parent), the last expression is the result,
    and assigned names (functions and modules included) come back."""
    kernel.value("base = 7\ndef triple(v):\n    return 3 * v\n"
                 "class Box:\n    def __init__(self, v):\n        self.v = v\n1")
    msg_id = kernel.submit("%%remote\nimport math\nx = triple(base)\nbox = Box(x)\n"
                           "print('remote says', x)\nroot = math.sqrt(x * 3)\nx + 1")
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 60)
    msgs = kernel.for_request(msg_id)
    assert "remote says 21" in stream_text(msgs)
    result = first(msgs, "execute_result")
    assert result is not None and result["content"]["data"]["text/plain"] == "22"
    assert first(msgs, "error") is None
    # pulled back: checked by a later, ordinary cell
    assert kernel.value("(x, root, math.pi > 3, type(triple).__name__)") == \
        "(21, 7.937253933193772, True, 'function')"
    assert kernel.value("isinstance(box, Box), box.v") == "(True, 21)"


def test_output_streams_while_the_cell_runs(kernel, tmp_path):
    """The first print arrives while the remote cell still waits for the test's go."""
    go = tmp_path / "go"
    msg_id = kernel.submit(
        "%%remote\nimport os, time\nprint('started', flush=True)\n"
        f"deadline = time.time() + 30\nwhile not os.path.exists({str(go)!r}) "
        "and time.time() < deadline:\n    time.sleep(0.02)\nprint('finished')")
    assert kernel.wait_until(lambda: "started" in stream_text(kernel.for_request(msg_id)), 30)
    assert not kernel.idle(msg_id)  # still running: the output was streamed
    go.write_text("go")
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 30)
    out = stream_text(kernel.for_request(msg_id))
    assert out.index("started") < out.index("finished")


def test_flood_of_output_is_coalesced(kernel):
    """Five thousand prints arrive complete, in a handful of stream messages."""
    msgs = kernel.run("%%remote\nfor i in range(5000):\n    print('line', i)")
    streams = [m for m in msgs if m["msg_type"] == "stream"]
    text = stream_text(msgs)
    assert text.count("\n") == 5000 and "line 4999" in text
    assert len(streams) < 100


def test_remote_exception_shows_remote_frames_and_keeps_type(kernel):
    """The error message names the exception type; its traceback is the cell's frames only."""
    msgs = kernel.run("%%remote\ndef check(v):\n    raise ValueError(f'bad value {v}')\n"
                      "check(5)")
    err = first(msgs, "error")
    assert err is not None
    c = err["content"]
    assert c["ename"] == "ValueError" and "bad value 5" in c["evalue"]
    tb = "\n".join(c["traceback"])
    assert "%%remote task" in tb and "on node local-0" in tb
    assert "<remote cell" in tb and "raise ValueError" in tb
    assert "kernel_ext" not in tb and "run_cell" not in tb and "worker" not in tb
    # the local object is both the cause's type and the runtime's TaskError
    assert kernel.value("import sys, runtime\ne = sys.last_value\n"
                        "(isinstance(e, ValueError), isinstance(e, runtime.TaskError))") == \
        "(True, True)"


def test_usage_and_shipping_errors_before_submission(kernel):
    """Unknown flags and unpicklable variables fail in the kernel, naming the problem."""
    msgs = kernel.run("%%remote --frobnicate\nx = 1")
    shown = stream_text(msgs, "stderr")  # IPython shows usage errors as text, no traceback
    assert "UsageError" in shown and "--frobnicate" in shown and "usage: %%remote" in shown
    assert "Traceback" not in shown and first(msgs, "error") is None
    before = kernel.value("len(runtime.current_backend().log.tasks)")
    kernel.value("import threading\nlk = threading.Lock()\n1")
    err = first(kernel.run("%%remote\nprint(lk)"), "error")
    assert err is not None and err["content"]["ename"] == "SerializationError"
    assert "'lk'" in err["content"]["evalue"] and "lock" in err["content"]["evalue"]
    assert kernel.value("len(runtime.current_backend().log.tasks)") == before


def test_interrupt_cancels_the_remote_task(kernel, tmp_path):
    """Interrupting the kernel returns promptly, cancels the task, and the next cell works."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    msg_id = kernel.submit(
        "%%remote\nimport os, time\n"
        f"open({str(started)!r}, 'w').write(str(os.getpid()))\n"
        f"time.sleep(60)\nopen({str(finished)!r}, 'w').write('done')")
    assert kernel.wait_until(started.exists, 30)
    kernel.km.interrupt_kernel()
    # control comes back within about a second (cancel; force after 1 s): 3 s is generous
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 3)
    err = first(kernel.for_request(msg_id), "error")
    assert err is not None and err["content"]["ename"] == "KeyboardInterrupt"
    # the worker is free again: every CPU is available, and the task's process is idle
    assert kernel.value("import runtime\n"
                        "runtime.available_resources() == runtime.cluster_resources()") == "True"
    assert kernel.value("_t = runtime.current_backend().log.tasks\n"
                        "[r.state for r in _t.values() if r.state in ('running', 'pending')]"
                        ) == "[]"
    assert kernel.value("max(_t.values(), key=lambda r: r.id).state") == "'cancelled'"
    assert kernel.value("%%remote\n40 + 2") == "42"
    assert not finished.exists()


def test_remote_crash_does_not_hang_the_kernel(kernel):
    """A cell that kills its worker fails with a clear error; the next cell works."""
    msgs = kernel.run("%%remote\nimport os\nos._exit(3)", timeout=60)
    err = first(msgs, "error")
    assert err is not None and err["content"]["ename"] == "WorkerCrashedError"
    assert kernel.value("%%remote\n'still fine'") == "'still fine'"


def test_background_cell_returns_a_handle(kernel, tmp_path):
    """--bg returns at once with a handle; pulled names arrive when it finishes, and
    output printed later still lands in the cell that started it."""
    go = tmp_path / "go-bg"
    bg_id = kernel.submit(
        "%%remote --bg -o job\nimport os, time\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
        "print('late output', flush=True)\nlate = 'arrived'\n'bg result'")
    assert kernel.wait_until(lambda: kernel.idle(bg_id), 30)
    res = first(kernel.for_request(bg_id), "execute_result")
    assert res is not None
    shown = res["content"]["data"]["text/plain"]
    assert "%%remote" in shown and ("running" in shown or "pending" in shown)
    assert kernel.value("'late' in globals(), job.done()") == "(False, False)"
    go.write_text("go")
    later_id = kernel.submit("job.result(timeout=30)")
    assert kernel.wait_until(lambda: kernel.idle(later_id), 30)
    assert first(kernel.for_request(later_id), "execute_result")["content"]["data"][
        "text/plain"] == "'bg result'"
    assert kernel.wait_until(lambda: "late output" in stream_text(kernel.for_request(bg_id)),
                             10)
    assert "late output" not in stream_text(kernel.for_request(later_id))
    assert kernel.value("late, job.state") == "('arrived', 'finished')"


def test_background_cell_can_be_cancelled(kernel):
    """handle.cancel() stops a background task; result() then raises a cancellation error."""
    kernel.value("%%remote --bg -o slow\nimport time\ntime.sleep(60)")
    assert kernel.value("slow.cancel()") == "True"
    err = first(kernel.run("slow.result(timeout=10)"), "error")
    assert err is not None and err["content"]["ename"] == "TaskCancelledError"
    assert kernel.value("slow.state") == "'cancelled'"


def test_status_and_presets(kernel):
    """%cluster status shows nodes and tasks; a preset magic runs with its flags."""
    msgs = kernel.run("%cluster status")
    res = first(msgs, "execute_result")
    assert res is not None and "local-0" in res["content"]["data"]["text/plain"]
    assert "text/html" in res["content"]["data"]
    kernel.run("%remote_preset two --cpus 2")
    assert kernel.value("%%two\n'ran'") == "'ran'"
    # the task the preset submitted asked for 2 CPUs (from the cluster log's event stream)
    assert kernel.value("import runtime\n_rec = max(runtime.current_backend().log.tasks.values(),"
                        " key=lambda r: r.id)\n(_rec.name[:9], _rec.resources, _rec.state)") == \
        "('%%remote[', {'CPU': 2.0}, 'finished')"


def test_monitor_widget_updates_from_events(kernel):
    """%cluster monitor displays a widget whose state follows the event stream."""
    msgs = kernel.run("%cluster monitor --interval 0.1")
    res = first(msgs, "execute_result") or first(msgs, "display_data")
    assert res is not None
    assert "application/vnd.jupyter.widget-view+json" in res["content"]["data"]
    before = len(kernel.messages)
    kernel.value("%%remote\n'tick'")

    def updated() -> bool:
        """Whether a widget update mentioning finished tasks arrived."""
        return any(m["msg_type"] == "comm_msg" and "finished" in str(m["content"]["data"])
                   for m in kernel.messages[before:])

    assert kernel.wait_until(updated, 15)
    assert kernel.value("_m = get_ipython()._kernel_ext_magics.monitors[-1]\n"
                        "_m.close()\n_m.running") == "False"
