"""Each wing has one face: the application imports ``chtorch.dst``, never one of its submodules, and
the kernel wing (``chtorch.sparse``, ``chtorch.linkpred``) never imports the engine. Imports are
read with ``ast`` at every level, inside functions too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chtorch"
APPLICATION = ("config", "recipes", "train", "integrations", "cli.py")
KERNEL_WING = ("sparse", "linkpred")


def _files(parts: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        path = SRC / part
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = SRC.parent / dotted.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[int, str]]:
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    return _imports_of(path.read_text(encoding="utf-8"), package)


def _imports_of(text: str, package: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``text`` (at any level); ``from chtorch.dst import x``
    counts as ``chtorch.dst.x`` too when ``x`` is a submodule rather than a name of the face."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if _is_module(f"{module}.{a.name}")]
    return found


def test_application_imports_only_the_engine_face() -> None:
    offenders = []
    for path in _files(APPLICATION):
        for line, module in _imports(path):
            if module.startswith("chtorch.dst."):
                offenders.append(f"{path.relative_to(SRC.parent)}:{line} imports {module}")
    assert not offenders, "import chtorch.dst (the face) instead:\n" + "\n".join(offenders)


def test_kernel_wing_never_imports_the_engine() -> None:
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line} imports {module}"
        for path in _files(KERNEL_WING)
        for line, module in _imports(path)
        if module == "chtorch.dst" or module.startswith("chtorch.dst.")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_imports_inside_functions() -> None:
    """A submodule import nested in a function, a submodule named in a from-import and a relative
    import are all found; a face name is not taken for a submodule."""
    text = (
        "def f():\n    from chtorch.dst import engine, DynamicSparsity\n"
        "    import chtorch.dst.update\n    from ..dst import state\n"
    )
    modules = {m for _, m in _imports_of(text, "chtorch.train")}
    assert {"chtorch.dst.engine", "chtorch.dst.update", "chtorch.dst.state"} <= modules
    assert "chtorch.dst.DynamicSparsity" not in modules


@pytest.mark.parametrize("wing", ["chtorch.dst", "chtorch.sparse", "chtorch.linkpred"])
def test_face_exports_what_it_lists(wing: str) -> None:
    module = importlib.import_module(wing)
    names = module.__all__
    assert len(names) == len(set(names)), f"{wing}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{wing}.__all__ names {missing}, which the module lacks"


def test_engine_face_keeps_its_submodules_reachable() -> None:
    """A face name never shadows a submodule (``chtorch.dst.methods`` stays the module)."""
    import types

    dst = importlib.import_module("chtorch.dst")
    for path in (SRC / "dst").glob("*.py"):
        if path.stem != "__init__":
            importlib.import_module(f"chtorch.dst.{path.stem}")
            assert isinstance(getattr(dst, path.stem), types.ModuleType), path.stem
