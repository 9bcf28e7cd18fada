"""The trainer's gradient accumulation (``train.grad_accum``), precision (``train.precision``) and
activation checkpointing (``model.checkpointing``)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from chtorch.config import ConfigError, build_config
from chtorch.models.llama import LlamaConfig, LlamaLM
from chtorch.models.transformer import Seq2SeqConfig, Seq2SeqTransformer
from chtorch.train.trainer import Trainer
from helpers import tiny_config


def fit(tmp_path: Path, name: str, *overrides: str) -> Trainer:
    cfg = tiny_config(
        "train.epochs=2", "data.train_limit=512", "data.val_fraction=0", "sparsity.method=rigl", *overrides
    )
    cfg.run.dir = str(tmp_path / name)
    trainer = Trainer(cfg, out=io.StringIO())
    trainer.fit()
    return trainer


@pytest.mark.e2e
def test_two_half_batches_per_step_train_as_one_full_batch(tmp_path: Path) -> None:
    full = fit(tmp_path, "full", "data.batch_size=64")
    half = fit(tmp_path, "half", "data.batch_size=32", "train.grad_accum=2")
    assert half.steps_per_epoch == full.steps_per_epoch and half.step == full.step == full.total_steps
    assert half.sparsity.step_count == full.sparsity.step_count == full.total_steps
    assert half.sparsity.update_count == full.sparsity.update_count > 0
    for (name, a), b in zip(full.model.state_dict().items(), half.model.state_dict().values()):
        if name.endswith("weight_mask"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_lm_grad_accum_keeps_steps_per_epoch_in_optimizer_steps(tmp_path: Path, llama_raw) -> None:
    cfg = build_config(llama_raw(train={"epochs": 2, "grad_accum": 2, "precision": "bf16"}))
    cfg.run.dir = str(tmp_path / "lm")
    trainer = Trainer(cfg, out=io.StringIO())
    assert trainer.steps_per_epoch == 4 and trainer.total_steps == 8 and trainer.batches_per_epoch == 8
    trainer.fit()
    sp = trainer.sparsity
    assert sp.step_count == 8 and not sp.past_total_steps and sp.update_count > 0
    for layer in sp.layers:  # bf16 autocast: every invariant holds, weights and optimizer state stay fp32
        weight = layer.module.weight
        assert weight.dtype == torch.float32 and int(layer.mask.sum()) == layer.target
        assert bool((weight[~layer.mask] == 0).all())
        for value in trainer.optimizer.state[weight].values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                assert value.dtype == torch.float32 and bool((value[~layer.mask] == 0).all())


def test_fp16_is_refused_on_cpu_with_the_fix(tmp_path: Path) -> None:
    cfg = tiny_config("train.precision=fp16", "run.device=cpu")
    cfg.run.dir = str(tmp_path / "r")
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA device.*bf16"):
        Trainer(cfg, out=io.StringIO())
    with pytest.raises(ConfigError, match="precision"):
        tiny_config("train.precision=fp8")


def _loss_and_grads(model: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(5)  # dropout draws
    model.train()
    out = model(*inputs)
    loss = out.float().square().mean()
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "transformer"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(family: str) -> None:
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        if family == "llama":
            cfg = LlamaConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, checkpointing=checkpointing)
            model: torch.nn.Module = LlamaLM(cfg)
            inputs: tuple[torch.Tensor, ...] = (
                torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1)),
            )
        else:
            cfg2 = Seq2SeqConfig(
                src_vocab=30, tgt_vocab=30, d_model=16, n_heads=2, n_layers=2, d_ff=24, checkpointing=checkpointing
            )
            model = Seq2SeqTransformer(cfg2)
            g = torch.Generator().manual_seed(1)
            inputs = (torch.randint(1, 30, (3, 7), generator=g), torch.randint(1, 30, (3, 6), generator=g))
        results.append(_loss_and_grads(model, *inputs))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.e2e
def test_an_interrupted_accumulating_run_resumes_exactly(tmp_path: Path) -> None:
    from chtorch.train import resume, train
    from chtorch.train.checkpoint import load_checkpoint

    overrides = ("train.epochs=2", "data.batch_size=32", "train.grad_accum=2", "sparsity.method=rigl")
    full = train(tiny_config(*overrides), tmp_path / "full", out=io.StringIO())

    def interrupt(trainer: Trainer) -> None:
        if trainer.step == 9:  # mid-epoch: the saved position counts micro-batches
            trainer.request_stop()

    part = train(tiny_config(*overrides), tmp_path / "part", out=io.StringIO(), callbacks=[interrupt])
    assert part.interrupted and load_checkpoint(tmp_path / "part")["batch"] % 2 == 0
    done = resume(tmp_path / "part", out=io.StringIO())
    assert done.finished and done.steps == full.steps
    a, b = load_checkpoint(full.run_dir), load_checkpoint(done.run_dir)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["sparsity"]["step_count"] == b["sparsity"]["step_count"] == full.steps
