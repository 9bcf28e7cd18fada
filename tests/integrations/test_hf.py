"""Hugging Face integration: sparsifying a LlamaForCausalLM by name patterns (couplings, per-head
budgets) and the one-line ``transformers.Trainer`` callback (masks, logs, checkpoints, resume).

Models are built from a config with random weights: nothing is downloaded."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import chtorch  # noqa: E402
from chtorch.dst.percolation import chain, rows  # noqa: E402

PROJECTIONS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]


def tiny_llama(seed: int = 0, kv_heads: int = 4) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def lm_loss(model: torch.nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (4, 12), generator=g)
    return model(input_ids=ids, labels=ids).loss


# ------------------------------------------------------------------------------------------------
# chtorch.sparsify on a HF model


def test_sparsify_hf_llama_by_name_patterns_infers_attention_and_swiglu_couplings() -> None:
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.8, total_steps=8, update_interval=2, layers=PROJECTIONS)
    assert len(sp.layer_names) == 14 and "lm_head" not in sp.layer_names
    expected = []
    for i in range(2):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        expected += [
            rows(a + "q_proj", a + "k_proj"),
            rows(m + "gate_proj", m + "up_proj"),
            chain(a + "v_proj", a + "o_proj"),
            chain(m + "gate_proj", m + "down_proj"),
            chain(m + "up_proj", m + "down_proj"),
        ]
    assert set(sp.couplings) == set(expected)
    for step in range(4):
        lm_loss(model, step).backward()
        opt.step()
        report = sp.step()
        opt.zero_grad()
        if step % 2 == 1:
            assert report is not None and report.regrown > 0
    for name, module, mask in sp.iter_layers():
        assert int(mask.sum()) == chtorch.masks.link_budget(*mask.shape, 0.8), name
        assert bool((module.weight[~mask] == 0).all()), name
    # The masks are persistent buffers: they travel with the HF state dict.
    assert "model.layers.0.self_attn.q_proj.weight_mask" in model.state_dict()


def test_grouped_query_attention_leaves_mismatched_pairs_uncoupled() -> None:
    model = tiny_llama(kv_heads=2)  # k/v project to 2 heads of 8: q/k rows and v->o do not line up
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = chtorch.sparsify(model, opt, method="chts", sparsity=0.5, total_steps=4, layers=PROJECTIONS)
    kinds = {(c.kind, c.layers[0].rsplit(".", 1)[1], c.layers[1].rsplit(".", 1)[1]) for c in sp.couplings}
    assert kinds == {
        ("rows", "gate_proj", "up_proj"),
        ("chain", "gate_proj", "down_proj"),
        ("chain", "up_proj", "down_proj"),
    }


def test_per_head_groups_give_every_head_its_own_exact_budget() -> None:
    from chtorch.integrations.hf import head_groups_for

    model = tiny_llama(kv_heads=2)
    groups = head_groups_for(model)
    assert groups == {"*.q_proj": 4, "*.k_proj": 2, "*.v_proj": 2}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = chtorch.sparsify(
        model,
        opt,
        method="chts",
        sparsity=0.75,
        total_steps=8,  # T_end = 6: updates after steps 2 and 4
        update_interval=2,
        layers=PROJECTIONS,
        head_groups=groups,
    )

    def check() -> None:
        for name, _module, mask in sp.iter_layers():
            kind = name.rsplit(".", 1)[1]
            heads = {"q_proj": 4, "k_proj": 2, "v_proj": 2}.get(kind)
            if heads is None:
                continue
            per_head = mask.view(heads, -1, mask.shape[1]).sum(dim=(1, 2))
            total = chtorch.masks.link_budget(*mask.shape, 0.75)
            assert int(per_head.max()) - int(per_head.min()) <= 1, (name, per_head.tolist())
            assert int(per_head.sum()) == total

    check()
    for step in range(4):
        lm_loss(model, step).backward()
        opt.step()
        sp.step()
        opt.zero_grad()
    assert sp.update_count == 2
    check()


# ------------------------------------------------------------------------------------------------
# The Trainer callback

needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="transformers.Trainer needs accelerate (pip install 'accelerate>=1.1')",
)


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(123)
        self.ids = torch.randint(0, 64, (n, 12), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(out, callback, max_steps: int = 6, seed: int = 0, **extra):
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=0,
        save_steps=3,
        save_strategy="steps",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )
    return transformers.Trainer(model=tiny_llama(seed), args=args, train_dataset=TinyDataset(), callbacks=[callback])


@needs_accelerate
def test_callback_trains_sparse_logs_checkpoints_and_resumes_exactly(tmp_path) -> None:
    from chtorch.integrations.hf import STATE_NAME, ChtorchCallback

    cb = ChtorchCallback("chtss", sparsity=0.9, update_interval=2, rewarmup_steps=2)
    full = make_trainer(tmp_path / "full", cb)
    full.train()
    sp = cb.sparsity
    assert sp is not None and sp.step_count == 6 and sp.total_steps == 6
    assert sp.update_count == 2  # updates at steps 2 and 4 (T_end = 0.75 * 6)
    assert "lm_head" not in sp.layer_names and len(sp.layer_names) == 14
    for name, module, mask in sp.iter_layers():
        assert int(mask.sum()) == chtorch.masks.link_budget(*mask.shape, 0.9), name  # CHTss reached 90%
        assert bool((module.weight[~mask] == 0).all()), name
    logged = [h for h in full.state.log_history if "chtorch/density" in h]
    assert logged and abs(logged[-1]["chtorch/density"] - sp.density()) < 1e-12
    assert logged[0]["chtorch/density"] > logged[-1]["chtorch/density"]  # the sigmoid decay from 50%
    assert all(0 < h["chtorch/active_neurons"] <= 1 for h in logged)
    # The re-warm-up: the step after an update runs at 1/w of the linear schedule's LR.
    lrs = {h["step"]: h["learning_rate"] for h in full.state.log_history if "learning_rate" in h}
    assert lrs[3] == pytest.approx(3e-3 * (1 - 2 / 6) / 2) and lrs[4] == pytest.approx(3e-3 * (1 - 3 / 6))
    for step in (3, 6):
        payload = torch.load(tmp_path / "full" / f"checkpoint-{step}" / STATE_NAME, weights_only=True)
        assert payload["method"] == "chtss" and payload["engine"]["step_count"] == step

    # A second run resumes from the step-3 checkpoint (between the two topology updates).
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed_cb = ChtorchCallback("chtss", sparsity=0.9, update_interval=2, rewarmup_steps=2)
    resumed = make_trainer(tmp_path / "resumed", resumed_cb)
    resumed.train(resume_from_checkpoint=True)
    assert resumed_cb.sparsity.step_count == 6 and resumed_cb.sparsity.update_count == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("weight_mask"):
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@needs_accelerate
def test_callback_counts_optimizer_steps_under_gradient_accumulation(tmp_path) -> None:
    from chtorch.integrations.hf import ChtorchCallback

    cb = ChtorchCallback("chts", sparsity=0.8, update_interval=2)
    trainer = make_trainer(tmp_path, cb, max_steps=4, gradient_accumulation_steps=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past total_steps.*")
        trainer.train()
    sp = cb.sparsity
    assert trainer.state.global_step == 4 and sp.total_steps == 4
    assert sp.step_count == 4 and not sp.past_total_steps  # 12 micro-batches, 4 optimizer steps
    assert sp.update_count == 1  # after optimizer step 2 (T_end = 0.75 * 4 = 3)
    for name, module, mask in sp.iter_layers():
        assert bool((module.weight[~mask] == 0).all()), name


@needs_accelerate
def test_callback_refuses_a_resume_without_its_state(tmp_path) -> None:
    from chtorch.integrations.hf import STATE_NAME, ChtorchCallback

    first = make_trainer(tmp_path / "a", ChtorchCallback("set", sparsity=0.5), max_steps=3)
    first.train()
    (tmp_path / "a" / "checkpoint-3" / STATE_NAME).unlink()
    again = make_trainer(tmp_path / "a", ChtorchCallback("set", sparsity=0.5), max_steps=6)
    with pytest.raises(RuntimeError, match="masks cannot be restored"):
        again.train(resume_from_checkpoint=True)


def test_callback_rejects_bad_arguments_early() -> None:
    from chtorch.integrations.hf import ChtorchCallback

    with pytest.raises(chtorch.OptionError, match="unknown method"):
        ChtorchCallback("chtz")
    with pytest.raises(chtorch.OptionError, match="zetta"):
        ChtorchCallback("chts", zetta=0.1)
    with pytest.raises(ValueError, match="skip_step_on_update=True cannot be honoured by a Trainer callback"):
        ChtorchCallback("chts", skip_step_on_update=True)
    ChtorchCallback("chts", skip_step_on_update=False)  # the Transformer code's choice is fine


def test_missing_transformers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    monkeypatch.delitem(sys.modules, "chtorch.integrations.hf", raising=False)
    with pytest.raises(ImportError, match=r"chtorch\[hf\]"):
        importlib.import_module("chtorch.integrations.hf")
    monkeypatch.delitem(sys.modules, "chtorch.integrations.hf", raising=False)
