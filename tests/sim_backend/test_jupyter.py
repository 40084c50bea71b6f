"""The sim backend inside a real Jupyter kernel: interrupting a runaway body."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def kernel() -> Iterator[Any]:
    """A real IPython kernel (this interpreter) started in the repo root; killed after."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = km.provisioner.pid if km.provisioner is not None else None
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if pid is not None:
            try:
                psutil.Process(pid).wait(timeout=10)
            except psutil.NoSuchProcess:
                pass
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def _run(kc: Any, code: str) -> tuple[dict[str, Any], str]:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=60, output_hook=hook)
    return reply["content"], "".join(out)


def test_interrupting_a_runaway_body(kernel):
    """A body spinning in `while True` is interrupted: KeyboardInterrupt in the cell, no
    extra thread left, and after shutdown/init the toy gives its golden hash."""
    from tests.sim_backend.test_virtual_time import TOY_GOLDEN_HASH

    km, kc = kernel
    setup = ("import threading, runtime as rt\n"
             "base = threading.active_count()\n"
             "rt.init('sim', num_cpus=1)\n"
             "@rt.remote\n"
             "def spin():\n"
             "    while True:\n"
             "        pass\n")
    reply, _ = _run(kc, setup)
    assert reply["status"] == "ok"
    msg_id = kc.execute("print('spinning', flush=True); rt.get(spin.remote())")
    while True:  # wait until the cell runs (bounded by the test's timeout)
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and "spinning" in msg["content"]["text"]:
            break
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    check = ("rt.shutdown()\n"
             "from tests.sim_backend import toy\n"
             "print(toy.run()['hash'], threading.active_count() == base)\n")
    for _ in range(10):  # ipykernel aborts requests that arrive just after an error
        reply, text = _run(kc, check)
        if reply["status"] != "aborted":
            break
    assert reply["status"] == "ok", reply
    assert text.split() == [TOY_GOLDEN_HASH, "True"]


def test_print_in_a_body_lands_in_the_cell_that_ran_it(kernel):
    """Output printed by task bodies is attributed to the executing cell (ipykernel 7
    routes output by context; each body's greenlet runs in the cell's context)."""
    _km, kc = kernel
    reply, _ = _run(kc, "import runtime as rt\nrt.init('sim', num_cpus=1)\n"
                        "@rt.remote\ndef hello(i):\n    print('hello from', i)\n    return i\n")
    assert reply["status"] == "ok"
    msg_id = kc.execute("rt.get([hello.remote(i) for i in range(3)])")
    texts: list[tuple[str, str]] = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream":
            texts.append((msg["parent_header"].get("msg_id"), msg["content"]["text"]))
        if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id):
            break
    joined = "".join(t for _, t in texts)
    assert [f"hello from {i}" in joined for i in range(3)] == [True] * 3
    assert {mid for mid, _ in texts} == {msg_id}
    reply, _ = _run(kc, "rt.shutdown()")
    assert reply["status"] == "ok"
