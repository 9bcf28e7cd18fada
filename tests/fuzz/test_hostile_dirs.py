"""Hostile run and compare directories, and OS errors: nothing is written through a link, nothing is lost.

Each test plants what an attacker or an accident leaves (a symbolic link out of the directory, a file that
is not JSON, a user's table, a file-size limit, a read-only directory) and checks that chtorch answers with
one line naming the path and the fix, and that the files outside (and the previous records) are unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chtorch._io import (
    UnreadableFileError,
    UnsafePathError,
    append_bytes,
    atomic_write_text,
    os_error_message,
    read_json,
    sandbox,
)
from chtorch.cli import main
from helpers import TINY_RUN

FAST = [*TINY_RUN, "run.threads=1", "train.epochs=2", "sparsity.method=set"]
DIGITS = str(Path(__file__).resolve().parents[2] / "configs" / "digits_chts.yaml")


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("chtorch: error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err
    for word in words:
        assert word in err, (word, err)


# ---------------------------------------------------------------- the sandbox, directly


def test_no_write_in_a_sandbox_goes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "victim.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    (run / "topology").parent.mkdir()
    (run / "metrics.jsonl").symlink_to(outside)
    (run / "topology").symlink_to(tmp_path)
    with sandbox(run):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            append_bytes(run / "metrics.jsonl", b"{}\n")
        with pytest.raises(UnsafePathError, match="topology"):
            atomic_write_text(run / "topology" / "victim.txt", "x")
        with pytest.raises(UnsafePathError):
            atomic_write_text(run / "metrics.jsonl", "x")
        atomic_write_text(run / "ok.txt", "fine")  # a plain file in the directory is written
    assert outside.read_text() == "precious"
    assert (run / "ok.txt").read_text() == "fine"


def test_the_run_directory_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "run"
    real.mkdir(parents=True)
    (tmp_path / "run").symlink_to(real)
    with sandbox(tmp_path / "run"):
        atomic_write_text(tmp_path / "run" / "config.yaml", "a: 1\n")
    assert (real / "config.yaml").read_text() == "a: 1\n"


def test_a_failed_append_leaves_no_half_line(tmp_path: Path) -> None:
    """Under a file-size limit (EFBIG), metrics.jsonl keeps only whole records."""
    script = (
        "import resource, sys\n"
        "from chtorch._io import append_bytes\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "p = sys.argv[1]\n"
        "append_bytes(p, b'x' * 60 + b'\\n')\n"
        "try:\n    append_bytes(p, b'y' * 60 + b'\\n')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    path = tmp_path / "metrics.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == str(errno.EFBIG), proc.stderr
    assert path.read_bytes() == b"x" * 60 + b"\n"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.ENAMETOOLONG, errno.EACCES])
def test_every_os_error_is_one_line_with_the_path_and_a_fix(code: int) -> None:
    message = os_error_message(OSError(code, os.strerror(code), "/runs/x/checkpoint.pt"))
    assert "/runs/x/checkpoint.pt" in message and "\n" not in message and ":" in message
    assert errno.errorcode[code] in message


def test_json_reads_are_capped_and_checked(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UnreadableFileError, match="deep.json is not a valid"):
        read_json(deep)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2000)
    with pytest.raises(UnreadableFileError, match="larger than"):
        read_json(big, limit=1000)


# ---------------------------------------------------------------- the command


@pytest.mark.e2e
def test_train_refuses_a_planted_link_and_leaves_the_victim(capsys, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "r"
    # a run that stopped before its first checkpoint (its config.yaml written), with a planted link
    assert main(["train", "--out", str(run), "--set", *FAST]) == 0
    (run / "checkpoint.pt").unlink()
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    capsys.readouterr()
    code, err = cli(capsys, "train", "--out", str(run), "--set", *FAST)
    one_line_error(code, err, "metrics.jsonl", "symbolic link", "remove the link")
    assert victim.read_text() == "precious"


@pytest.mark.e2e
def test_a_too_long_out_is_one_line(capsys, tmp_path: Path) -> None:
    code, err = cli(capsys, "train", "--out", str(tmp_path / ("x" * 300)), "--set", *FAST)
    one_line_error(code, err, "too long")


@pytest.mark.e2e
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_one_line(capsys, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, err = cli(capsys, "train", "--out", str(parent / "run"), "--set", *FAST)
    finally:
        parent.chmod(0o700)
    one_line_error(code, err, str(parent))


@pytest.mark.e2e
def test_compare_never_replaces_a_users_table(capsys, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "compare.md").write_text("my notes")
    code, err = cli(capsys, "compare", DIGITS, "--methods", "set", "--seeds", "0", "--out", str(out), "--set", *FAST)
    one_line_error(code, err, "compare.md", "did not write", "another --out")
    assert (out / "compare.md").read_text() == "my notes"
    file_out = tmp_path / "afile"
    file_out.write_text("x")
    code, err = cli(
        capsys, "compare", DIGITS, "--methods", "set", "--seeds", "0", "--out", str(file_out), "--set", *FAST
    )
    one_line_error(code, err, "is a file")


@pytest.mark.e2e
def test_report_of_a_compare_dir_with_a_bad_plan_or_summary(capsys, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare-plan.json").write_text(
        '{"runs": [{"dir": "../../etc", "method": "set"}], "methods": [], "seeds": []}'
    )
    code, err = cli(capsys, "report", str(out))
    one_line_error(code, err, "compare-plan.json", "not a name inside")
    (out / "compare-plan.json").write_text("{not json")
    code, err = cli(capsys, "report", str(out))
    one_line_error(code, err, "compare-plan.json", "not a valid")
    plan = {"name": "x", "runs": [{"dir": "set-seed0", "method": "set", "seed": 0}], "methods": ["set"], "seeds": [0]}
    (out / "compare-plan.json").write_text(json.dumps(plan))
    (out / "set-seed0").mkdir()
    (out / "set-seed0" / "summary.json").write_text("not json")
    code, err = cli(capsys, "report", str(out))
    one_line_error(code, err, "summary.json", "not a valid run summary")


# ---------------------------------------------------------------- checkpoints: no inflation, no recursion


def test_a_compressed_checkpoint_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    import zipfile

    import torch

    from chtorch.train.checkpoint import CheckpointError, load_checkpoint

    plain = tmp_path / "plain.pt"
    torch.save({"format": "x", "zeros": torch.zeros(1 << 16)}, plain)
    packed = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert packed.stat().st_size < plain.stat().st_size // 10
    with pytest.raises(CheckpointError, match="compressed entries"):
        load_checkpoint(packed)


def test_a_deeply_nested_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    from chtorch.train import checkpoint as ck

    deep: list = []
    for _ in range(3000):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        torch.save({"format": ck.FORMAT, "version": ck.VERSION, "x": deep}, tmp_path / "checkpoint.pt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(ck.CheckpointError, match="nested too deeply"):
        ck.load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.e2e
def test_compare_reads_a_run_config_with_the_capped_loader(capsys, tmp_path: Path) -> None:
    """An alias bomb planted as a run's config.yaml is refused before it is expanded."""
    out = tmp_path / "cmp"
    run = out / "set-seed0"
    run.mkdir(parents=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (run / "config.yaml").write_text(bomb)
    code, err = cli(capsys, "compare", DIGITS, "--methods", "set", "--seeds", "0", "--out", str(out), "--set", *FAST)
    one_line_error(code, err, "config.yaml", "not a readable run config", "anchors and aliases")


def test_a_meta_device_model_is_a_clear_error() -> None:
    import torch
    from torch import nn

    import chtorch

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="meta device"):
        chtorch.sparsify(model, optimizer, method="set", sparsity=0.5, total_steps=10)
