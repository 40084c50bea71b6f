"""%%remote on the sim backend through a real kernel: an interrupt cancels the cell's task
and leaves the simulation usable; the pending notice and --timeout in virtual time;
displays, in-place changes and --all."""

from __future__ import annotations

import re

import pytest

from tests.kernel_ext.kernel_harness import Kernel, first, stream_text

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel on a sim cluster of one node with 4 CPUs and 1 GPU."""
    k = Kernel(str(tmp_path_factory.mktemp("sim")))
    try:
        k.value("%load_ext kernel_ext\nimport runtime\n"
                "sim_nodes = [{'name': 'gpu', 'resources': {'CPU': 4, 'GPU': 1}}]\n"
                "%cluster connect sim -O nodes=sim_nodes\n1")
        yield k
    finally:
        k.close()


def test_interrupt_cancels_the_task_and_the_simulation_goes_on(kernel):
    """Interrupting a cell that runs in virtual time shows one line; its task is cancelled,
    the GPU it held is free, and the next cells run."""
    msg_id = kernel.submit("%%remote --gpus 1\nimport time\nprint('looping', flush=True)\n"
                           "while True:\n    time.sleep(1)")
    assert kernel.wait_until(lambda: "looping" in stream_text(kernel.for_request(msg_id)), 20)
    kernel.km.interrupt_kernel()
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 5)
    err = first(kernel.for_request(msg_id), "error")
    assert err is not None and err["content"]["ename"] == "KeyboardInterrupt"
    assert len(err["content"]["traceback"]) == 1
    assert re.fullmatch(r"KeyboardInterrupt: %%remote \[\d+\]: interrupted; task \d+ "
                        r"cancelled", err["content"]["traceback"][0])
    assert kernel.value("max(runtime.current_backend().log.tasks.values(), "
                        "key=lambda r: r.id).state") == "'cancelled'"
    assert kernel.value("%%remote --gpus 1\n'the gpu is free again'") == \
        "'the gpu is free again'"
    assert "sim cluster" in first(kernel.run("%cluster status"), "execute_result")[
        "content"]["data"]["text/plain"]


def test_pending_notice_and_timeout_in_virtual_time(kernel):
    """A cell behind the busy GPU says (in virtual seconds) what it needs and what holds
    it; its --timeout says it never started."""
    kernel.value("%%remote --bg -o holder --gpus 1\nimport time\ntime.sleep(3600)\n'h'")
    holder = kernel.value("holder.task_id")
    msgs = kernel.run("%%remote --gpus 1 --timeout 5\n'late'")
    notice = stream_text(msgs, "stderr")
    assert re.search(rf"pending for 1 virtual s: needs CPU=1, GPU=1; GPU=1 held by "
                     rf"%%remote \[\d+\] \(task {holder}\) since \d+ virtual s", notice), notice
    err = first(msgs, "error")
    assert err is not None and "never started within 5 virtual s" in err["content"]["evalue"]
    assert kernel.value("holder.result(timeout=7200)") == "'h'"


def test_display_in_place_and_augmented_assignment_on_sim(kernel):
    """Displays and figures reach the cell, in-place changes and ``+=`` come back."""
    kernel.value("counts = {'n': 1}\ntotal = 10\n1")
    msgs = kernel.run("%%remote\nfrom IPython.display import display, HTML\n"
                      "display(HTML('<i>from sim</i>'))\ncounts['n'] += 1\ntotal += 5\n"
                      "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert shown[0]["text/html"] == "<i>from sim</i>" and "image/png" in shown[1]
    assert kernel.value("counts, total") == "({'n': 2}, 15)"


def test_setup_cell_on_sim(kernel):
    """--all on sim runs once (every node shares this process: its output is not labelled)
    and later cells see its names."""
    msgs = kernel.run("%%remote --all\nprint('setting up')\nshared_model = 'loaded'")
    text = stream_text(msgs)
    assert text.count("setting up") == 1
    assert re.search(r"ran on sim: every node, one process \(pid \d+\)", text), text
    assert kernel.value("%%remote\nshared_model") == "'loaded'"
    assert kernel.value("'shared_model' in globals()") == "False"
