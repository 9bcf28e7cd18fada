"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    example = blocks[0]
    assert 'method="rigl"' in example and "AdamW" in example
    assert len(example.strip().splitlines()) <= 25
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "topology update" in out and "chtorch rigl" in out
    sp = namespace["sp"]
    assert abs(sp.density() - 0.1) < 1e-3


def _table_methods(text: str, heading: str) -> set[str]:
    """The backticked names of the first column of the first table under ``heading``."""
    section = text.split(heading, 1)[1]
    rows = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    names: set[str] = set()
    for row in rows[2:]:
        names.update(re.findall(r"`([a-z0-9_]+)`", row.split("|")[1 if heading == "## Methods" else 2]))
    return names


def test_method_tables_name_every_registered_method():
    from chtorch.dst import all_methods

    registered = set(all_methods())
    readme = _table_methods(README.read_text(), "## Methods")
    methods_doc = _table_methods((README.parent / "docs" / "methods.md").read_text(), "## Which method")
    assert readme == registered, f"README methods table: missing {registered - readme}, extra {readme - registered}"
    assert registered <= methods_doc, f"docs/methods.md 'Which method' table misses {registered - methods_doc}"
