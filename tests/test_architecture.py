"""The layering of the code base, read from the source (``ast``), not from a document.

Layers, bottom to top; a module may import from its own layer and the layers below, never above:

0. models      ``wav2vec2`` (every model family, file formats, surgery, counting, low-rank) and
               ``melhubert`` (the historical import path of the MelHuBERT model)
1. data        ``speech_data``
2. training    ``lightning_modules``
3. methods     ``methods``
4. top         ``evaluation``, the top-level scripts, ``benchmarks``

Every import counts, also one inside a function: a deferred import hides a cycle from Python's
import machinery but not from a reader. Module-level cycles between project modules are errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"wav2vec2": 0, "melhubert": 0, "speech_data": 1, "lightning_modules": 2, "methods": 3, "cli": 4,
          "evaluation": 4, "benchmarks": 4}
TOP = 4
LAYER_NAMES = {0: "models", 1: "data", 2: "training", 3: "methods", 4: "command line / evaluation"}
SKIP = {".venv", "tests", "build", "exp", "data", "pretrained", ".git"}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every project source file outside the tests."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in SKIP or any(p.startswith(".") or p.endswith(".egg-info") for p in parts):
            continue
        name = ".".join(parts)[: -len(".py")]
        modules[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return modules


MODULES = project_modules()
TOP_LEVEL_NAMES = {name.split(".")[0] for name in MODULES}


def layer_of(module: str) -> int:
    package = module.split(".")[0]
    return LAYERS.get(package, TOP)  # a top-level script


def imports_of(module: str, path: Path) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package.
            subs = [f"{stem}.{alias.name}" for alias in node.names]
            names = [sub for sub in subs if sub in MODULES]
            if len(names) < len(subs):
                names.append(stem)
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in TOP_LEVEL_NAMES:
                found.add(name)
    return found


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_the_layers_are_all_there() -> None:
    for package in ("wav2vec2", "speech_data", "lightning_modules", "methods", "evaluation"):
        assert package in MODULES, f"package {package} is missing"


def test_no_module_imports_from_a_layer_above() -> None:
    upward = []
    for module, imported in sorted(GRAPH.items()):
        for target in sorted(imported):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {target} "
                              f"({LAYER_NAMES[layer_of(target)]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_top_level_scripts_are_not_imported_by_the_library() -> None:
    scripts = {m for m in MODULES if "." not in m and MODULES[m].name != "__init__.py" and m not in LAYERS}
    offenders = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets if t in scripts]
    assert not offenders, offenders


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def _is_package_init_edge(source: str, target: str) -> bool:
    # A package's __init__ re-exporting its submodules while a submodule imports a sibling
    # through the package (``from wav2vec2 import components``) is how packages work, not a cycle.
    return source == target.rpartition(".")[0] or target == source.rpartition(".")[0]


def test_no_import_cycles() -> None:
    cycles = []
    for component in _cycles():
        members = set(component)
        edges = [(s, t) for s in component for t in GRAPH[s] if t in members and not _is_package_init_edge(s, t)]
        if edges:
            cycles.append(" <-> ".join(component) + "  via " + ", ".join(f"{s} -> {t}" for s, t in edges))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("entry", ["melhubert.model", "wav2vec2.model"])
def test_users_entry_points_still_import(entry: str) -> None:
    if entry == "melhubert.model":
        from melhubert.model import MelHuBERTConfig, MelHuBERTModel
        from wav2vec2 import melhubert

        assert MelHuBERTModel is melhubert.MelHuBERTModel and MelHuBERTConfig is melhubert.MelHuBERTConfig
    else:
        from wav2vec2.model import wav2vec2_model

        assert callable(wav2vec2_model)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker must resolve relative and deferred imports, or the tests above could not fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..lightning_modules import base\n    import evaluation.upstream\n")
    found = imports_of("wav2vec2.probe", probe)
    assert {"lightning_modules.base", "evaluation.upstream"} <= found
