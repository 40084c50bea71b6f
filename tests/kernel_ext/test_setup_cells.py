"""%%remote --all through a real kernel on a two-node local cluster: one copy per worker,
output labelled per node, names kept on the workers, replayed on a worker added later."""

from __future__ import annotations

import ast
import re

import pytest

from tests.kernel_ext.kernel_harness import Kernel, first, stream_text

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel on a local cluster of two one-CPU nodes (one worker process each)."""
    k = Kernel(str(tmp_path_factory.mktemp("setup")))
    try:
        k.value("%load_ext kernel_ext\nimport runtime\n"
                "nodes = [{'name': 'cpu', 'resources': {'CPU': 1}, 'count': 2}]\n"
                "%cluster connect -O nodes=nodes\n1")
        yield k
    finally:
        k.close()


def test_runs_on_every_worker_with_labelled_output(kernel):
    """Each worker process runs the cell once; its lines are labelled with the node; the
    result maps each worker to its value; later cells there see the names."""
    msgs = kernel.run("%%remote --all\nimport os\nprint('setup in', os.getpid())\n"
                      "where = os.getpid()\nwhere")
    assert first(msgs, "error") is None
    text = stream_text(msgs)
    labelled = dict(re.findall(r"\[(cpu-\d) #1\] setup in (\d+)", text))
    pids = ast.literal_eval(kernel.value("sorted(runtime.current_backend().worker_pids())"))
    assert sorted(labelled) == ["cpu-0", "cpu-1"] and sorted(map(int, labelled.values())) == pids
    result = ast.literal_eval(first(msgs, "execute_result")["content"]["data"]["text/plain"])
    assert result == {f"{node} (pid {pid})": int(pid) for node, pid in labelled.items()}
    for _ in range(3):
        assert kernel.value("%%remote\nimport os\nwhere == os.getpid()") == "True"
    assert kernel.value("'where' in globals()") == "False"  # the names stay on the workers


def test_a_worker_added_later_runs_it_first(kernel, tmp_path):
    """A node added by %cluster scale runs the setup cell before its first cell."""
    kernel.run("%cluster scale cpu 3")
    gate = tmp_path / "gate"
    try:
        for name in ("busy0", "busy1"):  # first-fit: they take cpu-0 and cpu-1
            kernel.value(f"%%remote --bg -o {name}\nimport os, time\n"
                         f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)")
        assert kernel.wait_until(
            lambda: kernel.value("busy0.state, busy1.state") == "('running', 'running')", 20)
        msgs = kernel.run("%%remote\nimport os\n(where == os.getpid(), os.getpid())")
        assert first(msgs, "error") is None
        text = stream_text(msgs)
        same, pid = ast.literal_eval(first(msgs, "execute_result")["content"]["data"][
            "text/plain"])
        assert same is True
        assert f"setting up this worker (pid {pid}) first" in text and f"setup in {pid}" in text
        assert kernel.value("runtime.current_backend().log.tasks["
                            "max(runtime.current_backend().log.tasks)].node") == "'cpu-2'"
    finally:
        gate.write_text("go")
    kernel.value("busy0.result(timeout=30), busy1.result(timeout=30)")


def test_failing_setup_cell_and_bad_flags(kernel):
    """A setup cell that fails shows the remote error and is not kept; --all with flags it
    cannot honour is a UsageError naming the flag."""
    before = kernel.value("len(get_ipython()._kernel_ext_magics.setups)")
    err = first(kernel.run("%%remote --all\nraise ValueError('no model here')"), "error")
    assert err is not None and err["content"]["ename"] == "ValueError"
    assert "no model here" in "\n".join(err["content"]["traceback"])
    assert kernel.value("len(get_ipython()._kernel_ext_magics.setups)") == before
    shown = stream_text(kernel.run("%%remote --all --bg\nx = 1"), "stderr")
    assert "UsageError" in shown and "--all with --bg" in shown
