"""%%remote in a plain (terminal-style) IPython shell on the local backend: text output."""

from __future__ import annotations

import _thread
import re
import threading

import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell

import runtime

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def ip():
    """A plain IPython shell with the extension; shuts the cluster down and checks pids."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_ext")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        yield shell
    finally:
        shell.run_line_magic("cluster", "disconnect")
        shell.run_line_magic("unload_ext", "kernel_ext")
        runtime.shutdown()
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        _gone, alive = psutil.wait_procs(started, timeout=15)
        assert not alive, f"worker processes left behind: {alive}"


def test_autoconnect_output_pull_and_result(ip, capsys):
    """With no cluster, %%remote starts the local default and says so in one line;
    output is plain text on stdout; names come back; the result is returned."""
    if runtime.is_initialized():
        runtime.shutdown()
    ip.run_cell("offset = 100")
    res = ip.run_cell("%%remote\nvals = [offset + i for i in range(3)]\nprint('sum', sum(vals))\n"
                      "len(vals)")
    out = capsys.readouterr().out
    assert res.error_in_exec is None and res.result == 3
    notice = [line for line in out.splitlines() if "started the local default" in line]
    assert len(notice) == 1 and "%cluster connect" in notice[0]
    assert "sum 303" in out
    assert ip.user_ns["vals"] == [100, 101, 102]
    ip.run_cell("%%remote\nz = 5")
    assert "started the local default" not in capsys.readouterr().out  # only the first time


def test_pull_only_named_and_output_variable(ip):
    """--pull limits what comes back; -o stores the last value."""
    ip.run_cell("%%remote --pull keep -o answer\nkeep = 1\ndrop = 2\n40 + 2")
    assert ip.user_ns["keep"] == 1 and "drop" not in ip.user_ns
    assert ip.user_ns["answer"] == 42


def test_interrupt_cancels_in_process(ip, capsys):
    """A KeyboardInterrupt during the blocking wait cancels the task and re-raises."""
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        res = ip.run_cell("%%remote\nimport time\ntime.sleep(30)\nnever = 1")
    finally:
        timer.cancel()
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    # one line, no internal traceback
    assert "Traceback" not in text and 'File "' not in text, text
    lines = [ln for ln in text.splitlines() if "KeyboardInterrupt" in ln]
    task = max(runtime.current_backend().log.tasks)
    assert len(lines) == 1 and re.fullmatch(
        rf"KeyboardInterrupt: %%remote \[\d+\]: interrupted; task {task} cancelled", lines[0])
    log = runtime.current_backend().log
    last = max(log.tasks.values(), key=lambda r: r.id)
    assert last.state == "cancelled" and "never" not in ip.user_ns
    assert ip.run_cell("%%remote\n2 * 21").result == 42


def test_text_monitor_and_status(ip, capsys):
    """%cluster monitor --text prints per-device usage and task counts."""
    ip.run_line_magic("cluster", "monitor --text")
    out = capsys.readouterr().out
    assert "local cluster" in out and "CPU [" in out and "finished" in out
    status = ip.run_line_magic("cluster", "status")
    assert "local-0" in repr(status)


def test_connect_twice_is_refused(ip):
    """%cluster connect while connected says to disconnect first."""
    from IPython.core.error import UsageError

    if not runtime.is_initialized():
        ip.run_line_magic("cluster", "connect --cpus 1")
    with pytest.raises(UsageError, match="disconnect first"):
        ip.run_line_magic("cluster", "connect")


def test_infeasible_request_fails_fast(ip, capsys):
    """Asking for a GPU on a CPU-only cluster fails at submit, naming the resource."""
    if not runtime.is_initialized():
        ip.run_line_magic("cluster", "connect --cpus 1")
    err = ip.run_cell("%%remote --gpus 1\nx = 1").error_in_exec
    assert isinstance(err, runtime.InfeasibleRequestError)
    shown = capsys.readouterr()
    assert "GPU" in shown.out + shown.err and "Traceback" not in shown.out + shown.err


def test_unpicklable_assignment_is_reported_not_fatal(ip, capsys):
    """A name that cannot come back is named on stderr; the others arrive."""
    res = ip.run_cell("%%remote\nimport threading\nlk_remote = threading.Lock()\nok_remote = 1")
    assert res.error_in_exec is None and ip.user_ns["ok_remote"] == 1
    assert "lk_remote" not in ip.user_ns
    err = capsys.readouterr().err
    assert "'lk_remote' was not brought back" in err and "lock" in err


def test_background_timeout_cancels(ip):
    """--bg --timeout S cancels the task after S seconds; result() then raises."""
    ip.run_cell("%%remote --bg --timeout 0.5 -o late_job\nimport time\ntime.sleep(30)")
    job = ip.user_ns["late_job"]
    with pytest.raises(runtime.TaskCancelledError):
        job.result(timeout=20)
    assert job.state == "cancelled"
