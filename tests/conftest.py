"""Suite-wide guard: no process a test started may outlive the test session.

Every fixture that starts processes (worker pools, dask schedulers and workers,
Jupyter kernels, JupyterLab, Chromium) must stop them in its teardown; this
check catches the ones that do not, naming them.
"""

from __future__ import annotations

import time

import psutil
import pytest

# multiprocessing's own helpers live as long as the interpreter, by design.
_ALLOWED = ("multiprocessing.forkserver", "multiprocessing.resource_tracker",
            "from multiprocessing.forkserver", "from multiprocessing.resource_tracker")


def _leftovers() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() == psutil.STATUS_ZOMBIE or any(a in cmd for a in _ALLOWED):
                continue
        except psutil.Error:
            continue
        out.append(p)
    return out


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """After the whole session, every child process the tests started is gone."""
    yield
    import runtime

    runtime.shutdown()
    deadline = time.monotonic() + 15
    left = _leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers()
    if left:
        desc = []
        for p in left:
            try:
                desc.append(f"pid {p.pid}: {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                continue
            p.kill()
        if desc:
            pytest.fail("processes outlived the test session:\n" + "\n".join(desc))
