"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

#: Seconds one cell may take, and the whole notebook (pytest-timeout).
CELL_TIMEOUT = 120
NOTEBOOK_TIMEOUT = 300


def test_there_are_notebooks():
    """The tour exists (so the parametrised test below is not silently empty)."""
    assert any(p.name == "01-tour.ipynb" for p in NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cell runs without error (cells tagged raises-exception must raise);
    no process the kernel started outlives it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(path, as_version=4)
    children: set[int] = set()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})

    def record(**_kw: object) -> None:
        """Remember every process the kernel has started so far."""
        proc = client.km.provisioner.process if client.km and client.km.provisioner else None
        if proc is not None:
            try:
                children.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass

    client.on_cell_executed = record
    client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            assert errors, f"{path.name}: a cell tagged raises-exception did not raise"
        else:
            assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    left = [psutil.Process(pid) for pid in children if psutil.pid_exists(pid)]
    _gone, alive = psutil.wait_procs(left, timeout=15)
    assert not alive, f"{path.name}: processes left behind: {alive}"
