"""Model selection on validation (chtorch.train.selection): only epochs at the target density compete,
ties go to the lower validation loss and then to the later epoch, and runs without a validation split
have no selected epoch. Hand-built epoch records; the rule's fields are those summary.json stores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chtorch.train.selection import at_target_density, select_epoch, selected_summary, selection_rule

RULE = selection_rule(("val_accuracy", True, "val_loss"))


def epoch(n: int, density: float, val: float | None, test: float, loss: float = 0.5) -> dict:
    record = {"kind": "epoch", "epoch": n, "density": density, "test_accuracy": test}
    if val is not None:
        record.update(val_accuracy=val, val_loss=loss)
    return record


def test_rule_is_what_summary_json_stores() -> None:
    assert RULE == {"metric": "val_accuracy", "higher_is_better": True, "tie_break": "val_loss"}
    assert selection_rule(None) is None


def test_a_decay_method_peaking_at_half_density_is_not_selected() -> None:
    # GMP / GraNet / CHTss: 50% density first; the best validation (and test) accuracy is at 0.5.
    epochs = [
        epoch(1, 0.5, 0.99, 0.985),
        epoch(2, 0.2, 0.97, 0.975),
        epoch(3, 0.01, 0.95, 0.951),
        epoch(4, 0.01, 0.96, 0.958),
        epoch(5, 0.01, 0.955, 0.962),
    ]
    assert [r["epoch"] for r in at_target_density(epochs, sparsity=0.99)] == [3, 4, 5]
    chosen = select_epoch(epochs, RULE, sparsity=0.99)
    assert chosen is not None and chosen["epoch"] == 4
    assert selected_summary(epochs, RULE, "test_accuracy", 0.99) == {
        "epoch": 4,
        "val_accuracy": 0.96,
        "test_accuracy": 0.958,  # the test value of the selected epoch, not the best test epoch (5)
        "density": 0.01,
    }


def test_ties_go_to_the_lower_validation_loss_then_to_the_later_epoch() -> None:
    epochs = [epoch(1, 0.1, 0.9, 0.80, loss=0.30), epoch(2, 0.1, 0.9, 0.81, loss=0.20), epoch(3, 0.1, 0.9, 0.82, 0.25)]
    assert select_epoch(epochs, RULE, 0.9)["epoch"] == 2
    same = [epoch(1, 0.1, 0.9, 0.80), epoch(2, 0.1, 0.9, 0.81), epoch(3, 0.1, 0.8, 0.99)]
    assert select_epoch(same, RULE, 0.9)["epoch"] == 2
    lower = {"metric": "val_ppl", "higher_is_better": False, "tie_break": None}
    ppl = [{"epoch": 1, "val_ppl": 5.0}, {"epoch": 2, "val_ppl": 4.0}, {"epoch": 3, "val_ppl": 4.0}]
    assert select_epoch(ppl, lower)["epoch"] == 3


def test_runs_without_validation_have_no_selected_epoch() -> None:
    epochs = [epoch(1, 0.1, None, 0.9), epoch(2, 0.1, None, 0.95)]
    assert select_epoch(epochs, None, 0.9) is None  # no rule: the recipe holds out nothing
    assert select_epoch(epochs, RULE, 0.9) is None  # a rule, but no record has the metric
    assert selected_summary(epochs, RULE, "test_accuracy", 0.9) is None
    assert select_epoch([], RULE, 0.9) is None


def test_epochs_without_an_evaluation_do_not_compete() -> None:
    # train.eval_every = 2: the odd epochs carry no validation metric.
    epochs = [epoch(1, 0.1, None, 0.0), epoch(2, 0.1, 0.8, 0.79), epoch(3, 0.1, None, 0.0), epoch(4, 0.1, 0.7, 0.7)]
    assert select_epoch(epochs, RULE, 0.9)["epoch"] == 2


def test_the_target_density_tolerates_rounding_and_excludes_extra_density() -> None:
    # MEST's EM&S keeps extra links until T_end: those epochs are denser than the target.
    mest = [epoch(1, 0.1 * 1.02, 0.99, 0.9), epoch(2, 0.1 * 1.01, 0.98, 0.9), epoch(3, 0.1, 0.9, 0.9)]
    assert [r["epoch"] for r in at_target_density(mest, 0.9)] == [3]
    # A tiny layer whose link count rounds up ends above 1 − sparsity: its own last density is the target.
    tiny = [epoch(1, 0.5, 0.99, 0.9), epoch(2, 0.0667, 0.8, 0.8), epoch(3, 0.0667, 0.7, 0.7)]
    assert [r["epoch"] for r in at_target_density(tiny, 0.95)] == [2, 3]
    # One link more than the target in a 1568×1568 layer at 1% is within the tolerance.
    links = 24586
    near = [epoch(1, (links + 1) / 1568**2, 0.9, 0.9), epoch(2, links / 1568**2, 0.8, 0.8)]
    assert len(at_target_density(near, 0.99)) == 2
    # Dense runs (density 1) and records without a density all compete.
    assert len(at_target_density([epoch(1, 1.0, 0.5, 0.5), {"epoch": 2}], 0.0)) == 2
    assert len(at_target_density([{"epoch": 1}, {"epoch": 2}], None)) == 2


densities = st.lists(st.sampled_from([0.5, 0.3, 0.1]), min_size=1, max_size=8).map(lambda d: [*d, 0.1])


@given(densities, st.data())
def test_the_selected_epoch_is_at_the_target_and_best_on_validation(ds: list[float], data: st.DataObject) -> None:
    vals = data.draw(st.lists(st.sampled_from([0.7, 0.8, 0.9]), min_size=len(ds), max_size=len(ds)))
    epochs = [epoch(i + 1, d, v, 0.5) for i, (d, v) in enumerate(zip(ds, vals))]
    chosen = select_epoch(epochs, RULE, 0.9)
    assert chosen is not None and chosen["density"] == pytest.approx(0.1)
    eligible = [r for r in epochs if r["density"] == 0.1]
    assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in eligible)
    assert chosen["epoch"] == max(r["epoch"] for r in eligible if r["val_accuracy"] == chosen["val_accuracy"])
