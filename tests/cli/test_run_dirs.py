"""Run directories: ``--out`` refuses places where a run would destroy or cannot
write files, one process trains a run at a time (flock), ``run.name`` is a name, ``run.threads`` and
``run.device`` are checked, and a second Ctrl-C during the interrupt save still exits 130 with the
checkpoint intact."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from chtorch.config import ConfigError, load_config
from chtorch.train import checkpoint as checkpoint_module
from chtorch.train import resume, rundir, train
from chtorch.train.checkpoint import load_checkpoint
from chtorch.train.rundir import RunLock, check_device
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
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train_cli(capsys, out: Path, *overrides: str) -> tuple[int, str, str]:
    return cli(capsys, "train", "--set", *FAST, *overrides, "--out", str(out), "--quiet")


# ----------------------------------------------------------------------------- --out


def test_out_is_a_regular_file(capsys, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert_error(*train_cli(capsys, target)[::2], "is a file, not a directory")
    assert target.read_text() == "mine"


def test_out_under_a_regular_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert_error(
        *train_cli(capsys, tmp_path / "notes.txt" / "run")[::2],
        "notes.txt is a file, so no directory can be created under it",
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_non_empty_directory_that_is_not_a_run(capsys, tmp_path: Path) -> None:
    target = tmp_path / "project"
    target.mkdir()
    (target / "config.yaml").write_text("my: own config\n")
    (target / "report.md").write_text("# my report\n")
    before = snapshot(target)
    code, _, err = train_cli(capsys, target)
    assert_error(code, err, "is a non-empty directory that is not a chtorch run", "config.yaml, report.md")
    assert snapshot(target) == before


def test_out_unwritable(capsys, tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert_error(*train_cli(capsys, locked)[::2], "is not writable")
    assert_error(*train_cli(capsys, locked / "a" / "run")[::2], f"cannot create it, {locked} is not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes everywhere")
def test_out_unwritable_for_real(capsys, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert_error(*train_cli(capsys, locked / "run")[::2], "is not writable")
    finally:
        locked.chmod(0o700)


def test_out_reuses_a_run_directory_without_checkpoint_and_a_failed_train_leaves_no_directory(
    capsys, tmp_path: Path
) -> None:
    target = tmp_path / "deep" / "run"
    code, _, err = train_cli(capsys, target, "model.hidden=[32,-4]")  # fails when the model is built
    assert code == 2 and not (tmp_path / "deep").exists(), err
    code, _, err = train_cli(capsys, target, "train.epochs=1")
    assert code == 0, err
    (target / "checkpoint.pt").unlink()  # a chtorch run without checkpoint: nothing to lose, reused
    assert train_cli(capsys, target, "train.epochs=1")[0] == 0


# ----------------------------------------------------------------------------- run.name, threads, device


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x" * 101, "tab\there", "back\\slash"])
def test_run_name_is_a_name_not_a_path(capsys, tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--set", *FAST, f"run.name={name}", "--quiet")
    assert_error(code, err, "must be a name, not a path")
    assert list(tmp_path.iterdir()) == []


def test_run_threads_bounded(capsys, tmp_path: Path) -> None:
    assert_error(
        *train_cli(capsys, tmp_path / "r", "run.threads=100000")[::2],
        "run.threads must be a number in [0, 1024], got 100000",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "device,cuda,count,mps,words",
    [
        ("cuda", False, 0, False, "run.device='cuda' but"),
        ("cuda:3", True, 1, False, "this machine has 1 GPU(s)"),
        ("mps", False, 0, False, "MPS"),
    ],
)
def test_run_device_checked_against_this_torch(
    capsys, tmp_path: Path, monkeypatch, device, cuda, count, mps, words
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert_error(*train_cli(capsys, tmp_path / "r", f"run.device={device}")[::2], words)
    assert not (tmp_path / "r").exists()


def test_check_device_accepts_what_exists() -> None:
    check_device("cpu")
    check_device("auto")
    with pytest.raises(ConfigError, match="not a device"):
        check_device("gpu0")
    if torch.cuda.is_available():
        check_device(f"cuda:{torch.cuda.device_count() - 1}")


# ----------------------------------------------------------------------------- the lock

_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    def stop(trainer: Trainer) -> None:
        if trainer.epoch == 1 and trainer.batch == 5:
            trainer.request_stop()

    result = train(
        load_config(None, FAST), tmp_path_factory.mktemp("lock") / "run", out=io.StringIO(), callbacks=[stop]
    )
    assert result.interrupted
    return result.run_dir


def test_second_process_cannot_train_a_running_run(capsys, stopped_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        code, _, err = cli(capsys, "train", "--resume", str(run_dir))
        assert_error(code, err, "is being trained by another chtorch process right now")
        assert snapshot(run_dir) == before  # no byte changed: no lock file, no truncated log
        (run_dir / "checkpoint.pt").rename(tmp_path / "moved.pt")  # an unfinished run directory in use
        code, _, err = train_cli(capsys, run_dir)
        assert_error(code, err, "is being trained by another chtorch process")
        (tmp_path / "moved.pt").rename(run_dir / "checkpoint.pt")
    finally:
        holder.kill()
        holder.wait()
    assert resume(run_dir, out=io.StringIO()).finished  # the lock went with the process


def test_lock_is_held_while_training_and_released_after(tmp_path: Path) -> None:
    seen = []

    def probe(trainer: Trainer) -> None:
        if trainer.step == 1:
            with pytest.raises(ConfigError, match="another chtorch process"):
                RunLock(trainer.run_dir).acquire()
            seen.append(True)

    train(load_config(None, [*FAST, "train.epochs=1"]), tmp_path / "r", out=io.StringIO(), callbacks=[probe])
    assert seen == [True]
    RunLock(tmp_path / "r").acquire().release()


# ----------------------------------------------------------------------------- Ctrl-C twice


def test_second_ctrl_c_during_the_interrupt_save_exits_130_with_the_checkpoint_intact(
    capsys, tmp_path: Path, monkeypatch
) -> None:
    real_fit = Trainer.fit
    real_save = checkpoint_module.torch.save
    state = {"interrupted_at": None}

    def first_ctrl_c(trainer: Trainer) -> None:
        if trainer.step == 3 and state["interrupted_at"] is None:
            state["interrupted_at"] = trainer.step
            os.kill(os.getpid(), signal.SIGINT)

    def fit_with_ctrl_c(self: Trainer):  # noqa: ANN202
        self.callbacks.append(first_ctrl_c)
        return real_fit(self)

    def save_with_second_ctrl_c(obj, handle, *args, **kwargs):  # noqa: ANN001
        if state["interrupted_at"] is not None:
            os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, mid-write
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_with_ctrl_c)
    monkeypatch.setattr(checkpoint_module.torch, "save", save_with_second_ctrl_c)
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--set", *FAST, "--out", str(run_dir))
    assert code == 130, err
    assert "still writing the checkpoint" in out + err
    monkeypatch.undo()
    saved = load_checkpoint(run_dir)
    assert saved["step"] == 3 and saved["epoch"] == 0
    assert resume(run_dir, out=io.StringIO()).finished
