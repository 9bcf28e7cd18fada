"""Untrusted files, through the command: YAML anchors/aliases and oversized YAML are refused,
``chtorch report`` refuses non-UTF-8 or absurd records with one line, and run outputs get the
user's umask."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from chtorch.config import ConfigError, load_config
from chtorch.config.safe_yaml import MAX_YAML_BYTES, UnsafeYAMLError, safe_load
from chtorch.train import train
from helpers import assert_error, cli

FAST = [
    "model.hidden=[32,32]",
    "train.epochs=1",
    "data.batch_size=64",
    "sparsity.method=set",
    "train.plots=false",
    "train.tensorboard=false",
]


def billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_fast(capsys, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(9))  # 10**9 leaves if expanded
    start = time.process_time()
    code, _, err = cli(capsys, "train", str(path))
    assert_error(code, err, "bomb.yaml: not valid YAML", "anchor &a0 at line 1", "anchors and aliases")
    assert time.process_time() - start < 5  # refused at the first anchor, not expanded
    assert not Path("runs").exists() or not any(Path("runs").glob("*bomb*"))


@pytest.mark.parametrize(
    "text", ["run: &r {seed: 1}\ntrain: *r\n", "train: {epochs: *e}\n", "optim:\n  betas: &b [0.9, 0.99]\n"]
)
def test_any_anchor_or_alias_is_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_config(path)


def test_yaml_size_cap(capsys, tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    assert_error(*cli(capsys, "config", str(path))[::2], "more than chtorch reads as YAML")
    with pytest.raises(UnsafeYAMLError):
        safe_load("a: 1\n" * (MAX_YAML_BYTES // 4))


def test_safe_load_keeps_plain_yaml() -> None:
    text = "run: {name: x, seed: 3}\nmodel:\n  hidden: [8, 8]\nsparsity: {options: {zeta: 0.3}}\n"
    assert safe_load(text) == yaml.safe_load(text)
    for shipped in sorted(Path(__file__).resolve().parents[2].glob("configs/*.yaml")):
        assert safe_load(shipped.read_text()) == yaml.safe_load(shipped.read_text()), shipped


def test_set_value_with_an_alias_is_not_expanded(capsys) -> None:
    code, _, err = cli(capsys, "config", "--set", "model.hidden=[&a 8, *a]")
    assert code == 2 and "Traceback" not in err


# ----------------------------------------------------------------------------- chtorch report


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    result = train(load_config(None, FAST), tmp_path_factory.mktemp("report") / "run", out=io.StringIO())
    assert result.finished
    return result.run_dir


def _bad_metrics(path: Path, how: str) -> None:
    good = path.read_bytes()
    first, rest = good.split(b"\n", 1)
    line = {
        "latin-1": '{"kind": "epoch", "note": "caf\xe9"}'.encode("latin-1"),
        "list": b"[1, 2, 3]",
        "negative-epoch": b'{"kind": "epoch", "epoch": -5}',
        "huge-int": b'{"kind": "epoch", "epoch": ' + b"9" * 5000 + b"}",
        "deep": b'{"kind": "epoch", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        "not-json": b"{this is not json",
        "layers": b'{"kind": "epoch", "epoch": 1, "layers": [1, 2]}',
    }[how]
    path.write_bytes(first + b"\n" + line + b"\n" + rest)


@pytest.mark.parametrize(
    "how,words",
    [
        ("latin-1", ["is not UTF-8 text (line 2"]),
        ("list", ["line 2 is a JSON list, not a record"]),
        ("negative-epoch", ["line 2: 'epoch' is '-5', not a count"]),
        ("huge-int", ["line 2 is not a record chtorch wrote"]),
        ("deep", ["line 2 is not a record chtorch wrote"]),
        ("not-json", ["line 2 is not JSON"]),
        ("layers", ["'layers' is not a mapping"]),
    ],
)
def test_report_refuses_damaged_records(capsys, finished_run: Path, tmp_path: Path, how: str, words: list[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    _bad_metrics(run_dir / "metrics.jsonl", how)
    assert_error(*cli(capsys, "report", str(run_dir))[::2], "metrics.jsonl", *words)


def test_report_refuses_damaged_summary_and_config(capsys, finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    assert cli(capsys, "report", str(run_dir))[0] == 0
    (run_dir / "summary.json").write_bytes(b"\xff\xfe")
    assert_error(*cli(capsys, "report", str(run_dir))[::2], "summary.json is not UTF-8")
    (run_dir / "summary.json").write_text(json.dumps([1]))
    assert_error(*cli(capsys, "report", str(run_dir))[::2], "summary.json is not a JSON object")
    (run_dir / "summary.json").unlink()
    (run_dir / "config.yaml").write_text(billion_laughs(3))
    assert_error(*cli(capsys, "report", str(run_dir))[::2], "config.yaml is unreadable", "anchors and aliases")


def test_report_accepts_a_last_line_cut_by_a_crash(capsys, finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    with (run_dir / "metrics.jsonl").open("ab") as handle:
        handle.write(b'{"kind": "epo')
    code, _, err = cli(capsys, "report", str(run_dir))
    assert code == 0, err


def test_run_outputs_follow_the_umask(finished_run: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json", "report.md", "metrics.csv"):
        assert (finished_run / name).stat().st_mode & 0o777 == expected, name
