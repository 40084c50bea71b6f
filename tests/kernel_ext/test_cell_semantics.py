"""%%remote behaving like a notebook cell, through a real kernel on the local backend:
``+=``, in-place changes, writable arrays, displays and figures, ``;``, ``sys.exit()``,
partial lines, nested output, ``--retries``, the pending notice and ``--timeout``."""

from __future__ import annotations

import re

import psutil
import pytest

from tests.kernel_ext.kernel_harness import Kernel, first, stream_text

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel with the extension and a 2-CPU local cluster; no process outlives it."""
    k = Kernel(str(tmp_path_factory.mktemp("semantics")))
    pid = k.km.provisioner.process.pid if k.km.provisioner else None
    children: set[int] = set()
    try:
        k.value("%load_ext kernel_ext\nimport runtime\n%cluster connect --cpus 2\n1")
        yield k
    finally:
        try:
            children.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        k.close()
    _gone, alive = psutil.wait_procs([psutil.Process(c) for c in children
                                      if psutil.pid_exists(c)], timeout=15)
    assert not alive, f"processes left behind: {alive}"


def errors(msgs):
    """The error messages of a request."""
    return [m for m in msgs if m["msg_type"] == "error"]


def test_augmented_assignment(kernel):
    """``counter += 1`` and ``names += [...]`` (also through ``global`` in a function)
    ship the name and bring it back."""
    kernel.value("counter = 1\nnames = ['a']\nn = 10\n1")
    msgs = kernel.run("%%remote\ncounter += 1\nnames += ['b']\n"
                      "def bump():\n    global n\n    n += 5\nbump()")
    assert not errors(msgs), errors(msgs)
    assert kernel.value("counter, names, n") == "(2, ['a', 'b'], 15)"


def test_in_place_changes_come_back_into_the_same_objects(kernel):
    """Item and attribute stores and method calls change the notebook's own objects (an
    alias sees them); a function from an earlier cell that appends to a global too."""
    kernel.value("d = {'k': 1}\nalias = d\nitems = [1, 2]\ncfg = {'a': 1}\n"
                 "class P:\n    def __init__(self):\n        self.x = 1\np = P()\n"
                 "log = []\ndef note(v):\n    log.append(v)\nuntouched = [9]\n"
                 "ids = (id(d), id(items), id(p), id(log))\n1")
    msgs = kernel.run("%%remote\nd['k'] = 2\nitems.append(3)\np.x = 100\ncfg.update(b=2)\n"
                      "note('from remote')\nprint(len(untouched))")
    assert not errors(msgs), errors(msgs)
    assert kernel.value("d, alias, items, p.x, cfg, log") == \
        "({'k': 2}, {'k': 2}, [1, 2, 3], 100, {'a': 1, 'b': 2}, ['from remote'])"
    assert kernel.value("ids == (id(d), id(items), id(p), id(log)), untouched") == \
        "(True, [9])"


def test_a_change_that_cannot_be_checked_is_reported(kernel):
    """A shipped value the worker cannot pickle again (so cannot compare) is named at the
    end of the cell, and the notebook keeps its value."""
    kernel.value("import os\nHOME_PID = os.getpid()\n"
                 "class Fussy:\n    def __init__(self):\n        self.v = 1\n"
                 "    def __getstate__(self):\n"
                 "        if os.getpid() != HOME_PID:\n"
                 "            raise TypeError('only picklable at home')\n"
                 "        return self.__dict__\n"
                 "fussy = Fussy()\n1")
    msgs = kernel.run("%%remote\nfussy.v = 2")
    assert not errors(msgs), errors(msgs)
    note = stream_text(msgs, "stderr")
    assert "'fussy' may have been changed in place on the worker" in note
    assert "cannot be checked" in note and "Fussy cannot be pickled here" in note
    assert kernel.value("fussy.v") == "1"


def test_shipped_numpy_arrays_are_writable(kernel):
    """A small and a large (out-of-band) array arrive writable; the writes come back into
    the notebook's arrays."""
    kernel.value("import numpy as np\nsmall = np.zeros(3)\nbig = np.zeros(300_000)\n"
                 "big_id = id(big)\n1")
    assert kernel.value("%%remote\nsmall[0] = 5\nbig[-1] = 7\n"
                        "(small.flags.writeable, big.flags.writeable)") == "(True, True)"
    assert kernel.value("small[0], big[-1], id(big) == big_id") == \
        "(np.float64(5.0), np.float64(7.0), True)"


def test_display_data_and_figures_land_in_the_cell_in_order(kernel):
    """display(HTML(...)), plt.show() and a figure left open come as display_data (PNG for
    figures) with the cell's parent, between the text printed around them."""
    msg_id = kernel.submit(
        "%%remote\nfrom IPython.display import display, HTML\nprint('before', flush=True)\n"
        "display(HTML('<b>remote html</b>'))\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 3, 2])\nplt.show()\nprint('middle', flush=True)\n"
        "plt.figure()\nplt.bar([1, 2], [3, 4])\nprint('after')")
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 60)
    msgs = kernel.for_request(msg_id)
    assert not errors(msgs), errors(msgs)
    seq = []
    for m in msgs:
        if m["msg_type"] == "stream":
            seq += [("text", w) for w in m["content"]["text"].split()]
        elif m["msg_type"] == "display_data":
            data = m["content"]["data"]
            seq.append(("html", None) if "text/html" in data else ("png", data["image/png"]))
    kinds = [k if k != "text" else v for k, v in seq]
    assert kinds == ["before", "html", "png", "middle", "after", "png"], kinds
    for kind, png in seq:
        if kind == "png":  # a real PNG, base64 as Jupyter sends it
            import base64

            assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_trailing_semicolon_hides_the_value(kernel):
    """``value;`` shows nothing, as in a normal cell; -o still stores it."""
    msgs = kernel.run("%%remote -o hidden\n6 * 7;")
    assert first(msgs, "execute_result") is None and not errors(msgs)
    assert kernel.value("hidden") == "42"


def test_sys_exit_is_one_clear_line(kernel):
    """sys.exit() in a cell is reported in one line, without IPython's 'To exit' warning."""
    msgs = kernel.run("%%remote\nimport sys\nprint('bye')\nsys.exit(3)")
    err = first(msgs, "error")
    assert err is not None and err["content"]["ename"] == "CellExit"
    assert len(err["content"]["traceback"]) == 1
    assert "sys.exit(3)" in err["content"]["traceback"][0]
    assert "To exit" not in stream_text(msgs, "stderr")
    assert "bye" in stream_text(msgs)
    assert kernel.value("%%remote\n'next cell fine'") == "'next cell fine'"


def test_partial_lines_arrive_before_a_newline(kernel, tmp_path):
    """A ``\\r`` progress line (no newline, no flush) reaches the cell while it runs."""
    go = tmp_path / "go"
    msg_id = kernel.submit(
        "%%remote\nimport os, time\nprint('step 1/2', end='\\r')\n"
        f"deadline = time.time() + 30\nwhile not os.path.exists({str(go)!r}) "
        "and time.time() < deadline:\n    time.sleep(0.02)\nprint('step 2/2')")
    assert kernel.wait_until(lambda: "step 1/2\r" in stream_text(kernel.for_request(msg_id)),
                             20)
    assert not kernel.idle(msg_id)
    go.write_text("go")
    assert kernel.wait_until(lambda: kernel.idle(msg_id), 30)
    assert stream_text(kernel.for_request(msg_id)) == "step 1/2\rstep 2/2\n"


def test_nested_tasks_output_lands_in_the_cell(kernel):
    """Tasks a cell submits print into that cell, coalesced."""
    kernel.value("@runtime.remote\ndef shout(i):\n    for j in range(200):\n"
                 "        print('nested', i, j)\n    return i\n1")
    msgs = kernel.run("%%remote\nprint(sum(runtime.get([shout.remote(i) for i in range(3)])))")
    text = stream_text(msgs)
    assert text.count("nested") == 600 and text.rstrip().endswith("3")
    assert len([m for m in msgs if m["msg_type"] == "stream"]) < 60


def test_retries_flag_and_crash_advice(kernel, tmp_path):
    """--retries N runs the cell again when its worker dies; without it, the crash error
    names the flag; a negative value is a UsageError naming it."""
    marker = tmp_path / "crashed-once"
    code = (f"import os\nif not os.path.exists({str(marker)!r}):\n"
            f"    open({str(marker)!r}, 'w').write('x')\n    os._exit(1)\n'survived'")
    assert kernel.value(f"%%remote --retries 1\n{code}", timeout=60) == "'survived'"
    err = first(kernel.run("%%remote\nimport os\nos._exit(1)", timeout=60), "error")
    assert err is not None and err["content"]["ename"] == "WorkerCrashedError"
    assert "%%remote --retries N" in err["content"]["traceback"][0]
    assert "max_retries" not in err["content"]["traceback"][0]
    shown = stream_text(kernel.run("%%remote --retries -1\n1"), "stderr")
    assert "UsageError" in shown and "--retries -1" in shown and "int >= 0" in shown


def test_pending_notice_timeout_and_status_holders(kernel, tmp_path):
    """A cell behind a busy resource says what it needs and what holds it; its --timeout
    says it never started; %cluster status shows the holder; a timeout while running says
    it ran."""
    go = tmp_path / "release"
    kernel.value("%%remote --bg -o hog --cpus 2\nimport os, time\n"
                 f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n'done'")
    assert kernel.wait_until(lambda: kernel.value("hog.state") == "'running'", 20)
    hog_task = kernel.value("hog.task_id")
    hog_cell = kernel.value("hog.number")
    status = first(kernel.run("%cluster status"), "execute_result")["content"]["data"]
    assert f"%%remote [{hog_cell}] (task {hog_task})" in status["text/plain"]
    assert "held by" in status["text/plain"] and "CPU=2" in status["text/plain"]
    assert f"%%remote [{hog_cell}] (task {hog_task})" in status["text/html"]
    msgs = kernel.run("%%remote --timeout 2.5\n'never'", timeout=30)
    notice = stream_text(msgs, "stderr")
    assert re.search(rf"pending for 1(\.\d)? s: needs CPU=1; CPU=1 held by %%remote "
                     rf"\[{hog_cell}\] \(task {hog_task}\) since \d+ s", notice), notice
    err = first(msgs, "error")
    assert err is not None and err["content"]["ename"] == "GetTimeoutError"
    assert "never started within 2.5 s" in err["content"]["evalue"]
    assert f"held by %%remote [{hog_cell}] (task {hog_task})" in err["content"]["evalue"]
    go.write_text("go")
    assert kernel.value("hog.result(timeout=30)") == "'done'"
    err = first(kernel.run("%%remote --timeout 1\nimport time\ntime.sleep(20)", timeout=30),
                "error")
    assert err is not None and "the cell ran for 1 s" in err["content"]["evalue"]
    assert "never started" not in err["content"]["evalue"]


def test_monitor_follow_returns_the_prompt(kernel):
    """%cluster monitor --text --follow S returns at once and prints on changes from the
    background, into that cell; --stop ends it."""
    follow_id = kernel.submit("%cluster monitor --text --follow 30")
    assert kernel.wait_until(lambda: kernel.idle(follow_id), 5)
    assert "in the background" in stream_text(kernel.for_request(follow_id))
    kernel.value("%%remote\n'tick'")
    assert kernel.wait_until(
        lambda: stream_text(kernel.for_request(follow_id)).count("local cluster") >= 2, 15)
    assert "stopped 1 monitor(s)" in stream_text(kernel.run("%cluster monitor --stop"))
    assert kernel.value("[m.running for m in get_ipython()._kernel_ext_magics.monitors]") \
        == "[]"


def test_status_names_an_actor_holding_resources(kernel):
    """An actor's held CPU shows in %cluster status as held by the actor, by name."""
    kernel.value("@runtime.remote(num_cpus=1)\nclass Keeper:\n    def ping(self):\n"
                 "        return 'pong'\nkeeper = Keeper.remote()\nruntime.get(keeper.ping.remote())")
    try:
        text = first(kernel.run("%cluster status"), "execute_result")["content"]["data"][
            "text/plain"]
        assert re.search(r"local-0  CPU=1  actor Keeper \(id \d+\)", text), text
    finally:
        kernel.value("runtime.kill(keeper)\n1")
