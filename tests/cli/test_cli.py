"""The ``chtorch`` command: help, methods, train end to end, report, resume after Ctrl-C, compare, export."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chtorch.cli import main
from chtorch.dst.methods import methods
from chtorch.train.checkpoint import load_checkpoint

# The `chtorch` command end to end (deselect with -m "not e2e" for a quick inner loop).
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.hidden=[32,32]", "train.epochs=2", "data.batch_size=64", "sparsity.method=set"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- help and listings


def test_help_through_the_installed_entry_points() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chtorch.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ("train", "methods", "compare", "report", "export"):
        assert command in result.stdout
    script = shutil.which("chtorch")
    if script is not None:  # the console script from pyproject's [project.scripts]
        result = subprocess.run([script, "train", "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--resume" in result.stdout


@pytest.mark.parametrize(
    "command,words",
    [
        ("train", ["--set", "--resume", "--out", "digits"]),
        ("compare", ["--methods", "--seeds"]),
        ("report", ["RUN_DIR"]),
    ],
)
def test_subcommand_help(capsys, command: str, words: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


def test_methods_lists_one_line_each(capsys) -> None:
    code, out, _ = cli(capsys, "methods")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == len(methods()) + 1
    names = [line.split()[0] for line in lines]
    assert names[0] == "dense" and sorted(names[1:]) == methods()
    assert any(line.startswith("chts ") and "CHTs" in line for line in lines)


def test_config_command(capsys) -> None:
    code, out, _ = cli(capsys, "config", "--set", "optim.lr=0.5", "train.epochs=7")
    assert code == 0 and "lr: 0.5" in out and "epochs: 7" in out
    code, out, _ = cli(capsys, "config", "--reference")
    assert code == 0 and "`sparsity.method`" in out


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args,words",
    [
        (["train", "--set", "optim.lrr=1"], ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"]),
        (["train", "--set", "sparsity.method=chtz"], ["unknown method 'chtz'", "known methods"]),
        (["train", "--set", "data.name=imagenet"], ["unknown dataset 'imagenet'", "mnist"]),
        (["train", "--set", "train.epochs=-1"], ["train.epochs must be a number >= 1", "got -1"]),
        (["train", "--set", "{cfg}"], ["key=value", "before --set"]),
        (["train", "{cfg}", "--resume", "somewhere"], ["not both"]),
        (["train", "no_such.yaml"], ["not found"]),
        (
            ["train", "--set", "sparsity.options.init=csti", "model.hidden=[100,100]", "train.epochs=1"],
            ["sparsity settings do not fit this model", "CSTI"],
        ),
        (["train", "--resume", "no_such_run"], ["no checkpoint"]),
        (["report", "no_such_run"], ["not a chtorch run directory"]),
        (["compare", "{cfg}", "--methods", "set,foo"], ["unknown method 'foo'"]),
        (["compare", "{cfg}", "--methods", "set", "--seeds", "a"], ["--seeds"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    capsys, monkeypatch, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written; if something is, it lands here
    args = [a.replace("{cfg}", str(ROOT / "configs" / "digits_chts.yaml")) for a in args]
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.startswith("chtorch: error: ")
    for word in words:
        assert word in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_missing_data_files_name_the_fix(capsys, tmp_path: Path) -> None:
    code, _, err = cli(
        capsys,
        "train",
        str(ROOT / "configs" / "mlp_mnist_cpu.yaml"),
        "--set",
        f"data.dir={tmp_path}",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and str(tmp_path) in err


# ----------------------------------------------------------------------------- train, report


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["train", "--set", *TINY, "--out", str(run_dir)])
    assert code == 0
    return run_dir, out.getvalue()


PLOTS = ["curves.png", "topology.png", "updates.png", "degrees.png", "adjacency_layers.0.png", "adjacency_layers.1.png"]


def test_train_end_to_end_writes_everything(trained) -> None:
    run_dir, out = trained
    for name in ["config.yaml", "metrics.jsonl", "metrics.csv", "checkpoint.pt", "summary.json", "report.md", *PLOTS]:
        assert (run_dir / name).is_file(), name
    assert "test accuracy" in out and "density 0." in out and "active neurons" in out
    assert "next:" in out and "chtorch compare" in out
    report = (run_dir / "report.md").read_text()
    assert "](curves.png)" in report and "](adjacency_layers.0.png)" in report and "| test_accuracy |" in report
    state = load_checkpoint(run_dir)
    assert state["finished"] and state["epoch"] == 2 and "layers.0.weight_mask" in state["model"]


def test_report_recreates_plots_and_report(trained, capsys) -> None:
    run_dir, _ = trained
    for name in [*PLOTS, "report.md"]:
        (run_dir / name).unlink()
    code, out, _ = cli(capsys, "report", str(run_dir))
    assert code == 0
    for name in [*PLOTS, "report.md"]:
        assert (run_dir / name).is_file(), name
        assert str(run_dir / name) in out


def test_default_train_is_the_offline_demo(capsys, tmp_path: Path) -> None:
    # The README's command, cut to one tiny epoch: no config, no data files, no network.
    code, out, _ = cli(
        capsys,
        "train",
        "--set",
        "train.epochs=1",
        "model.hidden=[32,32,32]",
        "train.plots=false",
        "--out",
        str(tmp_path / "demo"),
    )
    assert code == 0 and "built-in demo config" in out and "finished digits_chts (chts)" in out


# ----------------------------------------------------------------------------- Ctrl-C and --resume


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(capsys, tmp_path: Path) -> None:
    overrides = [
        "model.hidden=[32,32]",
        "train.epochs=12",
        "data.batch_size=64",
        "sparsity.method=rigl",
        "model.dropout=0.1",
        "train.plots=false",
        "train.report=false",
        "train.progress=lines",
    ]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", "--set", *overrides, "train.progress=off", "--out", str(full)]) == 0

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chtorch.cli", "train", "--set", *overrides, "--out", str(part)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (part / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C somewhere after epoch 1: wherever it lands, resume is exact
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"chtorch train --resume {part}" in out
    assert load_checkpoint(part)["step"] < load_checkpoint(full)["step"]

    capsys.readouterr()
    assert main(["train", "--resume", str(part), "--set", "train.progress=off"]) == 0
    a, b = load_checkpoint(full)["model"], load_checkpoint(part)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # identical final weights and masks


# ----------------------------------------------------------------------------- compare and export


def test_compare_two_methods_two_seeds(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "cmp"
    args = [
        "compare",
        str(ROOT / "configs" / "digits_chts.yaml"),
        "--methods",
        "set,rigl",
        "--seeds",
        "0,1",
        "--out",
        str(out_dir),
        "--set",
        "model.hidden=[32,32]",
        "train.epochs=2",
        "data.batch_size=64",
        "train.plots=false",
        "train.progress=off",
    ]
    code, out, _ = cli(capsys, *args)
    assert code == 0
    table = (out_dir / "compare.md").read_text()
    assert "| set |" in table and "| rigl |" in table and "±" in table and "active neurons" in table
    rows = list(csv.DictReader((out_dir / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["set", "rigl"] and all(r["runs"] == "2" for r in rows)
    assert all(len(r["values"].split()) == 2 for r in rows)
    for m in ("set", "rigl"):
        for s in (0, 1):
            assert (out_dir / f"{m}-seed{s}" / "summary.json").is_file()
    seeds = {load_checkpoint(out_dir / f"set-seed{s}")["config"]["run"]["seed"] for s in (0, 1)}
    assert seeds == {0, 1}
    # Same budget: every run made the same number of steps.
    steps = {load_checkpoint(out_dir / f"{m}-seed{s}")["step"] for m in ("set", "rigl") for s in (0, 1)}
    assert len(steps) == 1
    # Running it again reuses the finished runs.
    code, out, _ = cli(capsys, *args)
    assert code == 0 and out.count("finished earlier") == 4


def test_export_compacts_the_trained_model(trained, capsys, tmp_path: Path) -> None:
    run_dir, _ = trained
    from chtorch.train.export import load_exported

    code, out, err = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "small.safetensors"))
    assert code == 0, err
    model = load_exported(tmp_path / "small.safetensors")
    x = torch.randn(5, 64)
    assert model(x).shape == (5, 10)
    assert "max |difference| of outputs" in out and "latency (median)" in out and "FLOPs" in out
    # --sparse also stores the remaining sparse layers in CSR, with the same outputs
    code, out, err = cli(capsys, "export", str(run_dir), "--sparse", "--out", str(tmp_path / "csr.safetensors"))
    assert code == 0, err
    from chtorch.sparse import SparseInferenceLinear

    csr = load_exported(tmp_path / "csr.safetensors")
    assert any(isinstance(m, SparseInferenceLinear) for m in csr.modules())
    with torch.no_grad():
        torch.testing.assert_close(csr(x), model(x), rtol=1e-4, atol=1e-5)
