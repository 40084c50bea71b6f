"""A real IPython kernel driven through jupyter_client, for the kernel tests."""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from typing import Any

from jupyter_client.manager import KernelManager

#: The repository root (the kernel imports this checkout's packages).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Kernel:
    """A started kernel plus a thread that drains every iopub message into ``messages``."""

    def __init__(self, cwd: str) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.kernel_spec.argv[0] = sys.executable  # the project's interpreter
        env = dict(os.environ)
        # the repo first on the path, so this checkout's packages are the ones imported
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        env.pop("JPY_PARENT_PID", None)
        self.km.start_kernel(cwd=cwd, env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - channels closing
                return
            with self._lock:
                self.messages.append(msg)

    def for_request(self, msg_id: str) -> list[dict[str, Any]]:
        """The iopub messages whose parent is ``msg_id``."""
        with self._lock:
            return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]

    def wait_until(self, cond: Any, timeout: float) -> bool:
        """Poll ``cond()`` until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            self._stop.wait(0.02)
        return bool(cond())

    def submit(self, code: str) -> str:
        """Send an execute request; returns its msg_id."""
        return self.kc.execute(code)

    def idle(self, msg_id: str) -> bool:
        """Whether the request's busy period is over."""
        return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   for m in self.for_request(msg_id))

    def run(self, code: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Execute and wait until idle; returns this request's iopub messages."""
        msg_id = self.submit(code)
        if not self.wait_until(lambda: self.idle(msg_id), timeout):
            raise TimeoutError(f"cell did not finish in {timeout} s: {code!r}")
        return self.for_request(msg_id)

    def value(self, code: str, timeout: float = 60) -> str:
        """The text/plain execute_result of ``code`` (raises with the error if it failed)."""
        msgs = self.run(code, timeout)
        for m in msgs:
            if m["msg_type"] == "error":
                raise AssertionError(f"{code!r} failed: {m['content']['ename']}: "
                                     f"{m['content']['evalue']}")
            if m["msg_type"] == "execute_result":
                return m["content"]["data"]["text/plain"]
        raise AssertionError(f"{code!r} gave no result: {[m['msg_type'] for m in msgs]}")

    def close(self) -> None:
        """Shut the kernel down (and with it the cluster's workers)."""
        self._stop.set()
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=False)
        self._thread.join(timeout=2)


def stream_text(msgs: list[dict[str, Any]], name: str = "stdout") -> str:
    """The concatenated text of the stream messages for ``name``."""
    return "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def cell_output(msgs: list[dict[str, Any]], name: str = "stdout") -> str:
    """``stream_text`` without the cell's own status lines (``%%remote [N]: pending...``,
    ``...: started on X after waiting``), which appear only when the cell had to wait."""
    lines = stream_text(msgs, name).splitlines(keepends=True)
    return "".join(ln for ln in lines if not re.match(r"%%remote \[\d+\]: (pending|started on)",
                                                      ln))


def first(msgs: list[dict[str, Any]], msg_type: str) -> dict[str, Any] | None:
    """The first message of this type, if any."""
    return next((m for m in msgs if m["msg_type"] == msg_type), None)
