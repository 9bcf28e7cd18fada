"""The shipped configs: found by name from anywhere, listed with a line each, copied out without
overwriting, and carried inside a built wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chtorch.cli import main
from chtorch.config import ConfigError, load_config, read_yaml
from chtorch.config.shipped import copy_config, describe_config, resolve_config_path, shipped_configs

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_of_the_repository_is_shipped_under_its_name() -> None:
    assert set(shipped_configs()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert all(describe_config(path) for path in shipped_configs().values())


@pytest.mark.parametrize("given", ["mlp_mnist_cpu", "mlp_mnist_cpu.yaml", "configs/mlp_mnist_cpu.yaml"])
def test_a_shipped_name_resolves_outside_the_clone(given, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert resolve_config_path(given) == shipped_configs()["mlp_mnist_cpu"]
    assert load_config(given, []).run.name == "mlp_mnist_cpu"


def test_an_existing_file_wins_over_the_shipped_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp_mnist_cpu.yaml").write_text("run:\n  name: mine\n")
    assert load_config("mlp_mnist_cpu.yaml", []).run.name == "mine"


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found; shipped configs .*mlp_mnist_cpu"):
        read_yaml("mlp_mnits_cpu")


def test_configs_lists_each_with_its_description(capsys) -> None:
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name, path in shipped_configs().items():
        assert any(line.startswith(name + " ") and describe_config(path) in line for line in out.splitlines())


def test_copy_writes_the_config_and_refuses_to_overwrite(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "copy", "digits_chts"]) == 0
    written = tmp_path / "digits_chts.yaml"
    assert written.read_text() == shipped_configs()["digits_chts"].read_text()
    written.write_text("# edited\n")
    assert main(["configs", "copy", "digits_chts"]) == 2
    assert "already exists" in capsys.readouterr().err and written.read_text() == "# edited\n"
    assert main(["configs", "copy", "digits_chts", "--force"]) == 0
    assert written.read_text() == shipped_configs()["digits_chts"].read_text()
    # into a folder, and a file of another name
    (tmp_path / "into").mkdir()
    assert copy_config("mlp_mnist_cpu", tmp_path / "into") == tmp_path / "into" / "mlp_mnist_cpu.yaml"
    assert copy_config("mlp_mnist_cpu.yaml", tmp_path / "mine.yaml").read_text().startswith("#")
    with pytest.raises(ConfigError, match="no shipped config named 'nope'"):
        copy_config("nope")


def test_train_accepts_a_bare_shipped_name(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["train", "digits_chts", "--quiet", "--out", str(tmp_path / "run"), "--set", "train.epochs=1"])
    assert code == 0 and (tmp_path / "run" / "summary.json").is_file()
    assert "run:\n  name: digits_chts" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.e2e
def test_a_built_wheel_carries_the_configs(tmp_path) -> None:
    """``pip wheel`` of a copy of the source tree (so that the checkout gets no build/ folder)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "configs", tree / "configs")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q"]
    result = subprocess.run([*command, "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("chtorch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"chtorch/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= names
