"""The image recipe's validation split: held out from the training set, disjoint from it, deterministic,
and the same images for every seed and method; ``data.val_fraction = 0`` trains on everything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chtorch.config import ConfigError, load_config
from chtorch.data.holdout import holdout_indices
from chtorch.recipes.image import ImageClassification

ROOT = Path(__file__).resolve().parents[2]


@given(st.integers(2, 500), st.floats(0.0, 0.9))
def test_split_is_disjoint_complete_sorted_and_repeatable(n: int, fraction: float) -> None:
    if 0 < fraction and max(1, round(n * fraction)) >= n:
        with pytest.raises(ValueError, match="too few"):
            holdout_indices(n, fraction)
        return
    train, val = holdout_indices(n, fraction)
    assert sorted(train.tolist() + val.tolist()) == list(range(n))  # disjoint and complete
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    assert len(val) == (0 if fraction == 0 else max(1, round(n * fraction)))
    again_train, again_val = holdout_indices(n, fraction)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)


def test_split_by_hand_and_bad_fractions() -> None:
    train, val = holdout_indices(10, 0.2)
    assert len(val) == 2 and len(train) == 8 and not set(val.tolist()) & set(train.tolist())
    assert holdout_indices(5, 0.0)[1].numel() == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            holdout_indices(10, bad)


def recipe(*overrides: str) -> ImageClassification:
    config = load_config(str(ROOT / "configs" / "digits_chts.yaml"), list(overrides))
    r = ImageClassification(config, torch.device("cpu"))
    r.setup()
    return r


def rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(row.numpy().tobytes()) for row in x.reshape(x.shape[0], -1)}


def test_recipe_holds_out_the_same_images_for_every_seed_and_method() -> None:
    a = recipe("run.seed=0", "sparsity.method=chts")
    b = recipe("run.seed=3", "sparsity.method=gmp")
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
    assert torch.equal(a.x_train, b.x_train)
    n = a.x_train.shape[0] + a.x_val.shape[0]
    assert a.x_val.shape[0] == round(0.1 * n) and a.describe()["val_samples"] == a.x_val.shape[0]
    # No validation image is a training image (digits has no duplicate images across the two parts).
    assert not rows(a.x_val) & rows(a.x_train)
    assert a.selection() == ("val_accuracy", True, "val_loss")


def test_recipe_reports_validation_and_test_metrics() -> None:
    r = recipe("model.hidden=[16]")
    model = r.build_model()
    metrics = r.evaluate(model)
    assert list(metrics) == ["val_loss", "val_accuracy", "test_loss", "test_accuracy"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["val_loss"] > 0


def test_val_fraction_zero_trains_on_the_whole_training_set() -> None:
    full = recipe("data.val_fraction=0")
    held = recipe()
    assert full.x_val.shape[0] == 0 and full.selection() is None
    assert full.x_train.shape[0] == held.x_train.shape[0] + held.x_val.shape[0]
    assert "val_accuracy" not in full.evaluate(full.build_model())


def test_too_small_a_training_set_for_the_fraction_names_the_key() -> None:
    with pytest.raises(ConfigError, match="data.val_fraction"):
        recipe("data.train_limit=1")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(str(ROOT / "configs" / "digits_chts.yaml"), ["data.val_fraction=1"])
