"""Tokenizers, language-model corpora and windows, parallel corpora and token-count batching."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.data.files import ChecksumError, DataFormatError, DataNotFoundError
from chtorch.data.text import (
    RandomWindows,
    SequentialWindows,
    load_corpus,
    random_windows,
    read_text,
    split_documents,
    split_tokens,
    tokenize_corpus,
)
from chtorch.data.tokenization import SPECIAL_TOKENS, CharTokenizer, load_tokenizer, train_bpe
from chtorch.data.translation import (
    MULTI30K_LINES,
    encode_pairs,
    filter_pairs,
    read_multi30k,
    read_parallel,
    token_batch_indices,
    token_batches,
)


def _data_root() -> Path:
    env = os.environ.get("CHTORCH_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


DATA = _data_root()
needs_multi30k = pytest.mark.skipif(
    not (DATA / "multi30k" / "train.en.gz").is_file(), reason=f"Multi30k not found under {DATA} (set CHTORCH_DATA)"
)
needs_shakespeare = pytest.mark.skipif(
    not (DATA / "tinyshakespeare" / "input.txt").is_file(), reason=f"tinyshakespeare not found under {DATA}"
)

SAMPLE = [
    "A man in an orange hat starring at something.",
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "A little girl climbing into a wooden playhouse.",
    "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    "Two men are at the stove preparing food.",
] * 20


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8")))


# -- tokenizers ------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_specials_and_unknowns(tmp_path):
    tok = CharTokenizer.train(["hello world", "wide"])
    assert tok.vocab_size == len(SPECIAL_TOKENS) + len(set("hello worldwide"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    ids = tok.encode("hold", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "hold"
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>hold<eos>"
    assert tok.encode("hz") == [tok.encode("h")[0], tok.unk_id]
    path = tok.save(tmp_path)
    assert path.name == "char_tokenizer.json"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode("world") == tok.encode("world")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


BPE_CORPUS = SAMPLE + [
    "Größere Übung: 漢字, émigré, naïve — \t tabs and  double  spaces.",
    "<eos> is just text here",
]


@pytest.fixture(scope="module")
def bytelevel():
    pytest.importorskip("tokenizers")
    return train_bpe(BPE_CORPUS, vocab_size=400, kind="bytelevel", min_frequency=1)


def test_bpe_has_special_ids_and_bounded_vocab(bytelevel):
    assert (bytelevel.pad_id, bytelevel.bos_id, bytelevel.eos_id, bytelevel.unk_id) == (0, 1, 2, 3)
    assert len(SPECIAL_TOKENS) + 256 < bytelevel.vocab_size <= 400
    # Frequent words became single tokens: BPE merged something.
    assert len(bytelevel.encode("Zwei junge")) < len("Zwei junge")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_bytelevel_bpe_round_trips_any_text(bytelevel, text):
    ids = bytelevel.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == bytelevel.bos_id and ids[-1] == bytelevel.eos_id
    assert bytelevel.decode(ids) == text


def test_special_token_strings_in_text_are_plain_text(bytelevel):
    ids = bytelevel.encode("say <eos> now")
    assert bytelevel.eos_id not in ids
    assert bytelevel.decode(ids) == "say <eos> now"


def test_whitespace_bpe_round_trips_its_training_text(tmp_path):
    pytest.importorskip("tokenizers")
    tok = train_bpe(SAMPLE, vocab_size=200, kind="whitespace", min_frequency=1)
    for line in SAMPLE[:5]:
        assert tok.decode(tok.encode(line)) == line
    assert tok.unk_id in tok.encode("Ω")  # never seen: <unk>, not a crash
    path = tok.save(tmp_path / "tok.json")
    again = load_tokenizer(path)
    assert again.encode(SAMPLE[1]) == tok.encode(SAMPLE[1])
    assert again.encode_batch(SAMPLE[:3]) == [tok.encode(s) for s in SAMPLE[:3]]


def test_bpe_argument_errors():
    pytest.importorskip("tokenizers")
    with pytest.raises(ValueError, match="unknown BPE kind"):
        train_bpe(SAMPLE, 500, kind="wordpiece")
    with pytest.raises(ValueError, match="too small"):
        train_bpe(SAMPLE, 100, kind="bytelevel")
    with pytest.raises(TypeError, match="not one string"):
        train_bpe("one string", 500)


def test_missing_tokenizers_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r"chtorch\[nlp\]"):
        train_bpe(SAMPLE, 500)


# -- language-model corpora ------------------------------------------------------------------------


@needs_shakespeare
def test_tinyshakespeare_loads_and_char_tokenizes():
    text = load_corpus("tinyshakespeare", DATA)
    assert len(text) == 1115394
    tok = CharTokenizer.train(text)
    assert tok.vocab_size == 65 + len(SPECIAL_TOKENS)
    tokens = tokenize_corpus(text, tok)
    assert tokens.dtype == torch.long and tokens.shape == (1115394,)
    assert tok.decode(tokens[:200].tolist()) == text[:200]


@pytest.mark.skipif(not (DATA / "shakespeare-plays" / "plays.txt.gz").is_file(), reason="plays.txt.gz absent")
def test_shakespeare_plays_gz_is_read_and_verified():
    text = load_corpus("shakespeare-plays", DATA)
    assert len(text.encode("utf-8")) == 5057280
    assert text.count("\n") == 187223


def test_text_files_plain_and_gzip_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n", encoding="utf-8")
    write_gz(tmp_path / "b.txt.gz", ["zipped", "text"])
    assert load_corpus(tmp_path / "a.txt") == "plain text\n"
    assert read_text(tmp_path / "b.txt.gz") == "zipped\ntext\n"
    with pytest.raises(DataNotFoundError, match="not a known corpus"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(DataNotFoundError, match="tinyshakespeare"):
        load_corpus("tinyshakespeare", tmp_path / "empty-root")
    bad = tmp_path / "root" / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("not shakespeare")
    with pytest.raises(ChecksumError):
        load_corpus("tinyshakespeare", tmp_path / "root")
    assert load_corpus("tinyshakespeare", tmp_path / "root", verify=False) == "not shakespeare"


def test_tokenize_documents_separates_them_with_eos():
    tok = CharTokenizer.train("abc")
    tokens = tokenize_corpus(["ab", "c"], tok)
    assert tokens.tolist() == tok.encode("ab") + [tok.eos_id] + tok.encode("c") + [tok.eos_id]
    assert tokenize_corpus(["ab", "c"], tok, eos_between=False).tolist() == tok.encode("abc")


def test_split_tokens_is_contiguous_and_deterministic():
    tokens = torch.arange(1000)
    train, val = split_tokens(tokens, 0.1)
    assert len(val) == 100 and torch.equal(torch.cat([train, val]), tokens)
    with pytest.raises(ValueError, match="val_fraction"):
        split_tokens(tokens, 1.0)


def test_split_documents_partitions_deterministically():
    docs = [f"doc {i}" for i in range(200)]
    train, val = split_documents(docs, 0.05, seed=3)
    assert len(val) == 10 and sorted(train + val) == sorted(docs)
    assert train == sorted(train, key=docs.index) and val == sorted(val, key=docs.index)
    assert split_documents(docs, 0.05, seed=3) == (train, val)
    assert split_documents(docs, 0.05, seed=4)[1] != val


def test_random_windows_are_shifted_slices_of_the_stream():
    tokens = torch.arange(500)
    x, y = random_windows(tokens, seq_len=16, batch_size=8, generator=gen(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)  # consecutive stream positions, target = next token
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))
    assert int(y.max()) <= 499
    again = random_windows(tokens, 16, 8, gen(0))[0]
    assert torch.equal(again, x)
    sampler = iter(RandomWindows(tokens, 16, 8, gen(0)))
    assert torch.equal(next(sampler)[0], x) and not torch.equal(next(sampler)[0], x)
    with pytest.raises(ValueError, match="shorter than seq_len"):
        random_windows(torch.arange(16), 16, 1, gen(0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 40), batch=st.integers(1, 6))
def test_sequential_windows_predict_every_token_once(n, seq_len, batch):
    tokens = torch.arange(n)
    if n < seq_len + 1:
        with pytest.raises(ValueError):
            SequentialWindows(tokens, seq_len, batch)
        return
    windows = SequentialWindows(tokens, seq_len, batch)
    batches = list(windows)
    assert len(batches) == len(windows)
    targets = torch.cat([y.flatten() for _, y in batches])
    assert torch.equal(targets, torch.arange(1, n)) and windows.n_targets == n - 1
    assert all(torch.equal(y, x + 1) and x.shape[0] <= batch for x, y in batches)


# -- parallel corpora ------------------------------------------------------------------------------


@needs_multi30k
def test_multi30k_line_counts():
    for split, expected in [("train", 29000), ("val", 1014), ("test", 1000)]:
        pairs = read_multi30k(split, DATA)
        assert len(pairs) == expected
        assert all(en and de for en, de in pairs)
    assert MULTI30K_LINES == {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
    direct = read_parallel(DATA / "multi30k", "test_2016_flickr", src="de", tgt="en")
    assert [(e, d) for d, e in direct] == read_multi30k("test", DATA)


def test_mismatched_line_counts_name_both_files(tmp_path):
    write_gz(tmp_path / "train.en.gz", ["a", "b", "c"])
    write_gz(tmp_path / "train.de.gz", ["x", "y"])
    with pytest.raises(DataFormatError) as info:
        read_parallel(tmp_path, "train")
    message = str(info.value)
    assert "train.en.gz" in message and "train.de.gz" in message
    assert "3 lines" in message and "has 2" in message


def test_parallel_files_plain_or_gzip_and_missing_file(tmp_path):
    (tmp_path / "val.en").write_text("one\ntwo\n", encoding="utf-8")
    write_gz(tmp_path / "val.de.gz", ["eins", "zwei"])
    assert read_parallel(tmp_path, "valid") == [("one", "eins"), ("two", "zwei")]
    with pytest.raises(DataNotFoundError, match=r"val\.fr"):
        read_parallel(tmp_path, "val", src="en", tgt="fr")
    with pytest.raises(FileNotFoundError):  # DataNotFoundError is a FileNotFoundError
        read_parallel(tmp_path, "train")


def test_multi30k_checksums_are_enforced(tmp_path):
    write_gz(tmp_path / "multi30k" / "val.en.gz", ["x"])
    write_gz(tmp_path / "multi30k" / "val.de.gz", ["y"])
    with pytest.raises(ChecksumError):
        read_multi30k("val", tmp_path)
    assert read_multi30k("val", tmp_path, verify=False) == [("x", "y")]
    with pytest.raises(ValueError, match="unknown Multi30k split"):
        read_multi30k("dev", tmp_path)


def pairs_strategy():
    side = st.lists(st.integers(4, 50), min_size=1, max_size=30)
    return st.lists(st.tuples(side, st.lists(st.integers(4, 50), max_size=30)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(pairs=pairs_strategy(), max_tokens=st.integers(1, 200), seed=st.one_of(st.none(), st.integers(0, 99)))
def test_token_batches_cover_every_pair_exactly_once(pairs, max_tokens, seed):
    generator = None if seed is None else gen(seed)
    batches = list(token_batches(pairs, max_tokens, generator, pad_id=0, bos_id=1, eos_id=2))
    seen = torch.cat([b.indices for b in batches]).tolist()
    assert sorted(seen) == list(range(len(pairs)))
    for b in batches:
        assert b.tgt_in.shape == b.tgt_out.shape and b.src.shape[0] == b.tgt_in.shape[0] == len(b.indices)
        padded = len(b.indices) * max(b.src.shape[1], b.tgt_in.shape[1])
        assert padded <= max_tokens or len(b.indices) == 1
        assert b.n_tokens == int((b.tgt_out != 0).sum())
        for row, i in enumerate(b.indices.tolist()):
            src, tgt = pairs[i]
            assert b.src[row, : len(src)].tolist() == src and (b.src[row, len(src) :] == 0).all()
            assert b.tgt_in[row, : len(tgt) + 1].tolist() == [1, *tgt]
            assert b.tgt_out[row, : len(tgt) + 1].tolist() == [*tgt, 2]
            assert (b.tgt_in[row, len(tgt) + 1 :] == 0).all() and (b.tgt_out[row, len(tgt) + 1 :] == 0).all()


def test_token_batching_is_deterministic_and_shuffles_with_a_generator():
    pairs = [([5] * (1 + i % 7), [6] * (1 + i % 5)) for i in range(300)]
    assert token_batch_indices(pairs, 64) == token_batch_indices(pairs, 64)
    shuffled = token_batch_indices(pairs, 64, gen(0))
    assert shuffled == token_batch_indices(pairs, 64, gen(0))
    assert shuffled != token_batch_indices(pairs, 64, gen(1))
    assert shuffled != token_batch_indices(pairs, 64)
    with pytest.raises(ValueError, match="max_tokens"):
        token_batch_indices(pairs, 0)


def test_filter_pairs_and_empty_source_error():
    pairs = [([4], [5]), ([], [5]), ([4] * 9, [5])]
    assert filter_pairs(pairs, max_len=8) == [([4], [5])]
    with pytest.raises(ValueError, match="no tokens"):
        list(token_batches(pairs, 100))


@needs_multi30k
def test_multi30k_end_to_end_with_bpe_and_transformer():
    pytest.importorskip("tokenizers")
    from chtorch.models.transformer import Seq2SeqTransformer, label_smoothed_cross_entropy, paper_config

    pairs = read_multi30k("val", DATA)[:64]
    tok = train_bpe([s for p in pairs for s in p], vocab_size=400, kind="whitespace")
    encoded = filter_pairs(encode_pairs(pairs, tok), max_len=100)
    assert len(encoded) == 64
    batch = next(token_batches(encoded, 512, gen(0), pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id))
    cfg = paper_config("tiny", tok.vocab_size, tok.vocab_size, share_embeddings=True, pad_id=tok.pad_id)
    model = Seq2SeqTransformer(cfg, generator=gen(0))
    loss = label_smoothed_cross_entropy(model(batch.src, batch.tgt_in), batch.tgt_out, pad_id=tok.pad_id)
    assert torch.isfinite(loss) and loss.item() > 0
