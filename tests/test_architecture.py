"""The package's shape: folders in pipeline order, imports only downward, no cycles.

The layers, bottom to top (ARCHITECTURE.md draws them):

    base modules (batchasr/*.py but cli.py) -> manifest/ -> queue/ -> audio/ -> batches/
    -> models/ -> outputs/ -> runner/ -> cli.py

A module may import its own folder and the layers below it. Every import counts, also one
inside a function: a lazy import is still a dependency. The root package (batchasr/__init__.py)
is the public API above everything; nothing below imports from it, and nothing imports cli.py.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "batchasr"
LAYERS = ("manifest", "queue", "audio", "batches", "models", "outputs", "runner")
MAX_LINES = 400  # a longer module says why in a docstring paragraph starting "Size:"


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(package: str, module: str) -> tuple[int, str]:
    """(rank, label): base 0, the folders 1..7 in LAYERS order, cli 8, the root package 9."""
    parts = module.split(".")
    if module == package:
        return len(LAYERS) + 2, "the root package"
    if parts[1] == "cli":
        return len(LAYERS) + 1, "cli"
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1]) + 1, parts[1] + "/"
    return 0, "base"


def imports_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` is module ``a.b`` when that is
    a module, else ``a``); relative imports resolved."""
    here = module_name(root, path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a name inside a module
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def check_package(root: Path) -> list[str]:
    """Every violation of the layer order, and every import cycle, as a sentence."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph = {m: imports_of(root, p, set(files)) for m, p in files.items()}
    problems = []
    for module, deps in sorted(graph.items()):
        rank, label = layer_of(root.name, module)
        for dep in sorted(deps):
            dep_rank, dep_label = layer_of(root.name, dep)
            if dep == f"{root.name}.cli":
                problems.append(f"{module} imports the CLI")
            elif dep == root.name and module != root.name:
                problems.append(f"{module} imports the root package (the public API)")
            elif dep_rank > rank:
                problems.append(f"{module} ({label}) imports {dep} ({dep_label}), a later layer")
    problems += [f"import cycle: {' -> '.join(c + [c[0]])}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_follow_the_folder_order_and_have_no_cycles():
    assert check_package(PACKAGE) == []


def test_no_module_is_long_without_saying_why():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and "\nSize:" not in "\n" + doc:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {text.count(chr(10))} lines")
    assert long == []


def test_every_module_says_what_it_is_for():
    missing = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text("utf-8")))]
    assert missing == []


# ---- the checker itself finds what it must -------------------------------------------------


def make_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in ["", *LAYERS]:
        init = root / "pkg" / folder / "__init__.py"
        if init.parent.exists() and not init.exists():
            init.write_text("")
    return root / "pkg"


def test_the_checker_accepts_downward_imports(tmp_path):
    pkg = make_package(tmp_path, {
        "errors.py": "",
        "queue/store.py": "from pkg.errors import X\nfrom pkg.manifest import read\n",
        "manifest/read.py": "import pkg.errors\n",
        "runner/local.py": "from ..queue.store import JobQueue\nfrom . import options\n",
        "runner/options.py": "",
        "cli.py": "from pkg.runner.local import run\n",
    })
    assert check_package(pkg) == []


@pytest.mark.parametrize("files, expected", [
    ({"models/paraformer.py": "def f():\n    from pkg.runner.local import run\n",
      "runner/local.py": ""},
     "pkg.models.paraformer (models/) imports pkg.runner.local (runner/), a later layer"),
    ({"manifest/read.py": "from pkg.audio import decode\n", "audio/decode.py": ""},
     "pkg.manifest.read (manifest/) imports pkg.audio.decode (audio/), a later layer"),
    ({"errors.py": "from pkg.queue.store import X\n", "queue/store.py": ""},
     "pkg.errors (base) imports pkg.queue.store (queue/), a later layer"),
    ({"runner/ray.py": "from pkg.cli import open_model\n", "cli.py": ""},
     "pkg.runner.ray imports the CLI"),
    ({"models/loader.py": "from pkg.models import nano\n",
      "models/nano.py": "def g():\n    from .loader import read\n"},
     "import cycle: pkg.models.loader -> pkg.models.nano -> pkg.models.loader"),
])
def test_the_checker_finds_upward_imports_and_cycles(tmp_path, files, expected):
    assert expected in check_package(make_package(tmp_path, files))
