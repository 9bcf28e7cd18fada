"""Options of an update iteration where chtorch and the official code differ (docs/decisions.md):
skipping the optimizer step on an update iteration, and the optimizer state of readmitted links."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import chtorch
from chtorch.dst.options import OptionError, SparsityOptions
from chtorch.dst.update import network_stopped


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 4))


# ----------------------------------------------------------------------------- optimizer step on an update iteration


def _skipping_engine(skip: bool, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = chtorch.sparsify(
        model, opt, method="set", sparsity=0.8, total_steps=20, update_interval=4, skip_step_on_update=skip, **kw
    )
    return sp


def test_skips_optimizer_step_exactly_on_update_iterations():
    sp = _skipping_engine(True)
    skipped = []
    for step in range(1, 21):
        skipped.append(sp.skips_optimizer_step())
        if not skipped[-1]:
            sp.optimizer.step()
        report = sp.step()
        assert skipped[-1] == (report is not None), step
    # the set preset updates every 4 steps for the whole run (T_end = 20), before T_end as the MLP code:
    # no update after the last step
    assert [i + 1 for i, s in enumerate(skipped) if s] == [4, 8, 12, 16]
    off = _skipping_engine(False)
    flags = []
    for _ in range(20):
        flags.append(off.skips_optimizer_step())
        off.optimizer.step()
        off.step()
    assert off.step_count == 20
    assert not any(flags)


def test_no_skip_once_a_network_early_stop_froze_the_topology():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = chtorch.sparsify(
        model, opt, method="cht", sparsity=0.8, total_steps=20, update_interval=2, skip_step_on_update=True
    )
    opt.step()
    sp.step()
    assert sp.skips_optimizer_step()
    for layer in sp.layers:
        layer.frozen = True
    assert network_stopped(sp.layers, sp.options) and not sp.skips_optimizer_step()


def test_skip_step_on_update_must_be_a_bool():
    with pytest.raises(OptionError, match="skip_step_on_update must be true or false"):
        SparsityOptions(skip_step_on_update="yes")


def test_recipe_defaults_skip_as_each_family_s_code():
    import chtorch.recipes.builtin  # noqa: F401  (registers the recipes)
    from chtorch.config.registry import recipe_schema

    assert recipe_schema("image_classification").sparsity_defaults["skip_step_on_update"] is True
    assert recipe_schema("lm").sparsity_defaults["skip_step_on_update"] is True
    assert not recipe_schema("translation").sparsity_defaults.get("skip_step_on_update", False)


# ----------------------------------------------------------------------------- readmitted links


def _nearly_dense(backend: str, readmitted: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # 63 of 64 links: removal drops 18 and regrowth picks 18 of 19 non-links, so at least 17 of the
    # removed links come straight back
    sp = chtorch.sparsify(
        model,
        opt,
        method="set",
        sparsity=1 / 64,
        total_steps=40,
        update_interval=4,
        seed=3,
        backend=backend,
        readmitted=readmitted,
    )
    return model, opt, sp


def _momentum(sp, opt, layer) -> torch.Tensor:
    """The layer's momentum as a dense (out, in) matrix, zero off the links."""
    buf = opt.state[layer.parameter]["momentum_buffer"]
    if layer.backend == "sparse":
        module = layer.module
        return torch.zeros(module.out_features, module.in_features, dtype=buf.dtype).index_put(
            (module.rows, module.cols), buf[: module.nnz]
        )
    return buf.clone()


@pytest.mark.parametrize("backend", ["masked", "sparse"])
@pytest.mark.parametrize("readmitted", ["keep", "reset"])
def test_a_removed_and_regrown_link_keeps_its_weight_and_momentum_or_restarts(backend, readmitted):
    model, opt, sp = _nearly_dense(backend, readmitted)
    g = torch.Generator().manual_seed(0)
    report = None
    while report is None:
        x = torch.randn(6, 8, generator=g, dtype=torch.float64)
        nn.functional.cross_entropy(model(x), torch.randint(0, 2, (6,), generator=g)).backward()
        opt.step()
        before = {
            layer.name: (layer.mask.clone(), layer.dense_weight().clone(), _momentum(sp, opt, layer))
            for layer in sp.layers
        }
        report = sp.step()
        opt.zero_grad()
    for layer in sp.layers:
        old, weight, momentum = before[layer.name]
        both = old & layer.mask
        info = report.layers[layer.name]
        assert info.removed == 18 and info.overlap >= 17
        restarted = both & (layer.dense_weight() == 0) & (weight != 0)
        if readmitted == "keep":
            # the official codes mask weights and moments with the final mask only
            assert torch.equal(layer.dense_weight()[both], weight[both])
            assert torch.equal(_momentum(sp, opt, layer)[both], momentum[both])
            assert not restarted.any()
        else:
            assert int(restarted.sum()) == info.overlap
            assert not _momentum(sp, opt, layer)[restarted].any()
            kept = both & ~restarted
            assert torch.equal(layer.dense_weight()[kept], weight[kept])


@pytest.mark.parametrize("backend", ["masked", "sparse"])
def test_a_pruned_link_regrown_in_the_same_update_restarts_at_zero(backend):
    from chtorch.dst.update import install

    model, opt, sp = _nearly_dense(backend, "keep")
    layer = sp.layers[0]
    old = layer.mask.clone()
    weight = layer.dense_weight().clone()
    links = torch.nonzero(old)
    dropped = torch.zeros_like(old)
    dropped[links[:4, 0], links[:4, 1]] = True
    pruned = torch.zeros_like(old)
    pruned[links[:2, 0], links[:2, 1]] = True  # the density schedule pruned two, removal dropped two
    keep = old & ~dropped
    install(sp.options, sp.optimizer, layer, old, keep, dropped, torch.zeros_like(old), pruned)
    after = layer.dense_weight()
    assert torch.equal(layer.mask, old)
    assert not after[pruned].any()
    removed = dropped & ~pruned
    assert torch.equal(after[removed], weight[removed]) and weight[removed].all()


def test_readmitted_must_be_known():
    with pytest.raises(OptionError, match="readmitted"):
        SparsityOptions(readmitted="restart")


@pytest.mark.parametrize("bad", [True, 3, "r=0.5"])
def test_init_options_that_are_not_a_mapping_get_a_clear_error(bad):
    # sparsify(..., init_options=True) is an OptionError, not a bare TypeError
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(OptionError, match="init_options must be a mapping"):
        chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=10, init_options=bad)
