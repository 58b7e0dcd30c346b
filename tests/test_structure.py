"""The package's shape: imports flow one way, and the layers load only what they need."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tune_p7"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The tune_p7 modules a file imports (``from tune_p7 import x`` counts as tune_p7.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tune_p7"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tune_p7")}
    return found - {"tune_p7"}


def test_no_module_imports_one_that_imports_it_back():
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: project_imports(path, set(files)) - {name} for name, path in files.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for imported in graph.get(name, ()):
            visit(imported, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])
    assert len(graph) > 20  # the walk saw the package


@pytest.mark.parametrize("module, absent", [
    ("tune_p7.train", "ray"),      # one training run needs no Ray (DESIGN.md)
    ("tune_p7.devices", "ray"),    # GPU machines may lack Ray
    ("tune_p7.train", "optuna"),   # ... nor Optuna or pandas: the GPU check imports it alone
    ("tune_p7.train", "pandas"),
    ("tune_p7.metrics", "ray"),
    ("tune_p7.results", "torch"),  # reading a sweep folder needs no torch
    ("tune_p7.folder", "torch"),
    ("tune_p7.space", "torch"),
    ("tune_p7.study", "ray"),      # the live study is read without starting anything
    ("tune_p7.sweep_progress", "ray"),
    ("tune_p7.analyze", "ray"),
])
def test_a_layer_loads_without_what_it_must_not_know(module, absent):
    code = f"import sys, {module}; sys.exit(1 if {absent!r} in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"importing {module} loads {absent}: {done.stderr}"
