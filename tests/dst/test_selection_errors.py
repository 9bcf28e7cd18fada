"""The engine's layer selection and its bad input: clear errors, and nothing half applied."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import chtorch
from chtorch.dst.options import OptionError
from helpers import linear_stack as make_model
from helpers import optimizer_of_kind as make_optimizer

METHODS = chtorch.methods()


# ------------------------------------------------------------------ layer selection and bad input
def test_default_selection_skips_the_last_linear():
    model = make_model([4, 8, 8, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10)
    assert sp.layer_names == ["0", "2"]
    assert "0.weight_mask" in model.state_dict() and "4.weight_mask" not in model.state_dict()


def test_selection_by_pattern_callable_and_exclude():
    model = make_model([4, 8, 8, 8, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10, layers=["[02]", "4"], exclude="2")
    assert sp.layer_names == ["0", "4"]
    model = make_model([4, 8, 8, 2])
    opt = make_optimizer(model, "sgd")
    sp = chtorch.sparsify(
        model,
        opt,
        method="set",
        sparsity=0.5,
        total_steps=10,
        layers=lambda name, m: isinstance(m, nn.Linear) and m.out_features == 8,
    )
    assert sp.layer_names == ["0", "2"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparsity=1.0), ValueError, "sparsity must be"),
        (dict(sparsity=-0.1), ValueError, "sparsity must be"),
        (dict(method="rigel"), OptionError, "did you mean 'rigl'"),
        (dict(layers="nothing*"), ValueError, "selects no module"),
        (dict(layers="1"), ValueError, "not an nn.Linear"),
        (dict(total_steps=0), ValueError, "total_steps must be"),
        (dict(zetaa=0.1), OptionError, "did you mean 'zeta'"),
        (dict(zeta=1.5), OptionError, r"zeta must be a number in \[0, 1\], got 1.5"),
        (dict(removal="set", removal_selection="soft"), OptionError, "topk"),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_is_half_applied(kwargs, error, match):
    model = make_model([4, 8, 8, 2])
    opt = make_optimizer(model, "sgd")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(method="set", sparsity=0.5, total_steps=10) | kwargs
    with pytest.raises(error, match=match):
        chtorch.sparsify(model, opt, **args)
    after = model.state_dict()
    assert set(after) == set(before)  # no mask buffer was registered
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_weight_not_in_optimizer_is_an_error():
    model = make_model([4, 8, 8, 2])
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10)
    assert not hasattr(model[0], "weight_mask")


def test_load_state_dict_rejects_other_sparsity_and_layers():
    model = make_model([4, 8, 8, 2])
    sp = chtorch.sparsify(model, make_optimizer(model, "sgd"), method="set", sparsity=0.5, total_steps=10)
    state = sp.state_dict()
    model2 = make_model([4, 8, 8, 2])
    sp2 = chtorch.sparsify(model2, make_optimizer(model2, "sgd"), method="set", sparsity=0.7, total_steps=10)
    with pytest.raises(ValueError, match="same sparsity"):
        sp2.load_state_dict(state)
    model3 = make_model([4, 8, 8, 8, 2])
    sp3 = chtorch.sparsify(model3, make_optimizer(model3, "sgd"), method="set", sparsity=0.5, total_steps=10)
    with pytest.raises(ValueError, match="layers"):
        sp3.load_state_dict(state)


def test_presets_are_listed_with_docs_and_options_override():
    assert {"static", "set", "rigl", "mest", "gmp", "granet", "cht", "chts", "chtss"} <= set(METHODS)
    for name, summary in chtorch.method_table():
        preset = chtorch.get_method(name)
        assert summary and preset.reference
    decisions_md = (Path(__file__).resolve().parents[2] / "docs" / "decisions.md").read_text()
    assert (
        "| item | paper | official LLaMA code | official MLP/Transformer code | chtorch default | option |"
        in decisions_md
    )
    for name in (
        "cht",
        "chts",
        "chtss",
        "mest",
        "gmp",
    ):  # where paper and official code disagree, the preset says what it does
        decisions = chtorch.get_method(name).decisions
        assert "docs/decisions.md" in decisions and "notes §" not in decisions  # cites the table in the repository
    opts = chtorch.get_method("chts").build_options(zeta=0.1, regrowth_selection="topk", init_options={"r": 0.0})
    assert opts.zeta == 0.1 and opts.regrowth_selection == "topk"
    assert opts.init_options == {"r": 0.0, "degree": "uniform"}
    # another initializer drops the preset's initializer options
    assert chtorch.get_method("chts").build_options(init="bsw").init_options == {}
    assert chtorch.get_method("chts").build_options(init="bsw", init_options={"beta": 0.5}).init_options == {
        "beta": 0.5
    }
