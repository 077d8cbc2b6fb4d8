"""Import hygiene: no import cycle inside geor1, and importing geor1 changes no process-wide setting.

The import graph is read from the source with `ast`, not by importing: every `import geor1.x`, `from geor1.x import
y` and relative import is an edge, including imports inside functions (a lazy import is still a dependency; it only
moves the failure to run time) and the names a package exports lazily through `geor1._lazy.lazy_exports`. Imports
under `if TYPE_CHECKING:` are not edges (they never run).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import geor1

PACKAGE_DIR = Path(geor1.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST):
    """ast.walk, leaving out the bodies of `if TYPE_CHECKING:` blocks (their `else:` still runs)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            stack.extend(n.orelse)
            continue
        stack.extend(ast.iter_child_nodes(n))


def _lazy_export_targets(tree: ast.Module) -> list[str]:
    """Module paths a package's `__getattr__ = lazy_exports(pkg, EXPORTS)` imports on attribute access."""
    dicts = {
        t.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            arg = node.args[1]
            mapping = dicts.get(arg.id) if isinstance(arg, ast.Name) else arg
            if isinstance(mapping, ast.Dict):
                out += [v for v in ast.literal_eval(mapping).values() if isinstance(v, str)]
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The geor1 modules `name` imports (each resolved to the most specific module that exists)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "geor1")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "geor1":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod)
    found.update(_lazy_export_targets(tree))
    return {r for r in (resolve(t) for t in found) if r is not None and r != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = [start]
        iters = [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_reader_sees_function_level_relative_and_lazy_imports(tmp_path):
    """The reader itself: a cycle through a function-level import, a relative import and a lazy export is found;
    a TYPE_CHECKING import is not an edge."""
    modules = {
        "geor1": tmp_path / "__init__.py",
        "geor1.a": tmp_path / "a.py",
        "geor1.b": tmp_path / "b.py",
        "geor1.c": tmp_path / "c.py",
    }
    modules["geor1"].write_text(
        "from geor1._lazy import lazy_exports\n_E = {'X': 'geor1.c'}\n__getattr__ = lazy_exports('geor1', _E)\n"
    )
    modules["geor1.a"].write_text("def f():\n    from . import b\n")
    modules["geor1.b"].write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import geor1.c\nimport geor1.a\n"
    )
    modules["geor1.c"].write_text("from geor1.a import f\n")
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph == {"geor1": {"geor1.c"}, "geor1.a": {"geor1.b"}, "geor1.b": {"geor1.a"}, "geor1.c": {"geor1.a"}}
    assert find_cycle(graph) == ["geor1.a", "geor1.b", "geor1.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle_in_geor1():
    graph = import_graph()
    assert len(graph) > 40 and "geor1.metrics.geodesic" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


_SIDE_EFFECT_PROBE = r"""
import importlib, json, os, pkgutil, sys

def settings():
    import matplotlib
    from PIL import Image
    return {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
            "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE"),
            "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE"),
            "MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS, "backend": matplotlib.rcParams._get_backend_or_none()}

before = settings()
import geor1
names = sorted(m.name for m in pkgutil.walk_packages(geor1.__path__, "geor1."))
skipped = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as e:  # an optional dependency (vllm) that this machine lacks
        skipped[name] = repr(e)
print(json.dumps({"before": before, "after": settings(), "imported": names, "skipped": skipped}))
"""


def test_importing_geor1_changes_no_process_setting():
    """Importing any geor1 module leaves the Hugging Face offline switches, PIL's decompression-bomb limit and the
    matplotlib backend as they were: those are set where they are needed (the CLI, model loading, the one big
    image, the plotting functions), not by an import. A fresh interpreter, so nothing earlier set them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "MPLBACKEND")
    }
    proc = subprocess.run(
        [sys.executable, "-c", _SIDE_EFFECT_PROBE], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["imported"]) > 40
    assert report["after"] == report["before"], report["skipped"]
    assert report["before"]["HF_HUB_OFFLINE"] is None and report["before"]["backend"] is None


def test_cli_sets_offline_mode():
    """The offline contract is kept by the entry point: `geor1 ...` switches Hugging Face offline before any
    command runs (and before any of them imports transformers)."""
    probe = (
        "import os, sys\nfrom geor1.cli import main\nsys.argv = ['geor1']\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "1 1"
