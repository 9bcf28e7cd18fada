"""LLaMA-style decoder (paper Table 6 models): structure, causality, RoPE, HF equivalence, training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chtorch.models.llama import (
    PAPER_CONFIGS,
    LlamaConfig,
    LlamaLM,
    RotaryEmbedding,
    apply_rotary,
    causal_lm_loss,
    count_parameters,
    paper_config,
    to_hf_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(**overrides) -> LlamaConfig:
    return paper_config("tiny", vocab_size=61, **overrides)


def ids(shape, vocab=61, seed=0):
    return torch.randint(0, vocab, shape, generator=gen(seed))


# -- configuration ---------------------------------------------------------------------------------


def test_paper_configs_follow_table_6():
    table = {"60m": (512, 1376, 8, 8), "130m": (768, 2048, 12, 12), "1b": (2048, 5461, 24, 32)}
    for name, (d, ff, layers, heads) in table.items():
        cfg = paper_config(name)
        assert (cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.n_heads) == (d, ff, layers, heads)
        assert (cfg.vocab_size, cfg.max_seq_len, cfg.tie_embeddings) == (32000, 256, False)
    assert paper_config("LLaMA-60M") == paper_config("60m")
    assert {"tiny", "small"} <= set(PAPER_CONFIGS)
    # 60M: 2 * 32000 * 512 embedding/head parameters + 8 layers of 4*512^2 + 3*512*1376 + 2*512, + 512.
    assert paper_config("60m").num_parameters() == 2 * 32000 * 512 + 8 * (4 * 512**2 + 3 * 512 * 1376 + 1024) + 512
    with pytest.raises(ValueError, match="unknown LLaMA config"):
        paper_config("7b")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=60, n_heads=8), "not divisible"),
        (dict(d_model=12, n_heads=4), "even head_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**tiny().to_dict(), **changes})


def test_config_dict_round_trip():
    cfg = tiny(tie_embeddings=True)
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LlamaConfig keys"):
        LlamaConfig.from_dict({"hidden_size": 3})


# -- structure -------------------------------------------------------------------------------------


def test_module_names_mirror_hugging_face():
    cfg = tiny()
    model = LlamaLM(cfg, generator=gen(0))
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    expected = {"lm_head"}
    for i in range(cfg.n_layers):
        expected |= {f"model.layers.{i}.self_attn.{p}_proj" for p in "qkvo"}
        expected |= {f"model.layers.{i}.mlp.{p}_proj" for p in ("gate", "up", "down")}
    assert linears == expected
    # chtorch's default layer selection keeps the last nn.Linear (in module order) dense.
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1] == "lm_head"
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert model.dense_layers == ("lm_head",)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (cfg.d_ff, cfg.d_model)
    assert "model.layers.0.input_layernorm.weight" in model.state_dict()
    assert not any("rotary" in k for k in model.state_dict())  # RoPE tables are not parameters


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_helper(tied):
    cfg = tiny(tie_embeddings=tied)
    model = LlamaLM(cfg, generator=gen(0))
    assert count_parameters(model) == cfg.num_parameters()
    embeddings = cfg.vocab_size * cfg.d_model * (1 if tied else 2)
    assert cfg.num_parameters(include_embeddings=False) == cfg.num_parameters() - embeddings
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = LlamaLM(tiny(), generator=gen(1)), LlamaLM(tiny(), generator=gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    w = a.model.layers[0].self_attn.q_proj.weight
    assert abs(w.std().item() - 0.02) < 0.003  # normal(0, initializer_range)


# -- forward ---------------------------------------------------------------------------------------


def test_forward_shape_and_length_limit():
    model = LlamaLM(tiny(), generator=gen(0))
    assert model(ids((3, 17))).shape == (3, 17, 61)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids((1, 129)))
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(ids((17,)))


def test_future_tokens_do_not_change_past_logits():
    model = LlamaLM(tiny(), generator=gen(0))
    x = ids((2, 20), seed=1)
    base = model(x)
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 7) % 61
    out = model(y)
    torch.testing.assert_close(out[:, :12], base[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, 12:], base[:, 12:])


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 100), n=st.integers(0, 100), shift=st.integers(0, 27))
def test_rope_scores_depend_only_on_relative_position(m, n, shift):
    rope = RotaryEmbedding(head_dim=16, max_seq_len=128, theta=10000.0)
    cos, sin = rope(128, torch.float64)
    q = torch.randn(16, generator=gen(m * 1000 + n), dtype=torch.float64)
    k = torch.randn(16, generator=gen(n * 1000 + m + 7), dtype=torch.float64)

    def score(i, j):
        return (apply_rotary(q, cos[i], sin[i]) * apply_rotary(k, cos[j], sin[j])).sum()

    # The tables are float32 (as in HF), hence the tolerance.
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-5, atol=1e-5)
    # A rotation keeps the norm.
    torch.testing.assert_close(apply_rotary(q, cos[m], sin[m]).norm(), q.norm(), rtol=1e-6, atol=1e-6)


def test_rope_is_identity_at_position_zero_and_pairs_i_with_i_plus_half():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=4, theta=10000.0)
    cos, sin = rope(4, torch.float32)
    x = torch.arange(1.0, 9.0)
    torch.testing.assert_close(apply_rotary(x, cos[0], sin[0]), x)
    # Position 1, pair (0, 4) rotates by angle 1 rad (frequency theta^0 = 1).
    out = apply_rotary(x, cos[1], sin[1])
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    torch.testing.assert_close(out[0], x[0] * c - x[4] * s)
    torch.testing.assert_close(out[4], x[4] * c + x[0] * s)


# -- Hugging Face equivalence ----------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_matches_hugging_face_llama_both_ways(tied):
    transformers = pytest.importorskip("transformers")
    cfg = tiny(tie_embeddings=tied, rope_theta=500.0)
    ours = LlamaLM(cfg, generator=gen(2)).eval()
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(to_hf_config(cfg)).eval()
    x = ids((2, 40), seed=3)

    hf.load_state_dict(ours.state_dict(), strict=True)  # ours -> HF
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), rtol=1e-5, atol=1e-5)

    with torch.no_grad():  # HF -> ours, from fresh HF weights
        for p in hf.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen(p.numel())))
    ours.load_state_dict(hf.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, rtol=1e-5, atol=1e-5)


# -- training --------------------------------------------------------------------------------------


def test_a_few_adam_steps_reduce_the_loss():
    model = LlamaLM(tiny(), generator=gen(0))
    window = ids((4, 33), seed=5)
    x, y = window[:, :-1], window[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = causal_lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - torch.log(torch.tensor(61.0)).item()) < 0.3  # starts near uniform
    assert losses[-1] < 0.7 * losses[0]
