"""A run that would train nothing, or fail at its end, is refused before its first step (and writes nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chtorch.cli import main
from chtorch.config import ConfigError, build_config
from chtorch.train.preflight import check_bleu_tokenizer
from helpers import TINY_RUN

pytestmark = pytest.mark.e2e

FAST = [*TINY_RUN, "run.threads=1", "train.epochs=4"]


def refused(capsys, tmp_path: Path, *overrides: str) -> str:
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--set", *FAST, *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("chtorch: error: ") and "Traceback" not in err, err
    assert not out.exists(), "a refused run must not create its directory"
    return err


def test_an_update_every_step_with_skipped_optimizer_steps_is_refused(capsys, tmp_path: Path) -> None:
    err = refused(capsys, tmp_path, "sparsity.method=set", "sparsity.update_unit=step", "sparsity.update_interval=1")
    assert "would not train" in err and "raise sparsity.update_interval" in err
    assert "skip_step_on_update=false" in err


def test_one_batch_per_epoch_with_epoch_updates_is_refused(capsys, tmp_path: Path) -> None:
    err = refused(capsys, tmp_path, "data.batch_size=5000")
    assert "one batch per epoch" in err and "data.batch_size" in err


def test_an_update_every_step_trains_when_steps_are_not_skipped(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["sparsity.update_unit=step", "sparsity.update_interval=1", "sparsity.options={skip_step_on_update: false}"]
    code = main(["train", "--out", str(out), "--set", *FAST, "train.epochs=1", *args])
    assert code == 0, capsys.readouterr().err


def test_a_warmup_longer_than_the_run_is_refused(capsys, tmp_path: Path) -> None:
    err = refused(capsys, tmp_path, "optim.warmup_steps=100000")
    assert "optim.warmup_steps=100000 is longer than the run" in err and "lower optim.warmup_steps" in err


def test_a_seed_beyond_64_bits_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="run.seed must be"):
        build_config({"run": {"seed": 2**64}})


@pytest.mark.parametrize("name", ["bogus", "13A", ""])
def test_an_unknown_bleu_tokenizer_is_refused_by_name(name: str) -> None:
    pytest.importorskip("sacrebleu")
    with pytest.raises(ConfigError, match="data.bleu_tokenize") as info:
        check_bleu_tokenizer(name)
    assert "13a" in str(info.value)  # the known names are listed


def test_a_bad_bleu_tokenizer_fails_before_training(transformer_raw, tmp_path: Path) -> None:
    from chtorch.train import train

    config = build_config(transformer_raw(data={"bleu_tokenize": "13b"}, run={"dir": str(tmp_path / "r")}))
    with pytest.raises(ConfigError, match="did you mean '13a'"):
        train(config)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
