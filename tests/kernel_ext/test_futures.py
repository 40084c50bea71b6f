"""%%remote --bg handles are futures: await, concurrent.futures, runtime.get/wait, gather,
through a real kernel on the local and the sim backend."""

from __future__ import annotations

import pytest

from tests.kernel_ext.kernel_harness import Kernel, first

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel with the extension and a 2-CPU local cluster."""
    k = Kernel(str(tmp_path_factory.mktemp("futures")))
    try:
        k.value("%load_ext kernel_ext\nimport runtime, kernel_ext\n"
                "import concurrent.futures as cf\n%cluster connect --cpus 2\n1")
        yield k
    finally:
        k.close()


def bg(kernel: Kernel, name: str, gate: str, value: str) -> None:
    """Start a --bg cell named ``name`` that returns ``value`` once ``gate`` exists."""
    kernel.value(f"%%remote --bg -o {name}\nimport os, time\n"
                 f"while not os.path.exists({gate!r}):\n    time.sleep(0.02)\n{value}")


def test_concurrent_futures_wait_and_as_completed(kernel, tmp_path):
    """Handles work with concurrent.futures.wait (timeout, then completion) and as_completed
    (in finishing order)."""
    first_gate, second_gate = tmp_path / "g1", tmp_path / "g2"
    try:
        bg(kernel, "a", str(first_gate), "'A'")
        bg(kernel, "b", str(second_gate), "'B'")
        assert kernel.value("done, left = cf.wait([a, b], timeout=0.2)\n"
                            "len(done), len(left), isinstance(a, cf.Future)") == "(0, 2, True)"
        second_gate.write_text("go")
        assert kernel.value("next(cf.as_completed([a, b], timeout=20)).result()") == "'B'"
        first_gate.write_text("go")
        assert kernel.value("done, left = cf.wait([a, b], timeout=20)\n"
                            "sorted(f.result() for f in done), left") == "(['A', 'B'], set())"
    finally:
        first_gate.write_text("go")
        second_gate.write_text("go")


def test_await_and_runtime_get_wait(kernel, tmp_path):
    """``await job`` gives the value; runtime.get takes a handle or a list mixing handles
    and refs; runtime.wait returns the handles themselves."""
    gate = tmp_path / "gate"
    try:
        bg(kernel, "j", str(gate), "'J'")
        kernel.value("@runtime.remote\ndef plain():\n    return 'ref'\nr = plain.remote()\n1")
        assert kernel.value("runtime.wait([j, r], num_returns=1, timeout=20)[0] == [r]") == \
            "True"
        err = first(kernel.run("runtime.get(j, timeout=0.2)"), "error")
        assert err is not None and err["content"]["ename"] == "GetTimeoutError"
        gate.write_text("go")
        assert kernel.value("await j") == "'J'"
        assert kernel.value("runtime.get(j), runtime.get([j, r])") == "('J', ['J', 'ref'])"
        assert kernel.value("ready, _ = runtime.wait([r, j], num_returns=2)\n"
                            "ready == [r, j]") == "True"
    finally:
        gate.write_text("go")


def test_errors_travel_through_the_future(kernel):
    """A failing cell's error comes out of await, result() and cf.wait's futures."""
    kernel.value("%%remote --bg -o bad\nraise KeyError('missing')")
    assert kernel.value("cf.wait([bad], timeout=20)\ntype(bad.exception()).__name__") == \
        "'KeyError'"
    err = first(kernel.run("await bad"), "error")
    assert err is not None and err["content"]["ename"] == "KeyError"


def test_gather_shows_progress_and_returns_results(kernel):
    """kernel_ext.gather waits for several handles with a progress bar widget."""
    for i in range(3):
        kernel.value(f"%%remote --bg -o h{i}\nimport time\ntime.sleep(0.2)\n{i} * 10")
    msgs = kernel.run("kernel_ext.gather([h0, h1, h2])")
    res = first(msgs, "execute_result")
    assert res is not None and res["content"]["data"]["text/plain"] == "[0, 10, 20]"
    bar = first(msgs, "display_data")
    assert bar is not None and "IntProgress" in bar["content"]["data"]["text/plain"]
    updates = [m for m in kernel.messages if m["msg_type"] == "comm_msg"
               and m["content"]["data"].get("state", {}).get("description") == "3/3 done"]
    assert updates
    shown = first(kernel.run("kernel_ext.gather([1, 2])"), "error")
    assert shown is not None and "not a %%remote --bg handle" in shown["content"]["evalue"]


def test_futures_on_the_sim_backend(tmp_path):
    """On sim, await and runtime.get move virtual time; result(timeout) says virtual."""
    k = Kernel(str(tmp_path))
    try:
        k.value("%load_ext kernel_ext\nimport runtime, kernel_ext\n"
                "%cluster connect sim -O num_cpus=2\n1")
        k.value("%%remote --bg -o s1\nimport time\ntime.sleep(600)\n's1'")
        k.value("%%remote --bg -o s2\nimport time\ntime.sleep(60)\n's2'")
        err = first(k.run("s1.result(timeout=30)"), "error")
        assert err is not None and "within 30 virtual s" in err["content"]["evalue"]
        assert k.value("await s2") == "'s2'"
        assert k.value("runtime.get([s1, s2]), runtime.now() >= 600") == "(['s1', 's2'], True)"
        k.value("%%remote --bg -o s3\nimport time\ntime.sleep(5)\n3")
        assert k.value("kernel_ext.gather([s3], progress=False)") == "[3]"
        k.run("%cluster disconnect")
    finally:
        k.close()
