"""Export files: ``chtorch export`` writes safetensors plus a
JSON description, loads back without ``torch.load`` or pickle, and refuses damaged files with one
line."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from chtorch.config import load_config
from chtorch.train import train
from chtorch.train.checkpoint import load_checkpoint
from chtorch.train.export import ExportFileError, _model_from_checkpoint, load_exported, read_export_description
from helpers import assert_error, cli

safetensors_torch = pytest.importorskip("safetensors.torch")

FAST = [
    "model.hidden=[64,64]",
    "train.epochs=2",
    "data.batch_size=64",
    "sparsity.method=set",
    "sparsity.sparsity=0.95",
    "train.plots=false",
    "train.report=false",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    result = train(load_config(None, FAST), tmp_path_factory.mktemp("export") / "run", out=io.StringIO())
    assert result.finished
    return result.run_dir


@pytest.mark.parametrize("sparse", [False, True])
def test_export_loads_without_torch_load_and_matches_the_trained_model(
    capsys, run_dir: Path, tmp_path: Path, monkeypatch, sparse
) -> None:
    out = tmp_path / "model.safetensors"
    code, stdout, err = cli(capsys, "export", str(run_dir), "--out", str(out), *(["--sparse"] if sparse else []))
    assert code == 0, err
    assert "no pickle" in stdout and out.is_file() and out.with_suffix(".json").is_file()
    description = read_export_description(out)
    assert description["model"]["class"] == "MLP"
    assert all(
        e["kind"] == ("csr" if sparse else "linear")
        for n, e in description["layers"].items()
        if n.startswith("layers.")
    )

    def no_torch_load(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("load_exported must not call torch.load")

    monkeypatch.setattr(torch, "load", no_torch_load)
    exported = load_exported(out)
    monkeypatch.undo()
    _, original, _ = _model_from_checkpoint(run_dir)
    x = torch.randn(16, 64)
    with torch.no_grad():
        assert torch.allclose(exported(x), original(x), atol=1e-5)
    # The tensors are a plain safetensors file: any safetensors reader takes them.
    tensors = safetensors_torch.load_file(out)
    assert set(tensors) == set(description["tensors"])
    hidden = tensors["layers.0.weight"].shape if not sparse else (len(tensors["layers.0.crow_indices"]) - 1,)
    assert hidden[0] <= 64


def test_default_paths(capsys, run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    assert cli(capsys, "export", str(target))[0] == 0
    assert (target / "compact.safetensors").is_file() and (target / "compact.json").is_file()
    assert isinstance(load_exported(target / "compact.json"), torch.nn.Module)
    assert_error(*cli(capsys, "export", str(target), "--out", str(tmp_path / "m.pt"))[::2], "is a .safetensors file")


@pytest.fixture
def exported(capsys, run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m.safetensors"
    assert cli(capsys, "export", str(run_dir), "--out", str(out))[0] == 0
    return out


def test_flipped_bit_in_the_tensors(exported: Path) -> None:
    data = bytearray(exported.read_bytes())
    data[-3] ^= 0x01
    exported.write_bytes(bytes(data))
    with pytest.raises(ExportFileError, match="fails its SHA-256 check"):
        load_exported(exported)


def test_edited_description(exported: Path) -> None:
    path = exported.with_suffix(".json")
    description = json.loads(path.read_text())
    description["layers"]["layers.0"]["out_features"] += 1
    path.write_text(json.dumps(description))
    with pytest.raises(ExportFileError, match="fails its SHA-256 check"):
        load_exported(exported)


def test_description_that_does_not_fit_the_tensors(exported: Path) -> None:
    from chtorch.train.export import _description_digest

    path = exported.with_suffix(".json")
    description = json.loads(path.read_text())
    description["layers"]["layers.0"]["out_features"] += 1
    description["description_sha256"] = _description_digest(description)  # a consistent but wrong description
    path.write_text(json.dumps(description))
    with pytest.raises(ExportFileError, match="do not make a model"):
        load_exported(exported)


@pytest.mark.parametrize(
    "damage,words",
    [
        ("no-tensors", "not found"),
        ("no-description", "no export description"),
        ("not-json", "not a valid export description"),
        ("foreign-class", "chtorch builds only"),
    ],
)
def test_missing_or_foreign_files(exported: Path, damage: str, words: str) -> None:
    from chtorch.train.export import _description_digest

    path = exported.with_suffix(".json")
    if damage == "no-tensors":
        exported.unlink()
    elif damage == "no-description":
        path.unlink()
    elif damage == "not-json":
        path.write_bytes(b"\xff{")
    else:
        description = json.loads(path.read_text())
        description["model"]["class"] = "os.system"
        description["description_sha256"] = _description_digest(description)
        path.write_text(json.dumps(description))
    with pytest.raises(ExportFileError, match=words):
        load_exported(exported)


def test_export_without_safetensors_is_a_clear_error(capsys, run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    code, _, err = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "m.safetensors"))
    assert_error(code, err, "safetensors, which is not installed", "pip install safetensors")
    assert list(tmp_path.iterdir()) == []


def test_export_verifies_the_checkpoint(capsys, run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    state = torch.load(target / "checkpoint.pt", weights_only=True)
    state["epoch"] = 7  # an edit without a new digest
    torch.save(state, target / "checkpoint.pt")
    assert_error(*cli(capsys, "export", str(target))[::2], "fails its SHA-256 check")
    assert not (target / "compact.safetensors").exists()
    with pytest.raises(Exception, match="SHA-256"):
        load_checkpoint(target / "checkpoint.pt")


def test_export_never_replaces_a_file_it_did_not_write(capsys, run_dir: Path, tmp_path: Path) -> None:
    """--out X.safetensors beside a user's X.json (a run's own summary.json) is refused; both stay."""
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    summary = (work / "summary.json").read_bytes()
    code, _, err = cli(capsys, "export", str(work), "--out", str(work / "summary.safetensors"))
    assert_error(code, err, "summary.json", "not written by chtorch export", "another --out")
    assert (work / "summary.json").read_bytes() == summary and not (work / "summary.safetensors").exists()
    # an export's own files are replaced by the next export
    out = tmp_path / "m.safetensors"
    for _ in range(2):
        code, _, err = cli(capsys, "export", str(work), "--out", str(out))
        assert code == 0, err
