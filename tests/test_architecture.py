"""The package's shape: imports go only downward (no cycle at any import level, no wing importing a
wing above it), the ground floor imports nothing of chtorch, the application enters the engine through
its face, and no source file is over 500 lines (one job per module)."""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "chtorch"
MAX_LINES = 500

# The ground floor: helpers every layer shares (atomic writes, described fields, argument checks).
GROUND_FLOOR = ("chtorch._io", "chtorch._fields", "chtorch._checks")

# Which packages a package may not import from, at any level (module or function): the ground floor
# of the application knows no data set, model, recipe or trainer; the engine knows no application and
# no data files; the kernel wing (sparse layers, link prediction) knows no engine.
FORBIDDEN = {
    "chtorch.config": (
        "chtorch.data",
        "chtorch.models",
        "chtorch.recipes",
        "chtorch.train",
        "chtorch.cli",
        "chtorch.integrations",
    ),
    "chtorch.recipes": ("chtorch.train", "chtorch.cli", "chtorch.integrations"),
    "chtorch.dst": (
        "chtorch.train",
        "chtorch.config",
        "chtorch.recipes",
        "chtorch.data",
        "chtorch.cli",
        "chtorch.integrations",
    ),
    "chtorch.models": ("chtorch.train", "chtorch.config", "chtorch.recipes", "chtorch.dst", "chtorch.cli"),
    "chtorch.sparse": ("chtorch.dst", "chtorch.train", "chtorch.config", "chtorch.recipes", "chtorch.cli"),
    "chtorch.linkpred": ("chtorch.dst", "chtorch.train", "chtorch.config", "chtorch.recipes", "chtorch.cli"),
}

# The application, which imports the engine only through its face (`chtorch.dst`, never a submodule).
APPLICATION = ("chtorch.config", "chtorch.recipes", "chtorch.train", "chtorch.integrations", "chtorch.cli")

# The only imports allowed inside functions, (importer, imported) as shell patterns, each with why.
LAZY_IMPORTS = {
    ("chtorch.cli*", "chtorch.*"): "`chtorch --help` and `--version` must not load the config, recipes, data "
    "or trainer: each subcommand imports what it runs",
    ("chtorch.*", "chtorch.config.safe_yaml"): "PyYAML is an optional extra ([cli]); the library runs without it",
    ("chtorch.integrations", "chtorch.integrations.hf"): "transformers is an optional extra ([hf]); importing "
    "chtorch.integrations must not import it",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str) -> str | None:
    """The chtorch module that importing ``name`` executes last (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_edges(module: str) -> set[tuple[str, bool]]:
    """``(imported module, inside a function)`` for every chtorch import of ``module`` that runs:
    at module level (the module body, class bodies, ``if``/``try`` blocks) or inside a function
    (or lambda); ``if TYPE_CHECKING`` blocks never run and are skipped."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names if alias.name.startswith("chtorch")]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("chtorch"):
                    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names]
            for name in names:
                target = _target(name)
                if target is not None and target != module:
                    found.add((target, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


EDGES = {m: _import_edges(m) for m in MODULES}


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    return {m: {t for t, lazy in edges if not (lazy and module_level_only)} for m, edges in EDGES.items()}


def _function_level(module: str) -> set[str]:
    return {t for t, lazy in EDGES[module] if lazy}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)) is not None:
            return cycle
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_parser_sees_imports() -> None:
    """Guard against a parser that finds nothing (which would make the tests below pass vacuously)."""
    graph = _graph(module_level_only=True)
    assert "chtorch._checks" in graph["chtorch.config.registry"]
    assert "chtorch.recipes.image" in graph["chtorch.recipes.builtin"]
    assert "chtorch.train.distributed" in graph["chtorch.train.trainer"]  # `from chtorch.train import distributed`
    assert "chtorch.train" in _function_level("chtorch.cli")  # an import inside a function
    assert "chtorch.config" not in graph["chtorch.cli"]  # ... and only there (`if TYPE_CHECKING` does not run)
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_any_level() -> None:
    """Imports form no cycle, counting those inside functions (a cycle hidden in a function is still one)."""
    cycle = _find_cycle(_graph(module_level_only=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_inside_functions_are_only_the_listed_lazy_ones() -> None:
    used: set[tuple[str, str]] = set()
    bad = []
    for module in sorted(MODULES):
        for target in sorted(_function_level(module)):
            rules = [r for r in LAZY_IMPORTS if fnmatchcase(module, r[0]) and fnmatchcase(target, r[1])]
            used.update(rules)
            if not rules:
                bad.append(f"{module} imports {target} inside a function")
    assert not bad, "import these at module level (or list one in LAZY_IMPORTS with its reason):\n" + "\n".join(bad)
    assert used == set(LAZY_IMPORTS), f"unused LAZY_IMPORTS entries: {sorted(set(LAZY_IMPORTS) - used)}"


def test_ground_floor_imports_nothing_of_chtorch() -> None:
    bad = {m: sorted(t for t, _ in EDGES[m]) for m in GROUND_FLOOR if EDGES[m]}
    assert not bad, f"the ground floor depends on nothing of chtorch: {bad}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_wings_import_only_downward(package: str) -> None:
    bad = []
    for module, targets in _graph(module_level_only=False).items():
        if _in(module, package):
            bad += [f"{module} imports {t}" for t in sorted(targets) if t.startswith(FORBIDDEN[package])]
    assert not bad, "\n".join(bad)


def test_the_application_enters_the_engine_through_its_face() -> None:
    """``config``, ``recipes``, ``train``, ``integrations`` and ``cli`` import ``chtorch.dst`` (its face,
    a grouped ``__all__``), never ``chtorch.dst.<submodule>``."""
    graph = _graph(module_level_only=False)
    reaching = {m for m in MODULES if any(_in(m, app) for app in APPLICATION)}
    inside = {m: sorted(t for t in graph[m] if t.startswith("chtorch.dst.")) for m in reaching}
    bad = [f"{m} imports {', '.join(ts)}" for m, ts in sorted(inside.items()) if ts]
    assert not bad, "import these names from chtorch.dst:\n" + "\n".join(bad)


def test_no_source_file_over_500_lines() -> None:
    """Sources, tests and benchmarks alike (at <= 120 characters a line, which ruff checks)."""
    root = SRC.parent
    files = [p for folder in ("src", "tests", "benchmarks") for p in (root / folder).rglob("*.py")]
    sizes = {p.relative_to(root).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"split these into modules with one job each (limit {MAX_LINES} lines): {too_long}"
