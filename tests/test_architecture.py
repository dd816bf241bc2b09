"""The import rules of ARCHITECTURE.md, checked on the sources (ast only: nothing is imported).

Layers, lowest first: plumbing (flat ``util/`` modules) < ``data`` < ``dataloaders`` < ``models``
< engines (``util.experiment``, ``util.training``, ``util.validation``, ``util.segment``) <
entry points (the top-level scripts, ``util``'s commands, ``benchmarks``, ``examples``, ``tests``).
A module imports only from its own layer or below; an engine reaches another engine only through
public names (no ``_`` in the imported path or name); no import circle anywhere; no function
over 60 lines but the Sacred config scope.

Every rule is also run on a small made-up tree that breaks it, so a checker that stopped seeing
a violation fails here too.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("util", "data", "dataloaders", "models", "benchmarks", "examples", "tests")
TOP_SCRIPTS = ("config_ssl_upload", "training", "validation", "segment")
ENGINES = ("util.experiment", "util.training", "util.validation", "util.segment")
COMMANDS = ("util.summarize", "util.fetch_weights", "util.runs", "util.env")   # python -m util.<x>
LAYERS = {"plumbing": 1, "data": 2, "dataloaders": 3, "models": 4, "engine": 5, "entry": 6}
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_ALLOWED = {("config_ssl_upload.py", "cfg")}     # Sacred reads its locals as keys


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str          # importing module
    dst: str          # imported project module
    names: tuple[str, ...]
    file: str
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files(root: Path) -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            if "fixtures" not in p.parts:
                files[module_name(p, root)] = p
    for name in TOP_SCRIPTS:
        if (root / f"{name}.py").is_file():
            files[name] = root / f"{name}.py"
    return files


def _resolve(target: str, modules: set[str]) -> str | None:
    """The project module ``target`` names (a module, or an attribute of the nearest one)."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph(root: Path) -> tuple[dict[str, Path], list[Edge]]:
    """Every import statement of the project (module level, in functions, under TYPE_CHECKING)."""
    files = project_files(root)
    modules = set(files)
    edges = []
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    dst = _resolve(alias.name, modules)
                    if dst and dst != name:
                        edges.append(Edge(name, dst, (), rel, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    dst = sub if sub in modules else _resolve(base, modules)
                    if dst and dst != name:
                        edges.append(Edge(name, dst, (alias.name,) if dst != sub else (), rel, node.lineno))
    return files, edges


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if module in TOP_SCRIPTS or top in ("benchmarks", "examples", "tests") or module in COMMANDS:
        return "entry"
    for engine in ENGINES:
        if module == engine or module.startswith(engine + "."):
            return "engine"
    if top == "util":
        return "plumbing"
    return top                      # data, dataloaders, models


def engine_of(module: str) -> str | None:
    return next((e for e in ENGINES if module == e or module.startswith(e + ".")), None)


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        src, dst = layer_of(e.src), layer_of(e.dst)
        if LAYERS[dst] > LAYERS[src]:
            out.append(f"{e.file}:{e.line}: {e.src} ({src}) imports {e.dst} ({dst}): a layer may "
                       "import only from its own layer or below (ARCHITECTURE.md, 'Layers')")
    return out


def private_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        a, b = engine_of(e.src), engine_of(e.dst)
        if a and b and a != b:
            parts = e.dst[len(b):].split(".") + list(e.names)
            if any(p.startswith("_") for p in parts if p):
                out.append(f"{e.file}:{e.line}: engine {a} imports a private name of engine {b} "
                           f"({e.dst}{'.' + e.names[0] if e.names else ''})")
    return out


def circles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def circle_violations(edges: list[Edge]) -> list[str]:
    out = []
    for comp in circles(edges):
        inside = [e for e in edges if e.src in comp and e.dst in comp]
        where = "; ".join(f"{e.file}:{e.line} {e.src} -> {e.dst}" for e in inside)
        out.append(f"import circle {' <-> '.join(comp)}: {where}")
    return out


def long_functions(files: dict[str, Path], root: Path) -> list[str]:
    out = []
    for path in files.values():
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTION_ALLOWED:
                    out.append(f"{rel}:{node.lineno}: {node.name} is {n} lines (at most "
                               f"{MAX_FUNCTION_LINES}: split it into named steps)")
    return out


# ---------------------------------------------------------------- the repository itself

@pytest.fixture(scope="module")
def repo():
    return import_graph(ROOT)


def test_the_graph_sees_the_imports_it_must(repo):
    """A sanity check of the parser on known edges (module level, function level, relative)."""
    files, edges = repo
    pairs = {(e.src, e.dst) for e in edges}
    assert ("training", "util.training") in pairs and ("util.training.loop", "util.training.step") in pairs
    assert ("util.validation.run", "util.validation.protocol") in pairs
    assert ("util.segment.run", "util.validation.protocol") in pairs
    assert "util.io" in files and "tests.test_architecture" in files


def test_no_import_circle(repo):
    assert circle_violations(repo[1]) == []


def test_layers_import_only_downwards(repo):
    assert layer_violations(repo[1]) == []


def test_engines_use_each_other_through_public_names(repo):
    assert private_violations(repo[1]) == []


def test_data_never_imports_dataloaders_and_models_no_engine(repo):
    bad = [e for e in repo[1] if (layer_of(e.src) == "data" and layer_of(e.dst) == "dataloaders")
           or (layer_of(e.src) == "models" and layer_of(e.dst) in ("engine", "entry"))]
    assert bad == []


def test_no_function_over_60_lines(repo):
    assert long_functions(repo[0], ROOT) == []


# ---------------------------------------------------------------- each rule catches its break

def write_tree(root: Path, sources: dict[str, str]) -> Path:
    for rel, text in sources.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    for pkg in ("util", "util/training", "util/validation", "data", "dataloaders", "models"):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return root


def test_a_circle_is_named_with_its_files_and_lines(tmp_path):
    root = write_tree(tmp_path, {"dataloaders/a.py": "from dataloaders.b import x\n",
                                 "dataloaders/b.py": "def f():\n    from dataloaders import a\n"})
    found = circle_violations(import_graph(root)[1])
    assert len(found) == 1
    assert "dataloaders.a <-> dataloaders.b" in found[0]
    assert "dataloaders/a.py:1" in found[0] and "dataloaders/b.py:2" in found[0]


def test_plumbing_importing_an_engine_is_named(tmp_path):
    root = write_tree(tmp_path, {"util/io.py": "import os\n\n\nfrom util.training.loop import train\n",
                                 "util/training/loop.py": "train = 1\n"})
    found = layer_violations(import_graph(root)[1])
    assert found and found[0].startswith("util/io.py:4: util.io (plumbing) imports util.training.loop")


def test_data_importing_dataloaders_is_named(tmp_path):
    root = write_tree(tmp_path, {"data/prepare.py": "from dataloaders.folds import scan_ids_in\n",
                                 "dataloaders/folds.py": "scan_ids_in = 1\n"})
    assert [v.split(":")[0] for v in layer_violations(import_graph(root)[1])] == ["data/prepare.py"]


def test_models_importing_an_engine_is_named(tmp_path):
    root = write_tree(tmp_path, {"models/builder.py": "from util.validation.run import x\n",
                                 "util/validation/run.py": "x = 1\n"})
    assert layer_violations(import_graph(root)[1])[0].startswith("models/builder.py:1:")


def test_a_private_name_of_another_engine_is_named(tmp_path):
    root = write_tree(tmp_path, {"util/training/loop.py": "from util.validation.run import _load\n",
                                 "util/validation/run.py": "def _load():\n    pass\n",
                                 "util/validation/_cache.py": "",
                                 "util/training/other.py": "from util.validation import _cache\n"})
    found = private_violations(import_graph(root)[1])
    assert [v.split(":")[0] for v in sorted(found)] == ["util/training/loop.py", "util/training/other.py"]
    # the engine's own private names stay usable inside it
    root2 = write_tree(tmp_path / "ok", {"util/validation/run.py": "from util.validation.result import _x\n",
                                         "util/validation/result.py": "_x = 1\n"})
    assert private_violations(import_graph(root2)[1]) == []


def test_a_long_function_is_named(tmp_path):
    body = "def loop():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    root = write_tree(tmp_path, {"util/io.py": body})
    files, _ = import_graph(root)
    assert long_functions(files, root) == [f"util/io.py:1: loop is {MAX_FUNCTION_LINES + 1} lines "
                                           f"(at most {MAX_FUNCTION_LINES}: split it into named steps)"]
