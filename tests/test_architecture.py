"""The package's layers, checked from the source (docs/architecture.md).

Every module's imports (top-level and inside functions, relative and absolute) are read with ``ast``
and mapped to layers. A lower layer never imports a higher one, no import cycle exists between
modules, argparse lives only in ``cli/``, vtk/slicer/qt/ctk only in ``logic.py`` and ``mrml/``, and
intra-package imports sit at the top of the file unless their target loads torch at import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "MnetImSegment" / "MnetImSegmentLib"
ROOT = "MnetImSegmentLib"

# Layer of a module: (name, rank), lowest rank first. An import is allowed into the same layer or a
# lower rank; the two top layers (the Slicer bridge and the command line) never import each other,
# and the Slicer bridge uses only the engine and what is below it (NOT_BELOW).
LAYERS = {
    "core": 0,
    "models": 1,
    "dicomrt": 2,
    "engine": 3,
    "research": 4,
    "mrml": 5,
    "cli": 5,
}
# Modules directly in the package folder: the package itself holds only __version__; metrics.py is
# the contract path re-exporting research.metrics; logic.py is the Slicer bridge's entry point.
NOT_BELOW = {"mrml": {"research"}}
ROOT_MODULES = {ROOT: "core", f"{ROOT}.metrics": "research", f"{ROOT}.logic": "mrml"}
# Targets that load torch when imported: the only intra-package imports allowed inside functions,
# so that importing the engine (as Slicer does at start-up) never loads PyTorch.
LAZY_TARGETS = (f"{ROOT}.models", f"{ROOT}.research.losses")
BRIDGE_ONLY = ("vtk", "slicer", "qt", "ctk")


@dataclass(frozen=True)
class Import:
    target: str  # a module name: inside the package resolved to the module file, else the top-level package
    line: int
    in_function: bool


def module_name(path: Path, lib: Path = LIB) -> str:
    parts = list(path.relative_to(lib).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([ROOT] + parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def read_imports(path: Path, known: set[str], lib: Path = LIB) -> list[Import]:
    """Every import of one file, with package-internal targets resolved to module names."""
    name = module_name(path, lib)
    package = name if _is_package(path) else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    function_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        inside = id(node) in function_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name if alias.name.startswith(ROOT + ".") else alias.name.split(".")[0]
                out.append(Import(_known_prefix(target, known), node.lineno, inside))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            if base == ROOT or base.startswith(ROOT + "."):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.append(Import(sub if sub in known else _known_prefix(base, known), node.lineno, inside))
            else:
                out.append(Import(base.split(".")[0], node.lineno, inside))
    return out


def _known_prefix(target: str, known: set[str]) -> str:
    while target.startswith(ROOT + ".") and target not in known:
        target = target.rpartition(".")[0]
    return target


def module_map(lib: Path = LIB) -> dict[str, list[Import]]:
    files = [p for p in lib.rglob("*.py") if "__pycache__" not in p.parts]
    known = {module_name(p, lib) for p in files}
    return {module_name(p, lib): read_imports(p, known, lib) for p in files}


def layer_of(module: str) -> str:
    if module in ROOT_MODULES:
        return ROOT_MODULES[module]
    first = module.split(".")[1]
    if first not in LAYERS:
        raise ValueError(f"{module}: not in a layer; add its folder to LAYERS (docs/architecture.md)")
    return first


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def check(modules: dict[str, list[Import]]) -> list[str]:
    """Every layering violation of a module map, as one readable line each (empty: all is well)."""
    problems = []
    graph = {m: set() for m in modules}
    for module, imports in sorted(modules.items()):
        layer = layer_of(module)
        for imp in imports:
            where = f"{module}:{imp.line}"
            if imp.target == ROOT or imp.target.startswith(ROOT + "."):
                graph[module].add(imp.target)
                target_layer = layer_of(imp.target)
                if target_layer != layer and (LAYERS[target_layer] >= LAYERS[layer]
                                              or target_layer in NOT_BELOW.get(layer, ())):
                    problems.append(f"{where} imports {imp.target}: layer '{layer}' may not import layer '{target_layer}'")
                if imp.in_function and not imp.target.startswith(LAZY_TARGETS):
                    problems.append(f"{where} imports {imp.target} inside a function: move it to the top of the file")
            elif imp.target == "argparse" and layer != "cli":
                problems.append(f"{where} imports argparse: command-line parsing lives in cli/ only")
            elif imp.target in BRIDGE_ONLY and layer != "mrml":
                problems.append(f"{where} imports {imp.target}: only logic.py and mrml/ may use Slicer, VTK or Qt")
    for cycle in find_cycles({m: {t for t in ts if t in graph} for m, ts in graph.items()}):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


# --------------------------------------------------------------------------- the package itself
def test_every_module_is_in_a_layer_and_the_layers_hold():
    modules = module_map()
    assert len(modules) > 40, sorted(modules)  # the walk found the package
    assert check(modules) == []


def test_the_bridge_and_the_cli_are_where_the_rules_say():
    modules = module_map()
    uses = {m: {i.target for i in imps} for m, imps in modules.items()}
    assert any("argparse" in t for m, t in uses.items() if m.startswith(f"{ROOT}.cli"))
    assert "vtk" in uses[f"{ROOT}.mrml.geometry"] and "slicer" in uses[f"{ROOT}.logic"]
    assert f"{ROOT}.dicomrt.ct_series" in uses[f"{ROOT}.engine.io"]  # the engine reads DICOM through dicomrt


# --------------------------------------------------------------------------- the checker catches violations
def _synthetic(imports: dict[str, list[tuple[str, bool]]]) -> dict[str, list[Import]]:
    return {m: [Import(t, n + 1, f) for n, (t, f) in enumerate(ts)] for m, ts in imports.items()}


def test_checker_reports_an_upward_import_a_cycle_argparse_and_vtk_outside_their_layers():
    modules = _synthetic({
        f"{ROOT}.core.volume": [("numpy", False)],
        f"{ROOT}.engine.io": [(f"{ROOT}.research.metrics", False), ("argparse", True)],
        f"{ROOT}.research.metrics": [(f"{ROOT}.research.phantom", False), ("vtk", False)],
        f"{ROOT}.research.phantom": [(f"{ROOT}.research.metrics", False)],
        f"{ROOT}.dicomrt.export": [(f"{ROOT}.engine.io", False)],
        f"{ROOT}.cli": [(f"{ROOT}.logic", False)],
        f"{ROOT}.logic": [(f"{ROOT}.engine.io", False), ("slicer", False)],
        f"{ROOT}.mrml.geometry": [("vtk", False), (f"{ROOT}.core.volume", True)],
        f"{ROOT}.mrml.segments": [(f"{ROOT}.research.phantom", False)],
        f"{ROOT}.engine.weights": [(f"{ROOT}.models", True)],
    })
    problems = check(modules)
    text = "\n".join(problems)
    assert f"{ROOT}.engine.io:1 imports {ROOT}.research.metrics: layer 'engine' may not import layer 'research'" in text
    assert f"{ROOT}.dicomrt.export:1 imports {ROOT}.engine.io: layer 'dicomrt'" in text
    assert f"{ROOT}.cli:1 imports {ROOT}.logic: layer 'cli' may not import layer 'mrml'" in text
    assert f"{ROOT}.engine.io:2 imports argparse" in text
    assert f"{ROOT}.research.metrics:2 imports vtk" in text
    assert f"import cycle: {ROOT}.research.metrics -> {ROOT}.research.phantom" in text
    assert f"{ROOT}.mrml.geometry:2 imports {ROOT}.core.volume inside a function" in text
    assert f"{ROOT}.mrml.segments:1 imports {ROOT}.research.phantom: layer 'mrml' may not import layer 'research'" in text
    assert not any("engine.weights" in p for p in problems)  # models (torch) may be imported lazily
    assert not any(p.startswith(f"{ROOT}.logic") for p in problems)  # the bridge may use slicer and the engine
    assert len(problems) == 8, problems


def test_read_imports_resolves_relative_function_level_and_absolute_imports(tmp_path):
    lib = tmp_path / ROOT
    (lib / "engine").mkdir(parents=True)
    (lib / "core").mkdir()
    for f in ("__init__.py", "core/__init__.py", "core/errors.py", "engine/__init__.py", "engine/io.py"):
        (lib / f).write_text("")
    (lib / "engine" / "batch.py").write_text(
        "from .. import __version__\nfrom ..core.errors import InputError\nfrom . import io\n"
        "def f():\n    import MnetImSegmentLib.core.errors\n    from argparse import ArgumentParser\n")
    modules = module_map(lib)
    got = [(i.target, i.in_function) for i in modules[f"{ROOT}.engine.batch"]]
    assert got == [(ROOT, False), (f"{ROOT}.core.errors", False), (f"{ROOT}.engine.io", False),
                   (f"{ROOT}.core.errors", True), ("argparse", True)]
    problems = check(modules)
    assert any("engine.batch:5" in p and "inside a function" in p for p in problems)
    assert any("engine.batch:6 imports argparse" in p for p in problems)


# --------------------------------------------------------------------------- contracts (DESIGN.md)
def test_contract_import_paths_and_a_light_package_import():
    code = ("import sys\n"
            "import MnetImSegmentLib, MnetImSegmentLib.engine.inference, MnetImSegmentLib.engine.io, MnetImSegmentLib.cli\n"
            "from MnetImSegmentLib.metrics import segmentation_metrics, volumetric_dice\n"
            "from MnetImSegmentLib.cli import main, build_parser\n"
            "build_parser()\n"
            "assert 'torch' not in sys.modules, 'importing the engine loaded torch'\n"
            "from MnetImSegmentLib.models import build_model\n"
            "assert build_model('Mnet_Im') is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_python_dash_m_cli_runs_mnetim():
    out = subprocess.run([sys.executable, "-m", "MnetImSegmentLib.cli", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("mnetim "), out


def test_the_slicer_logic_keeps_its_path():
    pytest.importorskip("slicer")
    from MnetImSegmentLib.logic import MnetImSegmentLogic

    assert callable(MnetImSegmentLogic().process)
