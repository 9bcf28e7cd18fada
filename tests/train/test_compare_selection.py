"""A compare directory built by hand (no training): the table reports the test value of the epoch selected
on validation among the epochs at the target density (never a decay method's denser start), beside the
last epoch and the paper's protocol (best test epoch after T_end); compare.csv holds every column of
compare.md; `chtorch report COMPARE_DIR` rebuilds both from the runs' records."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from chtorch.cli import main
from chtorch.train.compare_table import write_compare

RULE = {"metric": "val_accuracy", "higher_is_better": True, "tie_break": "val_loss"}

# (density, updates so far, val accuracy, test accuracy) per epoch.
GMP = [(0.5, 1, 0.99, 0.985), (0.2, 2, 0.97, 0.97), (0.1, 3, 0.95, 0.95), (0.1, 4, 0.96, 0.955), (0.1, 4, 0.94, 0.96)]
SET = [(0.1, 1, 0.90, 0.91), (0.1, 2, 0.93, 0.92), (0.1, 3, 0.92, 0.93), (0.1, 4, 0.91, 0.90), (0.1, 4, 0.91, 0.91)]


def write_run(run_dir: Path, method: str, rows: list[tuple[float, int, float, float]], validation: bool) -> None:
    run_dir.mkdir(parents=True)
    records = []
    for i, (density, updates, val, test) in enumerate(rows, start=1):
        record: dict[str, Any] = {"kind": "epoch", "epoch": i, "step": 10 * i, "train_loss": 0.1}
        if validation:
            record.update(val_loss=1.0 - val, val_accuracy=val)
        record.update(test_loss=1.0 - test, test_accuracy=test, density=density, active_neurons=0.5, updates=updates)
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = {
        "method": method,
        "sparsity": 0.9,
        "finished": True,
        "epochs": len(rows),
        "steps": 10 * len(rows),
        "primary_metric": "test_accuracy",
        "higher_is_better": True,
        "selection": RULE if validation else None,
        "final": records[-1],
        "data": {"dataset": "digits"},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def compare_dir(tmp_path: Path, validation: bool = True, paper: bool = False) -> Path:
    out = tmp_path / "cmp"
    runs = []
    for method, rows in (("gmp", GMP), ("set", SET)):
        for seed in (0, 1):
            shifted = [(d, u, v, t - 0.01 * seed) for d, u, v, t in rows]
            write_run(out / f"{method}-seed{seed}", method, shifted, validation)
            runs.append({"method": method, "seed": seed, "dir": f"{method}-seed{seed}"})
    plan = {
        "name": "hand",
        "methods": ["gmp", "set"],
        "seeds": [0, 1],
        "sparsity": 0.9,
        "paper_table": "table7-mnist" if paper else None,
        "paper_rows": {"gmp": "GMP", "set": "SET"},
        "runs": runs,
    }
    (out / "compare-plan.json").write_text(json.dumps(plan), encoding="utf-8")
    return out


def test_the_decay_method_is_reported_at_its_validation_epoch_after_the_decay(tmp_path: Path) -> None:
    _, rows, runs, _ = write_compare(compare_dir(tmp_path), plots=False)
    gmp = [r for r in runs if r["method"] == "gmp"]
    # Epoch 1 (density 0.5) has the best validation and test accuracy; epoch 4 is the best at density 0.1.
    assert [r["selected_epoch"] for r in gmp] == [4, 4]
    assert [r["selected"] for r in gmp] == pytest.approx([0.955, 0.945])
    assert [r["best_final"] for r in gmp] == pytest.approx([0.96, 0.95])  # test epochs 4-5 (topology final)
    assert [r["last"] for r in gmp] == pytest.approx([0.96, 0.95])
    assert [r["selected_epoch"] for r in runs if r["method"] == "set"] == [2, 2]
    assert rows[0]["selected_mean"] == pytest.approx(0.95) and rows[0]["selected_runs"] == 2


def _number(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+|-?\d+", text)]


# compare.md's column -> (compare.csv's columns, scale) — a new column of compare.md fails here until
# compare.csv holds it.
MD_TO_CSV = {
    "last epoch": (["last", "last_stderr"], 100.0),
    "epoch selected on validation": (["selected", "selected_stderr"], 100.0),
    "best after T_end": (["best_after_t_end", "best_after_t_end_stderr"], 100.0),
    "active neurons (%)": (["active_neurons", "active_neurons_stderr"], 100.0),
    "density": (["density"], 1.0),
    "runs": (["runs"], 1.0),
    "paper (row)": (["paper_accuracy", "paper_stderr"], 1.0),
    "paper ANP (%)": (["paper_anp"], 1.0),
}


def _column(header: str) -> tuple[list[str], float]:
    for key, value in MD_TO_CSV.items():
        if key in header:
            return value
    raise AssertionError(f"compare.md column {header!r} has no compare.csv column")


@pytest.mark.parametrize("validation", [True, False])
def test_compare_csv_holds_every_column_of_compare_md(tmp_path: Path, validation: bool) -> None:
    out = compare_dir(tmp_path, validation=validation, paper=True)
    write_compare(out, plots=False)
    table = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert ("epoch selected on validation" in table[0]) == validation
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["gmp", "set"]
    for line, row in zip(table[2:], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["method"]
        for name, cell in zip(header[1:], cells[1:]):
            columns, scale = _column(name)
            shown = _number(cell)
            stored = [float(row[c]) * scale for c in columns if row[c] != ""]
            assert shown[: len(stored)] == pytest.approx(stored, abs=0.051), (name, cell, stored)
        if validation:
            assert row["selected_epochs"] == "4 4" or row["method"] == "set"
        else:
            assert row["selected"] == "" and row["selected_runs"] == "0" and row["selected_values"] == ""


def test_report_rebuilds_the_compare_directory(tmp_path: Path, capsys) -> None:
    out = compare_dir(tmp_path)
    write_compare(out, plots=False)
    text, table = (out / "compare.md").read_text(), (out / "compare.csv").read_text()
    (out / "compare.md").unlink()
    (out / "compare.csv").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "compare.csv").read_text() == table
    rebuilt = (out / "compare.md").read_text()
    assert "selected on validation" in rebuilt and "95.00 ± 0.50" in rebuilt  # gmp: (95.5 + 94.5) / 2
    assert rebuilt.split("![")[0].strip() == text.strip()
    capsys.readouterr()


def test_report_md_shows_the_selected_epoch_beside_the_last(tmp_path: Path) -> None:
    from chtorch.train.run_report import write_report

    out = compare_dir(tmp_path)
    text = write_report(out / "gmp-seed0").read_text()
    assert (
        "Selected on validation (best `val_accuracy` among the epochs at the target density): epoch 4, "
        "test_accuracy 95.50% (val_accuracy 96.00%); last epoch 5: test_accuracy 96.00%." in text
    )
    none = compare_dir(tmp_path / "none", validation=False)
    assert "Selected on validation" not in write_report(none / "gmp-seed0").read_text()
