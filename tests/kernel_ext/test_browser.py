"""The notebook surface in a real browser: JupyterLab + headless Chromium + Playwright
(the monitor widget, and a matplotlib figure drawn by a %%remote cell on a worker).

Needs ``pip install jupyterlab playwright`` and a system Chromium (``apt-get install
chromium``; never ``playwright install``). Skipped with the reason when any is missing.
Recipe and pitfalls: ``shared/notes/browser-widget-test.md`` of the project workspace.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and os.path.exists(p)),
                None)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]


def _missing() -> str | None:
    try:
        import jupyterlab  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install jupyterlab playwright)"
    if CHROMIUM is None:
        return "no system Chromium (apt-get install chromium)"
    return None


CELLS = [
    "%load_ext kernel_ext\n%cluster connect --cpus 2\nimport runtime, time\n"
    "monitor = get_ipython().run_line_magic('cluster', 'monitor --interval 0.2')\nmonitor",
    "@runtime.remote\ndef step(i):\n    time.sleep(0.05)\n    return i\n"
    "sum(runtime.get([step.remote(i) for i in range(20)]))",
    "rerun = runtime.get([step.remote(i) for i in range(10)])\nmonitor",
]


FIGURE_CELLS = [
    "%load_ext kernel_ext\n%cluster connect --cpus 1\n1",
    "%%remote\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 2])\n"
    "plt.title('remote figure')\nplt.show()\nprint('drawn on a worker')",
]


def _notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lab(tmp_path):
    """A private JupyterLab on 127.0.0.1 serving monitor.ipynb and figure.ipynb; stopped
    (with its kernels)."""
    why = _missing()
    if why:
        pytest.skip(why)
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    _notebook(nbdir / "monitor.ipynb", CELLS)
    _notebook(nbdir / "figure.ipynb", FIGURE_CELLS)
    home = tmp_path / "jhome"
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"), IPYTHONDIR=str(home / "ipython"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={nbdir}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("jupyter lab exited:\n" + (tmp_path / "lab.log").read_text())
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}",
                                       timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/monitor.ipynb?token={token}",
               "figure_url": f"http://127.0.0.1:{port}/lab/tree/figure.ipynb?token={token}",
               "children": children, "proc": proc}
    finally:
        try:
            children.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        proc.send_signal(signal.SIGTERM)  # also shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in children
                                          if psutil.pid_exists(p)], timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes left behind by the lab server: {alive}"


def _run_cell(page, index: int) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")


def _wait_idle(page) -> None:
    page.wait_for_function("""() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
        .some(e => /ipykernel\\) \\| Idle/.test(e.textContent))""", timeout=60_000)


def test_monitor_widget_updates_live_in_the_browser(lab, tmp_path):
    """The widget renders, follows the event stream live, and after a page reload a
    fresh view of the same (still running) monitor shows the new state."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        try:
            page.goto(lab["url"], wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
            _wait_idle(page)
            _run_cell(page, 0)
            monitor = page.locator(".jp-OutputArea .nbcluster-monitor").first
            monitor.wait_for(timeout=60_000)
            assert "local cluster" in monitor.inner_text()
            _run_cell(page, 1)
            page.wait_for_function("""() => [...document.querySelectorAll(
                '.nbcluster-monitor .nbc-finished')].some(e => /finished 2\\d/.test(e.textContent))""",
                timeout=60_000)
            page.screenshot(path=str(tmp_path / "monitor.png"))
            assert page.locator(".jp-OutputArea [data-mime-type="
                                "'application/vnd.jupyter.stderr']").count() == 0
            # the browser reloads: the kernel and the monitor's thread live on
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
            _wait_idle(page)
            _run_cell(page, 2)
            page.wait_for_function("""() => [...document.querySelectorAll(
                '.nbcluster-monitor .nbc-finished')].some(e => /finished 3\\d/.test(e.textContent))""",
                timeout=60_000)
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"))  # for the post-mortem
            raise
        finally:
            browser.close()


def test_remote_figure_shows_in_jupyterlab(lab, tmp_path):
    """plt.show() in a %%remote cell (on a local worker process) shows the figure as an
    image in the notebook, between the text around it, not as 'Figure(640x480)'."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.goto(lab["figure_url"], wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
            _wait_idle(page)
            _run_cell(page, 0)
            _wait_idle(page)
            _run_cell(page, 1)
            out = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea")
            img = out.locator("img[src^='data:image/png']").first
            img.wait_for(timeout=60_000)
            page.wait_for_function("""() => [...document.querySelectorAll(
                '.jp-OutputArea')].some(e => /drawn on a worker/.test(e.textContent))""",
                timeout=60_000)
            box = img.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 150
            assert "Figure(" not in out.inner_text()
            page.screenshot(path=str(tmp_path / "figure.png"))
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"))  # for the post-mortem
            raise
        finally:
            browser.close()
