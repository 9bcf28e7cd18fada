"""GPT-2's Conv1D layers (weight ``(in, out)``) as sparse layers, and saving/restoring sparse HF models.

Models are built from a config with random weights: nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import chtorch  # noqa: E402
from chtorch.dst.percolation import chain  # noqa: E402


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


def train(model, sp, opt, steps: int) -> None:
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 12), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sp.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["chts", "rigl"])  # topology-only and dense-gradient regrowth
def test_gpt2_conv1d_layers_train_sparse_with_exact_budgets_and_zeros(method) -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = chtorch.sparsify(model, opt, method=method, sparsity=0.8, total_steps=12, update_interval=2)
    blocks = [f"transformer.h.{i}." for i in range(2)]
    assert sp.layer_names == [b + n for b in blocks for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    if sp.couplings:
        assert set(sp.couplings) == {chain(b + "mlp.c_fc", b + "mlp.c_proj") for b in blocks}
    before = {name: mask.clone() for name, mask in sp.masks.items()}
    train(model, sp, opt, 8)
    assert sp.update_count == 4
    modules = dict(model.named_modules())
    for name, module, mask in sp.iter_layers():
        conv = modules[name]
        assert mask.shape == (conv.nf, conv.nx) and module.weight.shape == (
            conv.nx,
            conv.nf,
        )  # mask (out, in), weight (in, out)
        assert int(mask.sum()) == chtorch.masks.link_budget(conv.nf, conv.nx, 0.8), name
        assert bool((module.weight.T[~mask] == 0).all()), name
        assert bool((module.weight.T[mask] != 0).any()), name
        for value in opt.state[module.weight].values():
            if torch.is_tensor(value) and value.shape == module.weight.shape:
                assert bool((value.T[~mask] == 0).all()), name
    assert any(not torch.equal(before[n], sp.masks[n]) for n in before)  # the topology moved


def test_gpt2_conv1d_refuses_the_truly_sparse_backend_and_foreign_layers() -> None:
    model = tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(chtorch.OptionError, match="Conv1D"):
        chtorch.sparsify(model, opt, method="set", sparsity=0.9, total_steps=4, backend="sparse")
    with pytest.raises(ValueError, match=r"LayerNorm, not an nn.Linear or a GPT-2 Conv1D"):
        chtorch.sparsify(model, opt, method="set", sparsity=0.9, total_steps=4, layers="transformer.h.0.ln_1")


def test_save_pretrained_sparse_round_trip_restores_masks_exactly(tmp_path) -> None:
    from chtorch.integrations.hf import MASKS_NAME, restore_masks, save_pretrained_sparse

    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.75, total_steps=8, update_interval=2)
    train(model, sp, opt, 4)
    target = save_pretrained_sparse(model, tmp_path / "m")
    positions = sum(mask.numel() for mask in sp.masks.values())
    assert target == tmp_path / "m" / MASKS_NAME and target.stat().st_size < positions // 8 + 2048  # 1 bit per position
    loaded, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    assert not any(k.endswith("weight_mask") for k in loaded.state_dict())
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=0, msg=key)
    masks = restore_masks(loaded, tmp_path / "m")
    assert masks.keys() == sp.masks.keys()
    for name, mask in sp.masks.items():
        assert torch.equal(masks[name], mask), name
    # A plain save_pretrained is what this replaces: its masks are unexpected keys on load.
    model.save_pretrained(tmp_path / "plain")
    _, plain_info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert any(key.endswith("weight_mask") for key in plain_info["unexpected_keys"])
    # From the zeros only: the support of the weights, a subset of the true masks.
    from_zeros = restore_masks(loaded)
    assert from_zeros.keys() == sp.masks.keys()
    for name, mask in sp.masks.items():
        assert not bool((from_zeros[name] & ~mask).any()), name
    # The restored masks continue sparse training with the same budgets.
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    sp2 = chtorch.sparsify(
        loaded, opt2, method="chts", sparsity=0.75, total_steps=8, update_interval=2, layers=list(masks), masks=masks
    )
    train(loaded, sp2, opt2, 2)
    for name, mask in sp2.masks.items():
        assert int(mask.sum()) == int(masks[name].sum()), name


def test_restore_masks_checks_the_file_against_the_model(tmp_path) -> None:
    from chtorch.integrations.hf import restore_masks, save_pretrained_sparse

    model = tiny_gpt2()
    with pytest.raises(ValueError, match="not sparsified"):
        save_pretrained_sparse(model, tmp_path / "dense")
    with pytest.raises(ValueError, match="does not look sparse"):
        restore_masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    chtorch.sparsify(model, opt, method="set", sparsity=0.5, total_steps=4)
    save_pretrained_sparse(model, tmp_path / "m")
    other = tiny_gpt2(seed=1)  # dense weights: non-zero off the saved masks
    with pytest.raises(ValueError, match="non-zero weights off the saved mask"):
        restore_masks(other, tmp_path / "m")


def test_default_layers_keep_the_tied_lm_head_dense() -> None:
    from chtorch.integrations.hf import default_layers

    names = default_layers(tiny_gpt2())
    assert "lm_head" not in names and len(names) == 8
