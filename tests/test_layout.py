"""The layout reads like the data flow, and stays that way (issue: one place per idea).

Static checks on the source tree (no framework imported):

* no import cycle between senet-hub's modules, counting imports inside functions too (a lazy
  import still makes two modules depend on each other's shape), not those under TYPE_CHECKING;
* a module over 500 lines says why at its top ("Why this module is long:" in its docstring);
* one copy of each data file (a link that points at the one copy is allowed) and every data file
  read through importlib.resources, never through ``__file__``;
* pyproject.toml's packages list every package of the tree, under its installed name.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed name -> source directory (pyproject's [tool.setuptools.package-dir])
PACKAGE_DIRS = {"senet_hub": ROOT / "senet_hub", "senet_hub.converters": ROOT / "converters"}
DATA_DIRS = [ROOT / "reference_models", ROOT / "senet_hub" / "data"]
LONG = 500

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _modules() -> dict[str, Path]:
    """Installed module name -> file, for every module of the package tree."""
    mods: dict[str, Path] = {}
    for base, root in PACKAGE_DIRS.items():
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if base == "senet_hub" and parts and parts[0] == "converters":
                continue
            mods[".".join([base, *parts])] = f
    return mods


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only: never imported)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its body (absolute or relative)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            # the deepest known module the import names (`from . import zoo` -> senet_hub.zoo)
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_ancestor(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    mods = _modules()
    known = set(mods)
    # a package's __init__ importing its own submodules (a registry loading its entries) is not a
    # cycle of design; everything else counts
    graph = {
        m: {t for t in _imports(m, f, known) if not _is_ancestor(m, t) and not _is_ancestor(t, m)}
        for m, f in mods.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_long_modules_say_why():
    unexplained = []
    for f in _modules().values():
        text = f.read_text()
        if text.count("\n") > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why this module is long:" not in doc:
                unexplained.append(f"{f.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained, "over 500 lines without 'Why this module is long:' at the top: " + ", ".join(unexplained)


def _data_files() -> list[Path]:
    files = [ROOT / "weights_manifest.yaml"]
    for d in DATA_DIRS:
        files += [f for f in d.rglob("*") if f.is_file() and f.suffix not in (".py", ".pyc")]
    return files


def test_one_copy_of_each_data_file():
    digests = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in _data_files()}
    # outputs of our own commands and tools (git-ignored): `make demo` copies the release prototxt
    # into demo_out/ on purpose, as a user's working folder would
    skip = {".git", ".venv", "build", "dist", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
            "demo_out", "results", ".hypothesis"}  # fmt: skip
    copies = []
    for f in ROOT.rglob("*"):
        if skip & set(f.relative_to(ROOT).parts) or not f.is_file() or f.suffix in (".py", ".pyc"):
            continue
        if f.stat().st_size < 64:  # tiny files (empty markers) may coincide
            continue
        d = hashlib.sha256(f.read_bytes()).hexdigest()
        one = digests.get(d)
        if one is not None and f != one and not (f.is_symlink() and f.resolve() == one.resolve()):
            copies.append(f"{f.relative_to(ROOT)} copies {one.relative_to(ROOT)}")
    assert not copies, "; ".join(copies)
    # the packaged manifest is the top-level file, through a link
    link = ROOT / "senet_hub" / "hub" / "weights_manifest.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "weights_manifest.yaml").resolve()


def test_data_is_read_through_importlib_resources():
    offenders = [str(f.relative_to(ROOT)) for f in _modules().values() if "__file__" in f.read_text()]
    assert not offenders, f"data located through __file__ (use importlib.resources): {offenders}"


def test_pyproject_lists_every_package():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / path for name, path in conf["package-dir"].items()}
    assert dirs == {"senet_hub.converters": ROOT / "converters", "senet_hub.zoo_data": ROOT / "reference_models"}
    tree = {m for m, f in _modules().items() if f.name == "__init__.py"} | {"senet_hub.zoo_data"}
    assert set(conf["packages"]) == tree
    # every package directory holds an __init__.py (no namespace package slips past the list)
    for root in PACKAGE_DIRS.values():
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            if any(d.glob("*.py")) and "__pycache__" not in d.parts:
                assert (d / "__init__.py").exists(), f"{d.relative_to(ROOT)} has modules but no __init__.py"
