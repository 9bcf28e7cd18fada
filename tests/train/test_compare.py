"""``chtorch compare``: parallel runs, resume of interrupted runs, the table (last epoch, epoch selected
on validation and best test epoch after T_end, mean ± SE, ANP, the paper's Table 7 cells), compare.csv
holding every column of compare.md, overlay plots, `chtorch report COMPARE_DIR`, refusal of run
directories from another config, and failed runs reported with their logs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from chtorch.cli import main
from chtorch.config import ConfigError, load_config
from chtorch.train import TrainingError, compare
from chtorch.train.compare_plots import cost_series
from chtorch.train.compare_table import format_table
from chtorch.train.metrics import read_metrics
from chtorch.train.paper_tables import TABLES, paper_cell, paper_row
from chtorch.train.seed_stats import mean_stderr
from chtorch.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.hidden=[16,16]",
    "train.epochs=2",
    "data.batch_size=128",
    "train.plots=false",
    "train.report=false",
    "train.progress=off",
]


def tiny_config(*overrides: str):
    return load_config(str(ROOT / "configs" / "digits_chts.yaml"), [*TINY, *overrides])


def test_mean_stderr_by_hand() -> None:
    mean, err = mean_stderr([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and err == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2 / 3))
    assert mean_stderr([5.0]) == (5.0, None)


def test_paper_rows_and_cells() -> None:
    assert paper_row("dense") == "FC" and paper_row("rigl") == "RigL" and paper_row("mest") is None
    assert (
        paper_row("chts", {"ch_predictor": "l3p"}) == "CHTsp" and paper_row("chts", {"ch_predictor": "l3n"}) == "CHTsn"
    )
    assert (
        paper_row("chtss", {"ch_predictor": "l3n"}) == "CHTssn" and paper_row("chtss", {"ch_predictor": "l3p"}) is None
    )
    cell = paper_cell("table7-mnist", "CHTssn")
    assert (cell.accuracy, cell.stderr, cell.anp) == (98.83, 0.02, 32)
    assert paper_cell("table7-fmnist", "FC").anp is None and paper_cell("table7-emnist", "CHTsn").accuracy == 87.82
    assert paper_cell(None, "FC") is None and paper_cell("table7-mnist", None) is None
    # The config's choices and the data module name the same tables.
    from chtorch.config import RunConfig

    assert set(RunConfig.__dataclass_fields__["paper_table"].metadata["choices"]) == set(TABLES)


def test_table_formats_last_selected_best_after_t_end_anp_and_paper_columns() -> None:
    row = {
        "method": "chts",
        "mean": 0.9,
        "stderr": 0.01,
        "selected_mean": 0.95,
        "selected_stderr": None,
        "selected_runs": 2,
        "best_final_mean": 0.94,
        "best_final_stderr": 0.005,
        "active_neurons": 0.5,
        "active_neurons_stderr": 0.02,
        "density": 0.01,
        "runs": 2,
        "planned": 3,
        "paper": {"row": "CHTsn", "accuracy": 98.76, "stderr": 0.05, "anp": 27},
    }
    mest = {**row, "method": "mest", "paper": None, "planned": 2, "selected_runs": 1}
    table = format_table([row, mest], "test_accuracy")
    lines = table.splitlines()
    assert lines[0] == (
        "| method | test accuracy (%), last epoch | test accuracy (%), epoch selected on validation | "
        "test accuracy (%), best after T_end (on test: the paper's protocol) | active neurons (%) | density | runs | "
        "paper (row) | paper ANP (%) |"
    )
    assert (
        lines[2] == "| chts | 90.00 ± 1.00 | 95.00 | 94.00 ± 0.50 | 50.0 ± 2.0 | 0.0100 | 2 of 3 | "
        "98.76 ± 0.05 (CHTsn) | 27 |"
    )
    assert "| 95.00 (1 of 2 runs) |" in lines[3] and lines[3].endswith("| 2 | — | — |")
    # Without a validation split (the paper configs) the column is left out rather than filled with dashes.
    unselected = format_table([{**row, "selected_mean": None, "selected_runs": 0}], "test_accuracy")
    assert "selected on validation" not in unselected and "| 90.00 ± 1.00 | 94.00 ± 0.50 |" in unselected


def test_parallel_compare_runs_subprocesses_with_one_thread_and_reruns_nothing(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "cmp"
    args = [
        "compare",
        str(ROOT / "configs" / "digits_chts.yaml"),
        "--methods",
        "dense,set",
        "--seeds",
        "0",
        "--jobs",
        "2",
    ]
    args += ["--out", str(out_dir), "--set", *TINY, "train.epochs=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("] finished ") == 2 and "(log: " in out
    for m in ("dense", "set"):
        run_dir = out_dir / f"{m}-seed0"
        assert json.loads((run_dir / "summary.json").read_text())["finished"]
        assert "epoch 1/1" in (out_dir / "logs" / f"{m}-seed0.log").read_text()
        assert load_config(str(run_dir / "config.yaml")).run.threads == 1  # one torch thread per parallel run
    assert [r["method"] for r in csv.DictReader((out_dir / "compare.csv").open())] == ["dense", "set"]
    assert main(args) == 0  # the same command again trains nothing
    assert capsys.readouterr().out.count("finished earlier") == 2


def test_compare_table_paper_cells_plots_and_report(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "cmp"
    compare(tiny_config("run.paper_table=table7-mnist"), ["dense", "set"], [0, 1], out_dir, out=io.StringIO())
    rows = list(csv.DictReader((out_dir / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["dense", "set"] and all(r["runs"] == "2" for r in rows)
    assert [r["paper_row"] for r in rows] == ["FC", "SET"] and rows[1]["paper_anp"] == "100"
    for r in rows:  # the best test epoch after T_end is never worse than the last
        assert all(float(b) >= float(v) for b, v in zip(r["best_after_t_end_values"].split(), r["values"].split()))
        values = [float(v) for v in r["values"].split()]
        assert float(r["last"]) == pytest.approx(sum(values) / 2, rel=1e-5)  # values are printed to 6 digits
        assert r["last_stderr"] != "" and r["metric"] == "test_accuracy"  # two seeds: an error bar
        assert r["selected_runs"] == "2" and len(r["selected_epochs"].split()) == 2  # digits holds out 10%
    summary = json.loads((out_dir / "set-seed0" / "summary.json").read_text())
    assert summary["selection"] == {"metric": "val_accuracy", "higher_is_better": True, "tie_break": "val_loss"}
    assert summary["selected"]["epoch"] in (1, 2) and 0.0 <= summary["selected"]["test_accuracy"] <= 1.0
    assert summary["data"]["val_samples"] > 0
    text = (out_dir / "compare.md").read_text()
    assert "98.14 ± 0.02 (SET)" in text and "](compare_curves.png)" in text and "](compare_final.png)" in text
    # Density and training FLOPs per method: SET holds its links all along, dense every link.
    assert "](compare_cost.png)" in text
    cost = cost_series(json.loads((out_dir / "compare.json").read_text())["runs"], ["dense", "set"])
    assert cost["dense"]["total"] == cost["dense"]["dense_total"] > 0
    assert cost["set"]["total"] / cost["set"]["dense_total"] == pytest.approx(cost["set"]["density"][1][-1], rel=1e-3)
    # A tiny budget beside the paper's cells is said to be one.
    assert "**Not the paper's protocol**: train.epochs 2 (the paper: 100); model.hidden [16, 16]" in text
    # `chtorch report` rebuilds the table and plots of a compare directory from its runs.
    for name in ("compare.md", "compare_curves.png", "compare_final.png", "compare_cost.png"):
        (out_dir / name).unlink()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["report", str(out_dir)]) == 0
    assert (out_dir / "compare.md").read_text() == text and (out_dir / "compare_final.png").is_file()
    assert "98.14 ± 0.02 (SET)" in capsys.readouterr().out


def test_compare_resumes_an_interrupted_run_exactly(tmp_path: Path) -> None:
    config = tiny_config("train.epochs=3")
    reference = compare(config, ["set"], [0], tmp_path / "ref", out=io.StringIO())
    # The same run, interrupted mid-training in the compare directory (as Ctrl-C leaves it).
    out_dir = tmp_path / "cmp"
    first = compare(config, ["dense"], [0], out_dir, out=io.StringIO())  # creates the directory and its plan
    assert first.rows[0]["runs"] == 1
    from chtorch.train.compare import _run_config

    run_config = _run_config(config, "set", 0, out_dir / "set-seed0", None)

    def stop(trainer: Trainer) -> None:
        if trainer.step == 20:
            trainer.request_stop()

    result = Trainer(run_config, out=io.StringIO(), callbacks=[stop]).fit()
    assert result.interrupted
    log = io.StringIO()
    compare(config, ["set"], [0], out_dir, out=log)
    assert "finished earlier" not in log.getvalue()

    def epochs(run_dir):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir) if r["kind"] == "epoch"]

    assert epochs(out_dir / "set-seed0") == epochs(tmp_path / "ref" / "set-seed0")
    assert reference.rows[0]["mean"] == json.loads((out_dir / "compare.json").read_text())["rows"][0]["mean"]


def test_a_run_directory_of_another_config_is_refused(tmp_path: Path) -> None:
    compare(tiny_config(), ["set"], [0], tmp_path / "cmp", out=io.StringIO())
    with pytest.raises(
        ConfigError, match=r"set-seed0 was trained with another configuration \(train.epochs: 2 there, 3 now"
    ):
        compare(tiny_config("train.epochs=3"), ["set"], [0], tmp_path / "cmp", out=io.StringIO())


def test_another_method_s_options_leave_a_finished_run_valid(tmp_path: Path) -> None:
    compare(tiny_config(), ["set", "rigl"], [0], tmp_path / "cmp", out=io.StringIO())
    log = io.StringIO()
    compare(tiny_config("sparsity.method_options.rigl.zeta=0.2"), ["set"], [0], tmp_path / "cmp", out=log)
    assert "finished earlier" in log.getvalue()
    with pytest.raises(
        ConfigError,
        match=r"rigl-seed0 was trained with another configuration \(sparsity options of rigl.zeta: None there, 0.2 now",
    ):
        compare(
            tiny_config("sparsity.method_options.rigl.zeta=0.2"),
            ["set", "rigl"],
            [0],
            tmp_path / "cmp",
            out=io.StringIO(),
        )


def test_a_setting_given_through_options_or_method_options_is_the_same_run(tmp_path: Path) -> None:
    """A run trained with ``--set sparsity.options.zeta=0.2`` (under any run name) is what a config
    with ``method_options.rigl.zeta: 0.2`` plans: it is reused, not refused or retrained."""
    compare(
        tiny_config("sparsity.options.zeta=0.2", "run.name=ablation"),
        ["rigl"],
        [0],
        tmp_path / "cmp",
        out=io.StringIO(),
    )
    log = io.StringIO()
    compare(tiny_config("sparsity.method_options.rigl.zeta=0.2"), ["rigl"], [0], tmp_path / "cmp", out=log)
    assert "finished earlier" in log.getvalue()
    with pytest.raises(ConfigError, match=r"sparsity options of rigl.zeta: 0.2 there, 0.25 now"):
        compare(
            tiny_config("sparsity.method_options.rigl.zeta=0.25"), ["rigl"], [0], tmp_path / "cmp", out=io.StringIO()
        )


def test_failed_parallel_runs_are_reported_with_their_logs(tmp_path: Path) -> None:
    config = load_config(str(ROOT / "configs" / "mlp_mnist_cpu.yaml"), [*TINY, f"data.dir={tmp_path / 'nowhere'}"])
    with pytest.raises(TrainingError, match=r"1 of 1 runs failed: set-seed0 \(exit status 2; see .*set-seed0.log\)"):
        compare(config, ["set"], [0], tmp_path / "cmp", out=io.StringIO(), jobs=2)
    assert "error" in (tmp_path / "cmp" / "logs" / "set-seed0.log").read_text()
    with pytest.raises(ConfigError, match="--jobs"):
        compare(config, ["set"], [0], tmp_path / "cmp", out=io.StringIO(), jobs=0)


def test_a_run_trained_on_other_data_is_not_reused(tmp_path: Path) -> None:
    """Where the data is decides the result: a finished run of another data.dir is refused."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    compare(tiny_config(f"data.dir={tmp_path / 'a'}"), ["set"], [0], tmp_path / "cmp", out=io.StringIO())
    with pytest.raises(ConfigError, match=r"another configuration \(data.dir"):
        compare(tiny_config(f"data.dir={tmp_path / 'b'}"), ["set"], [0], tmp_path / "cmp", out=io.StringIO())
