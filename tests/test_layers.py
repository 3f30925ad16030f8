"""The package is its architecture: the folders are layers, and an import that runs against them fails here.

Read from the source with ``ast`` (every import counts: module level, inside functions, under ``TYPE_CHECKING``),
so a cycle cannot hide behind a lazy import. The order, lowest first:

0. leaves (``errors``, ``info``, ``asgitypes``, ``hooktypes``, ``extras``, ``fileio``, ``hashstate``, ``version``)
1. ``observe/`` (metrics, tracing, logs)
2. ``hooks/``, ``lockers/``, ``stores/``: side by side, none imports another
3. ``core/``: tus semantics, no sockets
4. ``asgi/``: TusApp, routing, the upload page
5. ``server/``: the command, the HTTP server, admin commands

A module imports only from lower layers or from its own package, and no import chain returns to where it started.
The package's ``__init__`` (the public names) and ``__main__`` sit above everything and nothing inside imports them.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pathlib
import re
import subprocess

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
ROOT = SRC / "pytusd"

LEAVES = {"errors", "info", "asgitypes", "hooktypes", "extras", "fileio", "hashstate", "version"}
RANKS = {"observe": 1, "hooks": 2, "lockers": 2, "stores": 2, "core": 3, "asgi": 4, "server": 5}
TOP = {"pytusd", "pytusd.__main__"}


def module_name(path: pathlib.Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def all_modules() -> dict[str, tuple[pathlib.Path, bool]]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name, is_package = module_name(path)
        found[name] = (path, is_package)
    return found


MODULES = all_modules()


def imports_of(name: str) -> set[str]:
    """The pytusd modules ``name`` imports, resolved to the module (a name imported from a package's ``__init__``
    counts as an import of that package)."""
    path, is_package = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pytusd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pytusd":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    # Importing a.b.c runs a.b's __init__ first: that is an import of a.b too (unless it is the importer's own).
    for target in list(found):
        parts = target.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if not (name == parent or name.startswith(parent + ".")):
                found.add(parent)
    found.discard(name)
    return found


def layer(name: str) -> tuple[int, str]:
    """(rank, group) of a module: its layer and the top-level folder or leaf it lives in."""
    parts = name.split(".")
    if name in TOP:
        return 9, name
    group = parts[1]
    if group in LEAVES and len(parts) == 2:
        return 0, group
    assert group in RANKS, f"{name}: a module outside the layers (add it to a layer, or to the leaves)"
    return RANKS[group], group


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)


def test_every_import_names_a_module_that_exists() -> None:
    """A lazy import of a module that is not there fails only when its line runs; here it fails at once."""
    missing = sorted(f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
                     if target not in MODULES)
    assert not missing, f"imports of modules that do not exist: {missing}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n not in TOP))
def test_imports_run_down_the_layers(name: str) -> None:
    rank, group = layer(name)
    wrong = []
    for target in sorted(GRAPH[name]):
        if target in TOP:
            wrong.append(f"{target} (the public facade; import the module that defines the name)")
            continue
        target_rank, target_group = layer(target)
        if target_rank > rank or (target_rank == rank and rank > 0 and target_group != group):
            wrong.append(target)
    assert not wrong, f"{name} (layer {rank}, {group}) imports against the layers: {', '.join(wrong)}"


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over every import: any component of more than one module is a
    cycle, however it is hidden."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in MODULES or target in TOP:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(MODULES):
        if name not in index and name not in TOP:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_hidden_imports(tmp_path: pathlib.Path) -> None:
    """The reader counts an import under TYPE_CHECKING and one inside a function, so neither can hide a cycle."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..asgi.app import TusApp\n"
        "def later():\n    from ..server import cli\n"
    )
    name = "pytusd.core.__probe__"
    path = tmp_path / "probe.py"
    path.write_text(source)
    MODULES[name] = (path, False)
    try:
        assert {"pytusd.asgi.app", "pytusd.server.cli", "pytusd.asgi", "pytusd.server"} <= imports_of(name)
        with pytest.raises(AssertionError, match="imports against the layers"):
            GRAPH[name] = imports_of(name)
            try:
                test_imports_run_down_the_layers(name)
            finally:
                del GRAPH[name]
    finally:
        del MODULES[name]


def test_readme_draws_the_real_tree() -> None:
    """README's "Architecture in brief" has one line per module, and names no module that is not there."""
    import re

    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture in brief", 1)[1]
    block = section.split("```", 2)[1]
    listed = {m.group(1) for m in re.finditer(r"^([\w/]+(?:\.py|/))\s", block, re.M)}
    modules = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if "proto" not in p.parts and p.name not in ("__init__.py", "__main__.py")}
    packages_described = {name for name in listed if name.endswith("/")}
    missing = sorted(m for m in modules if m not in listed and not any(m.startswith(p) for p in packages_described))
    assert not missing, f"modules README's architecture section leaves out: {missing}"
    gone = sorted(name for name in listed if not (ROOT / name).exists())
    assert not gone, f"README's architecture section names what is not in src/pytusd: {gone}"


def test_no_reference_to_a_file_that_is_not_here() -> None:
    """Docstrings, comments and README cite only files of this repository (a path like ``reference/x.md`` or
    ``src/pytusd/x.py`` that is not in the checkout would send a reader nowhere)."""
    import re

    repo = SRC.parent
    # The repository's own files: tracked ones (ignored folders such as bench/peers hold other checkouts).
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=False)
    if tracked.returncode == 0:
        files = [repo / name for name in tracked.stdout.decode().split("\0") if name]
    else:  # an exported tree without .git
        files = [p for p in repo.rglob("*") if not {"node_modules", "peers", ".venv"} & set(p.parts)]
    folders = ("src", "tests", "bench", "testbed", "scripts")
    texts = [
        p for p in files
        if p.is_file() and (p.suffix == ".md" or (p.suffix == ".py" and p.relative_to(repo).parts[0] in folders))
        and "node_modules" not in p.parts
    ]
    cited = re.compile(r"(?<![\w./-])((?:src|tests|bench|testbed|scripts|reference|docs|examples)/[\w./-]+\.(?:py|md|json|png))")
    dangling = []
    for path in texts:
        for match in cited.finditer(path.read_text(encoding="utf-8", errors="replace")):
            generated = match.group(1).startswith("bench/results/")  # the bench's own output, gitignored
            if not generated and path.name != "test_layers.py" and not (repo / match.group(1)).exists():
                dangling.append(f"{path.relative_to(repo)}: {match.group(1)}")
        if path.suffix == ".py" and re.search(r"def test_p\d", path.read_text(encoding="utf-8")):
            dangling.append(f"{path.relative_to(repo)}: a test named by a checklist number (name the behaviour)")
    assert not dangling, "\n".join(dangling)


# Sphinx-style cross references in the package's docstrings and comments: :mod:`...`, :class:`~...`, ...
REFERENCE = re.compile(r":(?:mod|class|meth|func|data|attr|exc|obj):`~?([\w.]+)`")


def _resolves(module: object, source: str, target: str) -> bool:
    """Whether a reference written in ``module`` names something that exists (absolute, relative or local)."""
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    if target.startswith("."):
        dots = len(target) - len(target.lstrip("."))
        base = package.rsplit(".", dots - 1)[0] if dots > 1 else package
        target = f"{base}.{target.lstrip('.')}"
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        rest = parts[cut:]
        for i, part in enumerate(rest):
            if not hasattr(found, part):
                # The last name may be an attribute the class sets on its instances.
                last = i == len(rest) - 1 and isinstance(found, type)
                return last and re.search(rf"self\.{part}\b\s*[:=]", inspect.getsource(found)) is not None
            found = getattr(found, part)
        return True
    try:  # a name of this module (or a builtin), then attributes
        first = parts[0]
        found = vars(module)[first] if first in vars(module) else vars(builtins)[first]
        for part in parts[1:]:
            found = getattr(found, part)
        return True
    except (KeyError, AttributeError):
        pass
    # An attribute a class of this module sets on its instances (self.name = ..., or a dataclass field).
    name = parts[-1]
    return bool(re.search(rf"(self\.{name}\b\s*[:=]|^\s+{name}\s*:|def {name}\b)", source, re.M))


def test_docstring_references_name_what_exists() -> None:
    """A :mod:/:class:/:meth: reference to a module or name that was renamed or moved fails here."""
    stale = []
    for name, (path, _) in MODULES.items():
        source = path.read_text()
        targets = set(REFERENCE.findall(source))
        if not targets:
            continue
        module = importlib.import_module(name)
        stale += [f"{name}: {target}" for target in sorted(targets) if not _resolves(module, source, target)]
    assert not stale, stale
