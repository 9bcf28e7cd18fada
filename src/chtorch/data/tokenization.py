"""Tokenizers for the translation and language-modelling experiments.

* :func:`train_bpe` trains a BPE tokenizer with Hugging Face ``tokenizers`` (the ``chtorch[nlp]``
  extra, imported only when used) on any iterator of texts. The paper's setups use subword vocabularies
  (IWSLT14: 10k BPE merges with subword-nmt; LLaMA: the t5-base SentencePiece vocabulary of 32000,
  §4.2); the tokenizer here is trained locally, so nothing is downloaded.
  ``kind="bytelevel"`` (GPT-2 style, every byte is in the alphabet, decoding is lossless for any
  text) or ``kind="whitespace"`` (SentencePiece-style Metaspace: words split at whitespace, which is
  kept as ``▁`` so decoding restores detokenized text; characters never seen in training map to
  ``<unk>``, and leading whitespace of a text is dropped).
* :func:`train_word_level` builds a word vocabulary of whitespace-separated tokens, kept as they are
  (case and attached punctuation included), the most frequent first: what OpenNMT-py's
  ``preprocess.py`` does with untokenized text (the official Transformer code's Multi30k setup). Words
  outside the vocabulary map to ``<unk>``; decoding joins tokens with single spaces.
* :class:`CharTokenizer`: one token per character, for tiny experiments (tiny-shakespeare has 65).

Both share the special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` with ids 0, 1, 2, 3 and the
interface ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``pad_id``,
``bos_id``, ``eos_id``, ``unk_id``, ``save(path)``. :func:`load_tokenizer` reads either back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from chtorch._io import atomic_write_text

__all__ = [
    "SPECIAL_TOKENS",
    "TextTokenizer",
    "BPETokenizer",
    "CharTokenizer",
    "train_bpe",
    "train_word_level",
    "load_tokenizer",
]

#: Special tokens, in id order: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
_PAD, _BOS, _EOS, _UNK = SPECIAL_TOKENS
_CHAR_FORMAT = "chtorch-char-tokenizer"
_BPE_KINDS = ("bytelevel", "whitespace")


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError(
            "BPE tokenization needs the Hugging Face `tokenizers` package, which is part of the "
            "chtorch[nlp] extra: pip install 'chtorch[nlp]' (or use CharTokenizer, which needs nothing)"
        ) from exc
    return tokenizers


def _json_path(path: str | os.PathLike[str], default_name: str) -> Path:
    """``path`` itself when it names a ``.json`` file, else ``path / default_name``."""
    p = Path(path).expanduser()
    return p if p.suffix == ".json" else p / default_name


class TextTokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...

    def save(self, path: str | os.PathLike[str]) -> Path: ...


def _with_specials(ids: list[int], bos: int, eos: int, add_bos: bool, add_eos: bool) -> list[int]:
    if add_bos:
        ids = [bos, *ids]
    if add_eos:
        ids = [*ids, eos]
    return ids


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` (BPE) with chtorch's special tokens and helpers.

    Build with :func:`train_bpe` or :meth:`load`; ``.tokenizer`` is the underlying object.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = {}
        for token in SPECIAL_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise ValueError(
                    f"tokenizer has no {token!r} token; chtorch needs {list(SPECIAL_TOKENS)} "
                    "(train it with chtorch.data.tokenization.train_bpe)"
                )
            ids[token] = token_id
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (ids[t] for t in SPECIAL_TOKENS)
        # Text that happens to contain "<eos>" etc. is tokenized as text, never as a control token
        # (special ids are only added by add_bos/add_eos). Not stored in tokenizer.json: set on load.
        tokenizer.encode_special_tokens = True

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return _with_specials(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Like :meth:`encode` for many texts (tokenized in parallel by the Rust library)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [_with_specials(e.ids, self.bos_id, self.eos_id, add_bos, add_eos) for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def word_level(self) -> bool:
        """True for a word vocabulary (:func:`train_word_level`): one token per whitespace-separated word."""
        return type(self.tokenizer.model).__name__ == "WordLevel"

    def token_texts(self, texts: Sequence[str]) -> list[list[str]]:
        """The text each token of :meth:`encode_batch`'s encodings stands for, cut from the input by the
        encodings' character offsets: for a word vocabulary, the words as written, those that encode to
        ``<unk>`` included (what OpenNMT's ``-replace_unk`` copies into a translation)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[text[a:b] for a, b in e.offsets] for text, e in zip(texts, encodings)]

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` (the ``tokenizers`` format) atomically; ``path`` is the file or
        its directory. Returns the file's path."""
        target = _json_path(path, "tokenizer.json")
        atomic_write_text(target, self.tokenizer.to_str(pretty=True))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Read a ``tokenizer.json`` (file or directory holding it)."""
        tokenizers = _require_tokenizers()
        source = _json_path(path, "tokenizer.json")
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no tokenizer file; train one with train_bpe(...).save(path)")
        return cls(tokenizers.Tokenizer.from_file(str(source)))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    kind: str = "bytelevel",
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> BPETokenizer:
    """Train a BPE tokenizer of at most ``vocab_size`` tokens (special tokens included) on ``texts``.

    ``kind``: ``"bytelevel"`` (lossless for any text) or ``"whitespace"`` (Metaspace words; see the
    module docstring). ``special_tokens`` must start with ``<pad>, <bos>, <eos>, <unk>`` (ids 0-3);
    more may follow. Needs the ``chtorch[nlp]`` extra.
    """
    tokenizers = _require_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if kind not in _BPE_KINDS:
        raise ValueError(f"unknown BPE kind {kind!r}; choose one of {_BPE_KINDS}")
    specials = list(special_tokens)
    if tuple(specials[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"special_tokens must start with {list(SPECIAL_TOKENS)}, got {specials}")
    min_vocab = len(specials) + (256 if kind == "bytelevel" else 1)
    if vocab_size < min_vocab:
        alphabet_note = "the 256 byte symbols" if kind == "bytelevel" else "characters"
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a {kind} BPE: it needs at least {min_vocab} "
            f"({len(specials)} special tokens + {alphabet_note})"
        )
    if kind == "bytelevel":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = tokenizers.Tokenizer(models.BPE(unk_token=_UNK))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        tok.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_checked_texts(texts), trainer=trainer)
    return BPETokenizer(tok)


def train_word_level(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 1,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> BPETokenizer:
    """A word-level vocabulary of at most ``vocab_size`` tokens (special tokens included): the words
    (whitespace-separated, unchanged) seen at least ``min_frequency`` times in ``texts``, the most
    frequent first (OpenNMT ``preprocess.py -src_vocab_size N``, ``-words_min_frequency``). Returned in
    the same wrapper as a BPE (any ``tokenizers.Tokenizer``). Needs the ``chtorch[nlp]`` extra."""
    tokenizers = _require_tokenizers()
    from tokenizers import models, pre_tokenizers, trainers

    specials = list(special_tokens)
    if tuple(specials[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"special_tokens must start with {list(SPECIAL_TOKENS)}, got {specials}")
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size={vocab_size} leaves no room for words beside the {len(specials)} special tokens")
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token=_UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(_checked_texts(texts), trainer=trainer)
    return BPETokenizer(tok)


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings (e.g. a list of lines), not one string")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must yield str, got {type(text).__name__}")
        yield text


class CharTokenizer:
    """One token per character: ids 0-3 are the special tokens, then ``chars`` in the given order.
    Characters outside ``chars`` encode to ``<unk>``."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: tuple[str, ...] = tuple(chars)
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer chars must be single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer chars must be distinct")
        self._itos = list(SPECIAL_TOKENS) + list(self.chars)
        self._stoi = {c: i for i, c in enumerate(self._itos) if len(c) == 1}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIAL_TOKENS))

    @classmethod
    def train(cls, texts: Iterable[str] | str) -> CharTokenizer:
        """The sorted set of characters in ``texts`` (one string or an iterable of strings)."""
        seen: set[str] = set()
        for text in [texts] if isinstance(texts, str) else texts:
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        get, unk = self._stoi.get, self.unk_id
        return _with_specials([get(c, unk) for c in text], self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        n_special = len(SPECIAL_TOKENS)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._itos):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self._itos)})")
            if i < n_special and skip_special_tokens:
                continue
            out.append(self._itos[i])
        return "".join(out)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``char_tokenizer.json`` (``path`` is the file or its directory); returns the path."""
        target = _json_path(path, "char_tokenizer.json")
        payload = {
            "format": _CHAR_FORMAT,
            "version": 1,
            "special_tokens": list(SPECIAL_TOKENS),
            "chars": list(self.chars),
        }
        atomic_write_text(target, json.dumps(payload, ensure_ascii=False, indent=1))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        source = _json_path(path, "char_tokenizer.json")
        payload = json.loads(Path(source).read_text(encoding="utf-8"))
        if payload.get("format") != _CHAR_FORMAT:
            raise ValueError(f"{source} is not a chtorch character tokenizer file")
        if payload.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"{source}: special tokens {payload.get('special_tokens')} != {list(SPECIAL_TOKENS)}")
        return cls(payload["chars"])


def load_tokenizer(path: str | os.PathLike[str]) -> BPETokenizer | CharTokenizer:
    """Load a tokenizer saved by :meth:`BPETokenizer.save` or :meth:`CharTokenizer.save`.

    ``path`` is a JSON file, or a directory holding ``tokenizer.json`` or ``char_tokenizer.json``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        candidates = [p / "tokenizer.json", p / "char_tokenizer.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{p} holds neither tokenizer.json nor char_tokenizer.json")
        p = found[0]
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such tokenizer file")
    with open(p, encoding="utf-8") as handle:
        payload = json.load(handle)
    if isinstance(payload, dict) and payload.get("format") == _CHAR_FORMAT:
        return CharTokenizer.load(p)
    return BPETokenizer.load(p)
