"""First steps on the command line: --version, "next:" hints that follow what ran, and a missing-data
error that names the command-line fix."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

import chtorch.recipes.builtin  # noqa: F401  (registers the recipes a config names)
from chtorch import __version__
from chtorch.cli import main
from chtorch.cli_hints import data_hint, next_hints
from chtorch.config import load_config

MNIST = str(Path(__file__).resolve().parents[2] / "configs" / "mlp_mnist_cpu.yaml")


def test_version_prints_chtorch_and_torch(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"chtorch {__version__} (torch ") and torch.__version__.split("+")[0] in out


def _result(run_dir: Path, report: bool) -> types.SimpleNamespace:
    run_dir.mkdir(parents=True, exist_ok=True)
    if report:
        (run_dir / "report.md").write_text("# report\n")
    return types.SimpleNamespace(run_dir=run_dir)


def test_hints_follow_the_config_and_method_that_ran(tmp_path) -> None:
    config = load_config(MNIST, ["sparsity.method=rigl"])
    hints = next_hints(_result(tmp_path / "a", report=True), config, "configs/mlp_mnist_cpu.yaml")
    assert hints[0].startswith("open ") and "report.md" in hints[0]
    assert any(h.startswith("chtorch export ") for h in hints)
    assert any(h.startswith("chtorch compare configs/mlp_mnist_cpu.yaml --methods dense,set,rigl ") for h in hints)
    assert not any("mlp_mnist_cpu.yaml --set data.dir" in h for h in hints)  # no "try a real dataset" after one


def test_hints_for_a_dense_run_without_report_and_for_the_demo(tmp_path) -> None:
    dense = load_config(None, ["sparsity.method=dense"])
    hints = next_hints(_result(tmp_path / "b", report=False), dense, None)
    assert hints[0].startswith("chtorch report ") and not any("export" in h for h in hints)
    # after the demo: a real dataset, by a shipped name that works outside the clone too
    assert any(h.startswith("chtorch train mlp_mnist_cpu --set data.dir=") for h in hints)
    assert any(h.startswith("chtorch compare digits_chts ") for h in hints)
    demo = next_hints(_result(tmp_path / "c", report=True), load_config(None, []), None)
    assert any(h.startswith("chtorch export ") for h in demo)


def test_missing_data_error_names_the_command_line_fix(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHTORCH_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["train", MNIST, "--out", str(tmp_path / "run"), "--set", f"data.dir={tmp_path / 'empty'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.rstrip().endswith(
        "On the command line: --set data.dir=<folder holding the files> "
        "or --set data.download=true (checksum-verified download)."
    )


def test_data_hint_only_for_missing_files() -> None:
    from chtorch.data.files import DataFormatError, DataNotFoundError

    assert "--set data.dir=" in data_hint(DataNotFoundError("x.txt not found"))
    assert "data.download" not in data_hint(DataNotFoundError("corpus not found; set CHTORCH_DATA"))
    assert data_hint(DataFormatError("bad magic")) == ""
