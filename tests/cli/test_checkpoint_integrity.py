"""Checkpoint integrity: every checkpoint carries a SHA-256 digest that ``--resume`` and ``export`` verify;
a flipped bit, a missing key, a wrong type or shape is one line and exit 2 with the run untouched;
a full disk during a checkpoint write is a clear error and the previous checkpoint stays intact."""

from __future__ import annotations

import errno
import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from chtorch.config import load_config
from chtorch.train import checkpoint as checkpoint_module
from chtorch.train import resume, train
from chtorch.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    content_digest,
    load_checkpoint,
    save_checkpoint,
)
from chtorch.train.trainer import Trainer
from helpers import assert_error, cli

FAST = [
    "model.hidden=[32,32]",
    "train.epochs=2",
    "data.batch_size=64",
    "sparsity.method=set",
    "train.plots=false",
    "train.report=false",
    "train.tensorboard=false",
    "optim.name=sgd",
]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    def stop(trainer: Trainer) -> None:
        if trainer.epoch == 1 and trainer.batch == 5:
            trainer.request_stop()

    base = tmp_path_factory.mktemp("integrity")
    result = train(load_config(None, FAST), base / "run", out=io.StringIO(), callbacks=[stop])
    assert result.interrupted
    return result.run_dir


def _flip_tensor_bit(path: Path) -> None:
    """Flip one bit inside the largest tensor's bytes (not in the zip or pickle structure)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with archive.open(info) as member:  # the member's data starts after its local header
            member.read(0)
        header = path.read_bytes()[info.header_offset : info.header_offset + 30]
        start = (
            info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        )
    data = bytearray(path.read_bytes())
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _edit(path: Path, change) -> None:  # noqa: ANN001
    state = load_checkpoint(path)
    change(state)
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)  # a valid digest again


def _first_weight(state: dict) -> str:
    return next(k for k, v in state["model"].items() if k.endswith(".weight") and v.dim() == 2)


def _bad_momentum(state: dict) -> None:
    buffers = [s for s in state["optimizer"]["state"].values() if "momentum_buffer" in s]
    buffers[0]["momentum_buffer"] = torch.zeros(7, 3)


DAMAGES = {
    "flipped-bit": (_flip_tensor_bit, ["fails its SHA-256 check", "changed after it was written"]),
    "no-digest": (
        lambda p: torch.save({k: v for k, v in load_checkpoint(p).items()}, p),
        ["fails its SHA-256 check", "stored None"],
    ),
    "missing-key": (
        lambda p: _edit(p, lambda s: s.pop("optimizer")),
        ["lacks 'optimizer'", "not a complete chtorch training checkpoint"],
    ),
    "wrong-type": (
        lambda p: _edit(p, lambda s: s.update(epoch="two")),
        ["'epoch' must be a non-negative integer, found 'two'"],
    ),
    "wrong-type-model": (lambda p: _edit(p, lambda s: s["model"].update(x=[1, 2])), ["'model' must be a state_dict"]),
    "wrong-shape": (
        lambda p: _edit(p, lambda s: s["model"].update({_first_weight(s): torch.zeros(3, 3)})),
        ["does not fit this model", "size mismatch"],
    ),
    "wrong-shape-optimizer": (
        lambda p: _edit(p, _bad_momentum),
        ["optimizer state 'momentum_buffer' has shape (7, 3)"],
    ),
    "old-version": (
        lambda p: _edit(p, lambda s: None) or _set_version(p, 1),
        ["version 1", "before checkpoints carried a SHA-256"],
    ),
}


def _set_version(path: Path, version: int) -> None:
    payload = torch.load(path, weights_only=True)
    payload["version"] = version
    torch.save(payload, path)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_one_line_and_the_run_is_untouched(
    capsys, stopped_run: Path, tmp_path: Path, damage: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    path = run_dir / "checkpoint.pt"
    good = path.read_bytes()
    apply, words = DAMAGES[damage]
    apply(path)
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "train", "--resume", str(run_dir))
    assert_error(code, err, *words)
    assert snapshot(run_dir) == before
    if damage in ("flipped-bit", "missing-key", "wrong-type"):  # export verifies the same way
        code, _, err = cli(capsys, "export", str(run_dir))
        assert_error(code, err, *words)
        assert snapshot(run_dir) == before
    if damage == "flipped-bit":
        path.write_bytes(good)  # the run's own checkpoint back: it resumes and finishes
        assert resume(run_dir, out=io.StringIO()).finished


def test_digest_is_of_the_content_and_survives_a_round_trip(tmp_path: Path) -> None:
    state = {
        "a": torch.arange(6.0).reshape(2, 3).t(),
        "b": [1, 2.5, None, True, "x"],
        "c": {"m": torch.ones(2, dtype=torch.bool)},
    }
    path = save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["a"], state["a"]) and "sha256" not in loaded
    assert content_digest({"x": torch.tensor([1.0])}) != content_digest({"x": torch.tensor([1.0 + 2**-20])})
    assert content_digest({"x": [1]}) != content_digest({"x": (1,)}) != content_digest({"x": 1})
    assert content_digest({"a": 1, "b": 2}) != content_digest({"b": 2, "a": 1})  # order is part of the content


def test_full_disk_during_a_checkpoint_write(capsys, tmp_path: Path, monkeypatch) -> None:
    real_save = checkpoint_module.torch.save
    calls = {"n": 0}

    def save_then_disk_full(obj, handle, *args, **kwargs):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint after epoch 2
            handle.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_disk_full)
    run_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", *["--set", *FAST, "train.epochs=3"], "--out", str(run_dir), "--quiet")
    assert_error(
        code, err, "the disk is full", "ENOSPC", f"the previous checkpoint {run_dir / 'checkpoint.pt'} is intact"
    )
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".checkpoint")) == []
    assert load_checkpoint(run_dir)["epoch"] == 1
    assert resume(run_dir, out=io.StringIO()).finished


def test_write_error_is_both_a_checkpoint_error_and_an_oserror(tmp_path: Path, monkeypatch) -> None:
    def no_space(obj, handle, *args, **kwargs):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    with pytest.raises(CheckpointWriteError, match="no earlier checkpoint exists") as info:
        save_checkpoint({"step": 1}, tmp_path / "c.pt")
    assert (
        isinstance(info.value, CheckpointError) and isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    )
    assert list(tmp_path.iterdir()) == []
