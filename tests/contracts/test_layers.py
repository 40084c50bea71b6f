"""The tree's layers hold: imports point down only, there is no import cycle, and importing
the simulator (or a policy) loads no backend and nothing of Jupyter or dask."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "simulator", "kernel_ext")

#: Each layer may import only itself and the layers listed after it (prefixes of module names).
LAYERS = [
    ("kernel_ext", ()),  # the notebook surface may import anything of ours
    ("runtime.backends", ("runtime", "simulator")),
    ("simulator", ("simulator", "runtime.control", "runtime.policies", "runtime.autoscaling",
                   "runtime.cluster", "runtime.resources", "runtime.errors", "runtime.events")),
    ("runtime.control", ("runtime.control", "runtime.policies", "runtime.autoscaling",
                         "runtime.cluster", "runtime.resources", "runtime.errors",
                         "runtime.events")),
    ("runtime.policies", ("runtime.policies", "runtime.cluster", "runtime.resources",
                          "runtime.errors")),
    ("runtime.autoscaling", ("runtime.autoscaling", "runtime.cluster", "runtime.resources",
                             "runtime.errors")),
    ("runtime.cluster", ("runtime.cluster", "runtime.resources", "runtime.errors")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules ``path`` imports at run time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n:
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _layer(mod: str) -> tuple[str, tuple[str, ...]] | None:
    for name, allowed in LAYERS:
        if mod == name or mod.startswith(name + "."):
            return name, allowed
    return None


def test_imports_point_down_only():
    """No module imports a layer above its own (policies never import the control plane or a
    backend, the simulator never imports a backend or the API, and so on)."""
    bad = []
    for mod, deps in sorted(_graph().items()):
        layer = _layer(mod)
        if layer is None or not layer[1]:
            continue
        for dep in sorted(deps):
            if dep.split(".")[0] not in PACKAGES or dep == "runtime":
                continue
            if not any(dep == a or dep.startswith(a + ".") for a in layer[1]):
                bad.append(f"{mod} imports {dep}")
    assert not bad, "\n".join(bad)


def test_there_is_no_import_cycle():
    """The module graph (every run-time import, lazy ones too) has no cycle; package
    ``__init__`` re-exports are left out (they are the one public namespace)."""
    graph = {m: {d for d in deps if d not in ("runtime", "simulator", "kernel_ext")}
             for m, deps in _graph().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d.rsplit(".", 1)[0] == m:
                continue  # a package importing its own submodule (its __init__)
            if state.get(d) == 1 and not m.startswith(d + "."):
                cycle.extend(path[path.index(d):] + [m, d] if d in path else [m, d])
                return True
            if state.get(d) is None and visit(d, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("module", ["simulator", "runtime.policies", "runtime.control"])
def test_importing_the_simulator_or_a_policy_loads_no_backend(module):
    """Importing the simulator, the policies or the control plane loads no backend module and
    nothing of IPython, ipywidgets or dask."""
    code = (f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith("
            f"('runtime.backends.local', 'runtime.backends.dask', 'runtime.backends.sim', "
            f"'IPython', 'ipywidgets', 'dask', 'distributed', 'kernel_ext'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
