"""Encoder-decoder Transformer (paper Table 5 model), label-smoothed loss, greedy and beam search."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chtorch.models.generation import beam_search, greedy_decode, length_penalty
from chtorch.models.transformer import (
    PAPER_CONFIGS,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    label_smoothed_cross_entropy,
    paper_config,
)

PAD, BOS, EOS = 0, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(**overrides) -> Seq2SeqConfig:
    return paper_config("tiny", src_vocab=23, tgt_vocab=19, **overrides)


def model_for(cfg: Seq2SeqConfig, seed: int = 0) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(cfg, generator=gen(seed)).eval()


def random_ids(shape, vocab, seed, low=4):
    return torch.randint(low, vocab, shape, generator=gen(seed))


# -- configuration ---------------------------------------------------------------------------------


def test_paper_configs_follow_table_5():
    m30k = paper_config("multi30k", 100, 100)
    assert (m30k.d_model, m30k.n_heads, m30k.n_layers, m30k.d_ff) == (512, 8, 6, 1024)
    assert (m30k.dropout, m30k.attn_dropout) == (0.1, 0.1)
    assert paper_config("iwslt14", 100, 100).d_ff == 2048
    assert paper_config("WMT17", 100, 100).d_ff == 2048
    assert m30k.pre_norm  # OpenNMT default
    assert set(PAPER_CONFIGS) >= {"multi30k", "iwslt14", "wmt17", "tiny"}
    with pytest.raises(ValueError, match="unknown Transformer config"):
        paper_config("wmt14", 10, 10)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=30, n_heads=4), "not divisible"),
        (dict(share_embeddings=True), "joint vocabulary"),
        (dict(pad_id=19), "pad_id"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


def test_config_dict_round_trip_and_unknown_key():
    cfg = tiny(pre_norm=False)
    assert Seq2SeqConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown Seq2SeqConfig keys"):
        Seq2SeqConfig.from_dict({**cfg.to_dict(), "n_head": 3})


# -- structure -------------------------------------------------------------------------------------


def test_linear_layers_are_named_for_layer_selection():
    cfg = tiny()
    model = model_for(cfg)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())  # no fused in_proj
    expected = {"generator"}
    for i in range(cfg.n_layers):
        attns = (f"encoder.layers.{i}.self_attn", f"decoder.layers.{i}.self_attn", f"decoder.layers.{i}.context_attn")
        for attn in attns:
            expected |= {f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        for stack in ("encoder", "decoder"):
            expected |= {f"{stack}.layers.{i}.ffn.w_1", f"{stack}.layers.{i}.ffn.w_2"}
    assert linears == expected
    assert model.dense_layers == ("generator",)
    # chtorch's default layer selection keeps the last nn.Linear (in module order) dense.
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1] == "generator"
    w1 = model.encoder.layers[0].ffn.w_1.weight
    assert w1.shape == (cfg.d_ff, cfg.d_model)  # (out_features, in_features)


def test_shared_embeddings_and_tied_generator_share_storage():
    cfg = paper_config("tiny", 31, 31, share_embeddings=True, tie_generator=True)
    model = model_for(cfg)
    assert model.src_embed.weight is model.tgt_embed.weight is model.generator.weight
    untied = model_for(paper_config("tiny", 31, 31))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(model) == 2 * 31 * cfg.d_model


def test_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = Seq2SeqTransformer(tiny(), generator=gen(3)), Seq2SeqTransformer(tiny(), generator=gen(3))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.generator.weight, Seq2SeqTransformer(tiny(), generator=gen(4)).generator.weight)
    assert torch.count_nonzero(a.src_embed.weight[PAD]) == 0


# -- forward ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [True, False])
def test_forward_shapes(pre_norm):
    cfg = tiny(pre_norm=pre_norm)
    model = model_for(cfg)
    src, tgt = random_ids((3, 7), 23, 0), random_ids((3, 5), 19, 1)
    logits = model(src, tgt)
    assert logits.shape == (3, 5, 19)
    assert torch.isfinite(logits).all()
    memory, mask = model.encode(src)
    assert memory.shape == (3, 7, cfg.d_model) and mask.shape == (3, 1, 1, 7)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_decoder_is_causal(pre_norm):
    model = model_for(tiny(pre_norm=pre_norm))
    src, tgt = random_ids((2, 6), 23, 2), random_ids((2, 8), 19, 3)
    base = model(src, tgt)
    changed = tgt.clone()
    changed[:, 5] = (changed[:, 5] + 1 - 4) % 15 + 4
    out = model(src, changed)
    torch.testing.assert_close(out[:, :5], base[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, 5:], base[:, 5:])


def test_source_padding_is_masked():
    model = model_for(tiny())
    src = random_ids((2, 5), 23, 4)
    tgt = random_ids((2, 4), 19, 5)
    padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)
    # Without the mask the pad positions would matter: changing a pad id into a token changes logits.
    unmasked = padded.clone()
    unmasked[:, -1] = 7
    assert not torch.allclose(model(unmasked, tgt), model(src, tgt), atol=1e-5)


def test_errors_for_all_pad_source_and_too_long_input():
    model = model_for(tiny())
    with pytest.raises(ValueError, match="only of padding"):
        model(torch.tensor([[5, 6], [PAD, PAD]]), torch.tensor([[BOS], [BOS]]))
    with pytest.raises(ValueError, match="max_len"):
        model(random_ids((1, 129), 23, 0), torch.tensor([[BOS]]))


# -- loss ------------------------------------------------------------------------------------------


def test_label_smoothing_without_pad_equals_torch_cross_entropy():
    logits = torch.randn(4, 6, 11, generator=gen(0))
    target = torch.randint(0, 11, (4, 6), generator=gen(1))
    ours = label_smoothed_cross_entropy(logits, target, smoothing=0.1, pad_id=None)
    ref = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(ours, ref)


def test_label_smoothing_zero_is_nll_ignoring_pad():
    logits = torch.randn(3, 5, 9, generator=gen(2))
    target = torch.randint(1, 9, (3, 5), generator=gen(3))
    target[0, 3:] = PAD
    ours = label_smoothed_cross_entropy(logits, target, smoothing=0.0, pad_id=PAD)
    ref = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD)
    torch.testing.assert_close(ours, ref)


def test_label_smoothing_hand_worked_case():
    # V = 3, pad = 0: p = softmax([0, 0, log 3]) = [1/5, 1/5, 3/5]; target 2; the 0.1 smoothing mass is
    # spread over the two non-pad classes {1, 2}.
    logits = torch.tensor([[0.0, 0.0, math.log(3.0)]])
    expected = 0.9 * -math.log(3 / 5) + 0.1 * (math.log(5) + math.log(5 / 3)) / 2
    got = label_smoothed_cross_entropy(logits, torch.tensor([2]), smoothing=0.1, pad_id=0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # A pad target adds nothing: not to the sum, not to the count.
    both = label_smoothed_cross_entropy(logits.repeat(2, 1), torch.tensor([2, 0]), smoothing=0.1, pad_id=0)
    assert both.item() == pytest.approx(expected, rel=1e-6)
    per_token = label_smoothed_cross_entropy(logits.repeat(2, 1), torch.tensor([2, 0]), reduction="none")
    assert per_token[1].item() == 0.0


@pytest.mark.parametrize("pre_norm", [True, False])
def test_a_few_adam_steps_reduce_the_loss(pre_norm):
    torch.manual_seed(0)  # dropout
    model = Seq2SeqTransformer(tiny(pre_norm=pre_norm), generator=gen(0))
    src, tgt = random_ids((8, 6), 23, 6), random_ids((8, 7), 19, 7)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = label_smoothed_cross_entropy(model(src, tgt_in), tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# -- generation ------------------------------------------------------------------------------------


def test_length_penalty_is_gnmt():
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 1.0, "avg") == 7.0
    assert length_penalty(7, 1.0, "none") == 1.0
    with pytest.raises(ValueError, match="length penalty"):
        length_penalty(7, 1.0, "gnmt")


class ScriptedDecoder(torch.nn.Module):
    """A decoder whose next-token distribution depends only on the prefix length t (<bos> included):
    p(<eos>) = EOS_PROB[t], the rest on token 3; <pad> (0) and <bos> (1) get -inf."""

    EOS_PROB = {1: 0.3, 2: 0.4, 3: 0.55}

    def encode(self, src):
        return torch.zeros(src.shape[0], 1, 1), torch.ones(src.shape[0], 1, dtype=torch.bool)

    def decode(self, tgt_in, memory, memory_mask):
        n, t = tgt_in.shape
        q = self.EOS_PROB.get(t, 0.5)
        logits = torch.full((n, t, 4), float("-inf"))
        logits[:, -1, EOS] = math.log(q)
        logits[:, -1, 3] = math.log(1 - q)
        return logits


@pytest.mark.parametrize(
    "penalty, min_len, length, score",
    [
        # Hypotheses and log-probabilities: [eos] ln .3 = -1.2040; [a eos] ln .7 + ln .4 = -1.2730;
        # [a a eos] ln .7 + ln .6 + ln .55 = -1.4653; unterminated [a a a] ln .7 + ln .6 + ln .45 = -1.6660.
        ("none", 0, 1, math.log(0.3)),  # raw sums: the shortest wins
        # wu, alpha 1, |Y| = n + 1 (OpenNMT counts <bos>): -1.2040 / (7/6) = -1.0320,
        # -1.2730 / (8/6) = -0.9548, -1.4653 / (9/6) = -0.9769: [a eos] wins
        ("wu", 0, 2, (math.log(0.7) + math.log(0.4)) * 6 / 8),
        # avg: -1.2040 / 2, -1.2730 / 3 = -0.4243, -1.4653 / 4 = -0.3663, -1.6660 / 4: [a a eos] wins
        ("avg", 0, 3, (math.log(0.7) + math.log(0.6) + math.log(0.55)) / 4),
        # min_len 1 bans [eos]; without a penalty [a eos] is then the best
        ("none", 1, 2, math.log(0.7) + math.log(0.4)),
    ],
)
def test_length_penalties_pick_the_hand_worked_hypothesis(penalty, min_len, length, score):
    src = torch.tensor([[5, 6]])
    out = beam_search(
        ScriptedDecoder(),
        src,
        beam_size=2,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        max_len=3,
        alpha=1.0,
        penalty=penalty,
        min_len=min_len,
    )
    assert int(out.lengths[0]) == length
    assert out.tokens[0, : length - 1].tolist() == [3] * (length - 1) and int(out.tokens[0, length - 1]) == EOS
    assert float(out.scores[0]) == pytest.approx(score, rel=1e-5)


def rescore(model, src, tokens, lengths):
    """Sum of log p(token | prefix) under teacher forcing, with pad/bos excluded like the decoders."""
    b = src.shape[0]
    tgt_in = torch.cat([torch.full((b, 1), BOS), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logp = F.log_softmax(model(src, tgt_in).float(), dim=-1)
    picked = logp.gather(-1, tokens[..., None]).squeeze(-1)
    keep = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    return (picked * keep).sum(dim=1)


# (seed, eos bias) pairs for which greedy outputs have mixed lengths (some stop, some run to max_len).
@pytest.mark.parametrize("seed, eos_bias", [(1, 2.0), (1, 2.5), (2, 3.5)])
def test_beam_size_one_equals_greedy(seed, eos_bias):
    model = model_for(tiny(), seed)
    with torch.no_grad():
        model.generator.bias[EOS] = eos_bias
    src = random_ids((5, 6), 23, 10 + seed)
    src[1, 4:] = PAD
    greedy = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=12)
    beam = beam_search(model, src, beam_size=1, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=12)
    assert torch.equal(beam.tokens, greedy.tokens)
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.scores, greedy.scores)
    assert (greedy.lengths < 12).any() and (greedy.lengths > 1).any()


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_beam_scores_are_the_model_log_probability(alpha):
    model = model_for(tiny(), 1)
    with torch.no_grad():
        model.generator.bias[EOS] = 1.0
    src = random_ids((4, 6), 23, 20)
    out = beam_search(model, src, beam_size=3, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=10, alpha=alpha)
    assert out.tokens.shape[0] == 4
    for row, n in zip(out.tokens, out.lengths):
        assert (row[n:] == PAD).all() and (row[:n] != PAD).all()
        assert not (row[: n - 1] == EOS).any()  # <eos> only at the end
    ended = out.tokens.gather(1, (out.lengths - 1)[:, None]).squeeze(1) == EOS
    assert ended.any() and (out.lengths > 1).any()  # finished hypotheses of several lengths
    raw = rescore(model, src, out.tokens, out.lengths)
    penalty = torch.tensor([length_penalty(int(n) + 1, alpha) for n in out.lengths])  # |Y| counts <bos>
    torch.testing.assert_close(out.scores, raw / penalty, rtol=1e-4, atol=1e-4)


def test_beam_search_is_independent_of_batch_composition():
    model = model_for(tiny(), 1)
    with torch.no_grad():
        model.generator.bias[EOS] = 1.0
    src = random_ids((3, 6), 23, 30)
    src[2, 3:] = PAD
    together = beam_search(model, src, beam_size=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=9)
    for i in range(3):
        row = src[i : i + 1, : int((src[i] != PAD).sum())]
        alone = beam_search(model, row, beam_size=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=9)
        n = int(alone.lengths[0])
        assert int(together.lengths[i]) == n
        assert torch.equal(together.tokens[i, :n], alone.tokens[0, :n])
    assert len(set(together.lengths.tolist())) > 1


def test_decoding_restores_training_mode_and_checks_arguments():
    model = Seq2SeqTransformer(tiny(), generator=gen(0)).train()
    src = random_ids((1, 3), 23, 0)
    greedy_decode(model, src, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=2)
    assert model.training
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="alpha"):
        beam_search(model, src, beam_size=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=-1.0)
    with pytest.raises(ValueError, match="distinct"):
        greedy_decode(model, src, bos_id=BOS, eos_id=BOS, pad_id=PAD)


def test_beam_search_recovers_sequences_a_model_learned_to_copy():
    cfg = paper_config("tiny", 12, 12, share_embeddings=True, dropout=0.0, attn_dropout=0.0)
    model = Seq2SeqTransformer(cfg, generator=gen(0))
    sequences = [[4, 5, 6, 7], [8, 9, 10, 11, 4], [11, 10, 9], [5, 7, 9, 11, 6, 8], [6, 6, 10, 4]]
    width = max(map(len, sequences))
    src = torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])
    tgt_in = torch.tensor([[BOS] + s + [PAD] * (width - len(s)) for s in sequences])
    tgt_out = torch.tensor([s + [EOS] + [PAD] * (width - len(s)) for s in sequences])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = label_smoothed_cross_entropy(model(src, tgt_in), tgt_out, smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = beam_search(model, src, beam_size=3, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=10)
    for row, n, seq in zip(out.tokens, out.lengths, sequences):
        assert row[:n].tolist() == seq + [EOS]
