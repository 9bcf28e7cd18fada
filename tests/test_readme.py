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
