"""Offline guarantee: training needs no network and never tries to download anything.

1. In a process with no network at all (``unshare -n``: a new network namespace with only a down
   loopback; needs root), ``python -m chtorch train`` succeeds — the digits demo, and the MNIST,
   language-model and translation recipes on the local files of ``../shared/data`` when present.
2. In this process (no root needed), every socket connection and name lookup is trapped and
   recorded while a run trains: none may happen.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chtorch.config import load_config
from chtorch.train import train
from chtorch.train.checkpoint import load_checkpoint

# The `chtorch` command end to end (deselect with -m "not e2e" for a quick inner loop).
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["train.plots=false", "train.report=false", "train.tensorboard=false"]
DIGITS = ["train.epochs=1", "model.hidden=[32,32]", "data.batch_size=64", *QUIET]


def _unshare_reason() -> str | None:
    """Why ``unshare -n`` cannot be used here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "unshare -n needs root (a new network namespace); the in-process socket trap below still runs"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -n is not permitted here: {probe.stderr.strip()}"
    return None


def _offline(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}  # no offline flags:
    return subprocess.run(
        ["unshare", "-n", sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout
    )  # a download attempt must fail loudly, not be skipped politely


@pytest.mark.skipif(_unshare_reason() is not None, reason=str(_unshare_reason()))
def test_training_without_network(tmp_path: Path) -> None:
    # The namespace really has no network: its only interface is the loopback (checked without
    # sending anything anywhere).
    probe = _offline("-c", "import socket; print(sorted(name for _, name in socket.if_nameindex()))")
    assert probe.returncode == 0 and probe.stdout.strip() == "['lo']", (probe.stdout, probe.stderr)

    # `python -m chtorch` (the package's __main__) is the chtorch command.
    result = _offline("-m", "chtorch", "train", "--set", *DIGITS, "--out", str(tmp_path / "digits"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "digits")["finished"]


@pytest.mark.skipif(_unshare_reason() is not None, reason=str(_unshare_reason()))
def test_recipes_on_local_files_without_network(tmp_path: Path, data_dir: Path) -> None:
    data = data_dir  # the fixture skips when ../shared/data is absent
    runs = {
        "mnist": [
            str(ROOT / "configs" / "mlp_mnist_cpu.yaml"),
            "--set",
            f"data.dir={data}",
            "data.train_limit=512",
            "data.test_limit=256",
            "model.hidden=[32]",
            "train.epochs=1",
            "sparsity.sparsity=0.9",
            *QUIET,
        ],
        "lm": [
            str(ROOT / "configs" / "lm_shakespeare_cpu.yaml"),
            "--set",
            f"data.dir={data}",
            "model.d_model=32",
            "model.n_layers=1",
            "model.d_ff=64",
            "data.seq_len=32",
            "data.batch_size=4",
            "data.steps_per_epoch=4",
            "data.eval_tokens=2000",
            "optim.warmup_steps=2",
            "train.epochs=1",
            *QUIET,
        ],
        "translation": [
            str(ROOT / "configs" / "translation_multi30k_cpu.yaml"),
            "--set",
            f"data.dir={data}",
            "model.d_model=32",
            "model.n_heads=2",
            "model.n_layers=1",
            "model.d_ff=64",
            "data.vocab_size=300",
            "data.train_limit=300",
            "data.val_limit=20",
            "data.test_limit=10",
            "data.steps_per_epoch=3",
            "optim.warmup_steps=2",
            "train.epochs=1",
            *QUIET,
        ],
    }
    # One offline process runs the three recipes (one Python start-up instead of three).
    script = "\n".join(
        [
            "import sys",
            "from chtorch.cli import main",
            *(
                f"assert main({['train', *args, '--out', str(tmp_path / name), '--quiet']!r}) == 0, {name!r}"
                for name, args in runs.items()
            ),
        ]
    )
    result = _offline("-c", script)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in runs:
        assert load_checkpoint(tmp_path / name)["finished"], name


def test_no_socket_is_opened_while_training(tmp_path: Path, monkeypatch) -> None:
    attempts: list[str] = []

    def trap(what: str):
        def refuse(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise OSError(f"test_offline: network access attempted ({what})")

        return refuse

    monkeypatch.setattr(socket.socket, "connect", trap("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", trap("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", trap("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", trap("getaddrinfo"))
    result = train(
        load_config(None, [*DIGITS, "train.progress=off", "sparsity.method=chts"]), tmp_path / "run", out=io.StringIO()
    )
    assert result.finished
    assert attempts == []  # recorded even if some library swallowed the OSError
