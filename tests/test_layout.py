"""The package's layout rules, checked on the source with ``ast`` (docs/architecture.md).

- napari, Qt (qtpy, PyQt, PySide), superqt and magicgui are imported only in plugin/;
- no module over 600 lines, no class over 300, no function over 80 (docstrings not
  counted for classes and functions);
- private names (``_x``, or modules ``_x.py``) are used only inside the package that
  holds them (``napari_itaclip._env`` is the top package's, so everyone's).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_itaclip"
PACKAGE = "napari_itaclip"
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui")
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 600, 300, 80


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield path, ".".join(parts), is_pkg


MODULES = list(_modules())


def _ids(modules):
    return [name for _path, name, _pkg in modules]


def _imports(path: Path, name: str, is_pkg: bool):
    """(imported module, imported name or None, line) for every import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name, node.lineno


def _docstring_lines(node) -> int:
    """Lines taken by the docstrings of ``node`` and of everything defined inside it."""
    total = 0
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = sub.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                total += body[0].end_lineno - body[0].lineno + 1
    return total


@pytest.mark.parametrize(("path", "name", "is_pkg"), MODULES, ids=_ids(MODULES))
def test_gui_imports_only_in_plugin(path, name, is_pkg):
    if name.startswith(f"{PACKAGE}.plugin"):
        return
    bad = [(module, line) for module, _n, line in _imports(path, name, is_pkg)
           if module.split(".")[0] in GUI_MODULES]
    assert not bad, f"{name} imports GUI modules outside plugin/: {bad}"


@pytest.mark.parametrize(("path", "name", "is_pkg"), MODULES, ids=_ids(MODULES))
def test_size_limits(path, name, is_pkg):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE, f"{name}: module over {MAX_MODULE} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION
        else:
            continue
        size = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
        assert size <= limit, f"{name}.{node.name}: {size} lines (limit {limit})"


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _owner(module: str, imported: str | None = None) -> str | None:
    """The package owning the private module or name used, or None if nothing is private.

    A private module belongs to its parent package; a private name in a module to that
    module's package; a private submodule imported from a package to that package.
    """
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:i])
    if imported is None or not _private(imported):
        return None
    if (SRC.parent / Path(*parts)).is_dir():
        return module
    return ".".join(parts[:-1])


@pytest.mark.parametrize(("path", "name", "is_pkg"), MODULES, ids=_ids(MODULES))
def test_private_names_stay_in_their_package(path, name, is_pkg):
    bad = []
    for module, imported, line in _imports(path, name, is_pkg):
        if not module.startswith(PACKAGE):
            continue
        owner = _owner(module, imported)
        if owner is not None and not (name == owner or name.startswith(owner + ".")):
            bad.append((module, imported, line))
    assert not bad, f"{name} uses private names of other packages: {bad}"


def test_rules_catch_violations(tmp_path):
    """The checks themselves: a fake module breaking each rule is caught."""
    assert _owner("napari_itaclip.engine._gen", "drain") == "napari_itaclip.engine"
    assert _owner("napari_itaclip", "_env") == "napari_itaclip"
    assert _owner("napari_itaclip.plugin.layers", "_find") == "napari_itaclip.plugin"
    assert _owner("napari_itaclip.plugin.layers", "find_layer") is None
    code = "import qtpy\nfrom ..engine._gen import drain\n\n\ndef f():\n" + \
           "    x = 1\n" * 90 + '    """doc"""\n'
    bad = tmp_path / "napari_itaclip" / "llm" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(code)
    imports = list(_imports(bad, "napari_itaclip.llm.bad", False))
    assert ("qtpy", None, 1) in imports
    assert ("napari_itaclip.engine._gen", "drain", 2) in imports
    fn = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef))
    assert fn.end_lineno - fn.lineno + 1 - _docstring_lines(fn) > MAX_FUNCTION


# -- portable file names --------------------------------------------------------------

REPO = SRC.parents[1]
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
            *(f"LPT{i}" for i in range(1, 10))}


def _tracked_paths() -> list[str]:
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode("utf-8").split("\0") if p]


def _reserved_parts(path: str) -> list[str]:
    """The parts of ``path`` that Windows reserves (``aux.py``, ``Con``, ``nul.tar.gz``)."""
    return [part for part in path.split("/")
            if part.split(".")[0].rstrip(" ").upper() in RESERVED]


def _case_clashes(paths) -> list[tuple[str, ...]]:
    """Groups of paths (and their folders) that differ only by letter case."""
    seen: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            seen.setdefault(prefix.lower(), set()).add(prefix)
    return [tuple(sorted(group)) for group in seen.values() if len(group) > 1]


def test_tracked_paths_are_portable():
    paths = _tracked_paths()
    assert paths
    reserved = [p for p in paths if _reserved_parts(p)]
    assert not reserved, f"Windows-reserved names in tracked paths: {reserved}"
    clashes = _case_clashes(paths)
    assert not clashes, f"tracked paths differing only by case: {clashes}"


def test_portable_name_checks_catch_violations():
    assert _reserved_parts("src/pkg/aux.py") == ["aux.py"]
    assert _reserved_parts("Con/x.txt") == ["Con"]
    assert _reserved_parts("lpt9.tar.gz") == ["lpt9.tar.gz"]
    assert _reserved_parts("src/auxiliary.py") == []
    assert _reserved_parts("com10.txt") == []
    assert _case_clashes(["a/B.py", "a/b.py", "c.py"]) == [("a/B.py", "a/b.py")]
    assert _case_clashes(["Docs/x", "docs/y"]) == [("Docs", "docs")]


# -- import cycles ----------------------------------------------------------------------

def _resolve(module: str, imported: str | None, known: set[str]) -> str | None:
    """The package module an import binds (``from pkg import mod`` names ``pkg.mod``)."""
    if imported is not None and f"{module}.{imported}" in known:
        return f"{module}.{imported}"
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def _import_graph(modules) -> dict[str, set[str]]:
    """module -> the package modules it imports.

    Every import counts: at module level, inside a function, even under
    ``if TYPE_CHECKING:`` (a type-only cycle is still two rooms leaning on each other).
    ``from pkg import mod`` is an edge to ``pkg.mod``; ``from pkg.mod import name`` to
    ``pkg.mod`` (the packages it passes through are not counted).
    """
    known = {name for _p, name, _pkg in modules}
    graph: dict[str, set[str]] = {}
    for path, name, is_pkg in modules:
        edges = set()
        for module, imported, _line in _imports(path, name, is_pkg):
            if not module.startswith(PACKAGE):
                continue
            target = _resolve(module, imported, known)
            if target is not None and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    cycles = _cycles(_import_graph(MODULES))
    assert not cycles, "import cycles (function-local imports count): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_cycle_check_catches_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    known = {"napari_itaclip.engine", "napari_itaclip.engine.registry"}
    assert _resolve("napari_itaclip.engine", "registry", known) == "napari_itaclip.engine.registry"
    assert _resolve("napari_itaclip.engine.registry", "segment", known) == \
        "napari_itaclip.engine.registry"


# -- docs that stand alone ----------------------------------------------------------------

import re  # noqa: E402

#: References to documents outside the repository (the project guide's shared folder, its
#: specification files and their numbered sections).
OUTSIDE_REFERENCE = re.compile(r"\.\./shared|/work/[s]hared|\bspec/[A-Za-z]|"
                               r"\b[Ss]pec (sections?|§)\s*\d|\b[Ss]pec §")
DOC_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".sh")
#: Everything of the repository a reader meets: the package, its docs and tests, the
#: benchmark and install scripts, and the top-level files.
CHECKED_ROOTS = ("src", "docs", "tests", "benchmarks", "scripts")
CHECKED_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", "tox.ini")


def _outside_references(text: str) -> list[str]:
    return [m.group(0) for m in OUTSIDE_REFERENCE.finditer(text)]


def test_no_reference_to_documents_outside_the_repository():
    roots = [REPO / name for name in CHECKED_ROOTS]
    files = [p for root in roots if root.is_dir() for p in root.rglob("*")
             if p.is_file() and p.name.endswith(DOC_SUFFIXES) and "__pycache__" not in p.parts]
    files += [p for p in (REPO / name for name in CHECKED_FILES) if p.is_file()]
    assert any(p.suffix == ".sh" and p.parent.name == "scripts" for p in files)  # scripts read
    assert any(p.parent.name == "benchmarks" for p in files)
    bad = {}
    for path in files:
        found = _outside_references(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            bad[str(path.relative_to(REPO))] = found
    assert not bad, f"references to documents outside the repository: {bad}"


def test_outside_reference_check_catches_them():
    spec = "spec"  # spelled apart so that this file passes its own check
    assert _outside_references(f"see {spec} section 4") == [f"{spec} section 4"]
    assert _outside_references(f"({spec}/methods.md)") == [f"{spec}/m"]
    assert _outside_references("../" + "shared/testing.md") == ["../" + "shared"]
    assert _outside_references("/work" + "/shared/spec") == ["/work" + "/shared"]
    assert len(_outside_references(f"{spec.title()} §7 and {spec} sections 4 to 6")) == 2
    assert _outside_references('docs/engine.md, section "Sliding window"; respect/x') == []


def test_architecture_doc_names_every_module():
    """docs/architecture.md is the map of the package: every module has its line there."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
               if path.name != "__init__.py" and path.name not in doc]
    assert not missing, f"modules missing from docs/architecture.md: {missing}"
