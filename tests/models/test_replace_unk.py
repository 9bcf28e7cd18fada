"""Source alignments of beam search and ``-replace_unk`` (OpenNMT-py's ``TranslationBuilder``): each
generated ``<unk>`` becomes the source word with the highest attention at the step that produced it."""

from __future__ import annotations

import math

import pytest
import torch

from chtorch.models import Seq2SeqTransformer, beam_search
from chtorch.models.transformer import paper_config
from chtorch.recipes.decoding import replace_unknown, translate, translate_aligned

PAD, BOS, EOS, UNK, A, B, C = range(7)
S = 4  # source length of the scripted tests


class ScriptedAligner(torch.nn.Module):
    """A decoder whose next-token distribution and source attention depend only on the prefix (its
    tokens after ``<bos>``): ``NEXT[prefix]`` (probabilities; unlisted prefixes end with ``<eos>``) and a
    one-hot attention at ``WHERE[prefix]`` (default 0). After one step beam [B] trails [A]; after two,
    [B C] leads both extensions of [A], so the beams swap slots and each must keep its own history."""

    NEXT = {
        (): {A: 0.55, B: 0.45},
        (A,): {C: 0.5, A: 0.5},
        (B,): {C: 0.99, EOS: 0.01},
        (A, C): {EOS: 0.5, C: 0.5},
        (A, A): {EOS: 0.5, C: 0.5},
        (B, C): {EOS: 0.9, C: 0.1},
    }
    WHERE = {(): 0, (A,): 1, (B,): 2, (B, C): 3}

    def __init__(self, next_table=None, where=None) -> None:
        super().__init__()
        self.next = self.NEXT if next_table is None else next_table
        self.where = self.WHERE if where is None else where

    def encode(self, src):
        return torch.zeros(src.shape[0], src.shape[1], 1), (src != PAD)[:, None, None, :]

    def decode_with_attention(self, tgt_in, memory, memory_mask):
        n, t = tgt_in.shape
        logits = torch.full((n, t, 7), -1e9)
        attention = torch.zeros(n, t, memory.shape[1])
        for row in range(n):
            prefix = tuple(tgt_in[row, 1:].tolist())
            for token, p in self.next.get(prefix, {EOS: 1.0}).items():
                logits[row, -1, token] = math.log(p)
            attention[row, -1, self.where.get(prefix, 0)] = 1.0
        return logits, attention

    def decode(self, tgt_in, memory, memory_mask):
        return self.decode_with_attention(tgt_in, memory, memory_mask)[0]


def onehot(*positions: int) -> torch.Tensor:
    return torch.eye(S)[list(positions)]


def search(model, max_len: int = 5, **kw):
    src = torch.tensor([[7, 8, 9, 10]])
    return beam_search(
        model, src, beam_size=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=max_len, penalty="none", **kw
    )


def test_alignment_follows_each_beam_through_a_reordering():
    out = search(ScriptedAligner(), return_attention=True)
    # [B C <eos>] (0.45 * 0.99 * 0.9) beats every continuation of [A], though [B] was second at step 1.
    assert out.tokens[0].tolist() == [B, C, EOS]
    # Without carrying the history along the reordered beams, row 1 would be [A]'s step (position 1).
    torch.testing.assert_close(out.attention[0], onehot(0, 2, 3))


def test_unterminated_hypotheses_keep_their_alignment():
    out = search(ScriptedAligner(), max_len=2, return_attention=True)
    assert out.tokens[0].tolist() == [B, C] and int(out.lengths[0]) == 2
    torch.testing.assert_close(out.attention[0], onehot(0, 2))


def test_alignment_leaves_the_search_unchanged():
    model = ScriptedAligner()
    plain, aligned = search(model), search(model, return_attention=True)
    assert plain.attention is None
    assert torch.equal(plain.tokens, aligned.tokens) and torch.equal(plain.scores, aligned.scores)


def test_unk_becomes_the_source_word_of_the_top_attention():
    # [B <unk> <eos>]: the <unk> is produced after prefix [B], attending to source position 2.
    table = {(): {A: 0.4, B: 0.6}, (B,): {UNK: 0.9, C: 0.1}, (B, UNK): {EOS: 1.0}}
    model = ScriptedAligner(table, {(): 0, (B,): 2, (A,): 1})
    found = translate_aligned(model, [[7, 8, 9, 10]], bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5)
    assert found == [([B, UNK], [0, 2])]

    class Vocabulary:
        unk_id = UNK
        words = {A: "ein", B: "der", C: "hund"}

        def decode(self, ids):
            return " ".join(self.words[i] for i in ids)

    ids, aligned = found[0]
    assert replace_unknown(ids, aligned, ["the", "big", "Zebra", "runs"], Vocabulary()) == "der Zebra"


def test_replace_unknown_with_a_word_vocabulary():
    from chtorch.data import train_word_level

    pytest.importorskip("tokenizers")
    tok = train_word_level(["ein hund rennt", "ein hund"], 100)
    ein, rennt = tok.token_to_id("ein"), tok.token_to_id("rennt")
    words = tok.token_texts(["a Zebra runs"])[0]
    assert words == ["a", "Zebra", "runs"] and tok.word_level
    ids = [ein, tok.unk_id, rennt, tok.unk_id]
    assert replace_unknown(ids, [0, 1, 2, 0], words, tok) == "ein Zebra rennt a"
    # No <unk>: exactly the tokenizer's own decoding, whatever the alignment.
    plain = [ein, tok.token_to_id("hund"), rennt]
    assert replace_unknown(plain, [2, 2, 0], words, tok) == tok.decode(plain) == "ein hund rennt"
    with pytest.raises(ValueError, match="alignment"):
        replace_unknown(ids, [0], words, tok)


def test_transformer_alignment_is_the_last_layers_first_cross_attention_head():
    cfg = paper_config("tiny", 20, 20, dropout=0.0, attn_dropout=0.0)
    model = Seq2SeqTransformer(cfg, generator=torch.Generator().manual_seed(0)).eval()
    src = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, PAD, PAD]])
    tgt = torch.tensor([[BOS, 13, 14], [BOS, 15, 16]])
    seen = {}
    last = model.decoder.layers[-1].context_attn
    hook = last.register_forward_hook(lambda m, args, out: seen.update(query=args[0]))
    memory, mask = model.encode(src)
    with torch.no_grad():
        logits, attention = model.decode_with_attention(tgt, memory, mask)
        hook.remove()
        assert torch.equal(logits, model.decode(tgt, memory, mask))
        # By hand: softmax(q_0 k_0^T / sqrt(hd)) of head 0 (the first head_dim features), pads excluded.
        hd = cfg.head_dim
        q = last.q_proj(seen["query"])[..., :hd]
        k = last.k_proj(memory)[..., :hd]
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        expected = scores.masked_fill(~mask[:, 0], float("-inf")).softmax(dim=-1)
    torch.testing.assert_close(attention, expected)
    assert attention.shape == (2, 3, 5) and (attention[1, :, 3:] == 0).all()


def test_beam_search_refuses_attention_from_a_model_without_it():
    class Plain(torch.nn.Module):
        def encode(self, src):
            return torch.zeros(src.shape[0], src.shape[1], 1), torch.ones(src.shape[0], 1, 1, src.shape[1]).bool()

        def decode(self, tgt_in, memory, memory_mask):
            return torch.zeros(tgt_in.shape[0], tgt_in.shape[1], 7)

    with pytest.raises(ValueError, match="decode_with_attention"):
        search(Plain(), return_attention=True)


def test_forced_unks_are_replaced_by_the_words_the_model_attends_to():
    """A real Transformer made to emit only <unk>: every output word is the source word at the argmax of
    the teacher-forced attention over the decoded prefix, and the ids match plain :func:`translate`."""
    cfg = paper_config("tiny", 20, 20, dropout=0.0, attn_dropout=0.0)
    model = Seq2SeqTransformer(cfg, generator=torch.Generator().manual_seed(1)).eval()
    with torch.no_grad():
        model.generator.bias[UNK] = 100.0
    sources = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    found = translate_aligned(model, sources, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=4, batch_size=2)
    assert [ids for ids, _ in found] == translate(model, sources, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=4)
    for src, (ids, aligned) in zip(sources, found):
        assert ids == [UNK] * 4
        memory, mask = model.encode(torch.tensor([src]))
        with torch.no_grad():
            _, attention = model.decode_with_attention(torch.tensor([[BOS] + ids[:-1]]), memory, mask)
        assert aligned == attention[0].argmax(dim=-1).tolist()
        words = [f"w{p}" for p in range(len(src))]
        assert replace_unknown(ids, aligned, words, _UnkOnly()) == " ".join(words[p] for p in aligned)


class _UnkOnly:
    unk_id = UNK

    def decode(self, ids):
        assert not ids
        return ""
