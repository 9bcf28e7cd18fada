"""The ``data`` section of the translation recipe (``run.recipe: translation``): corpus, tokenizer,
batching, checkpoint selection and decoding (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 5, and
the official OpenNMT-based Transformer code; ``docs/decisions.md``, "the translation paper config")."""

from __future__ import annotations

from dataclasses import dataclass

from chtorch.config import setting
from chtorch.models.generation import LENGTH_PENALTIES

__all__ = ["TranslationDataConfig", "SELECTION", "SCORING_KEYS"]

_CORPORA = ("multi30k", "parallel", "iwslt14", "wmt17")
#: Validation metrics that can select the best checkpoint, and whether higher is better.
SELECTION = {"val_accuracy": True, "val_loss": False}
#: Keys that change only how the test set is decoded and scored (``chtorch evaluate --set``).
SCORING_KEYS = frozenset(
    "data." + key
    for key in "replace_unk beam_size length_penalty length_alpha min_decode_len max_decode_len bleu_tokenize "
    "test_split test_limit".split()
)


@dataclass
class TranslationDataConfig:
    """A parallel corpus, its tokenizer, batching and evaluation (paper Table 5)."""

    name: str = setting(
        "multi30k",
        "corpus: multi30k (raw files), parallel (any {split}.{lang} "
        "files in data.dir), iwslt14 or wmt17 (Hugging Face datasets)",
        choices=_CORPORA,
    )
    dir: str | None = setting(
        None, "data root holding the corpus files (default: $CHTORCH_DATA, then ~/.cache/chtorch)"
    )
    verify: bool = setting(True, "verify the Multi30k files' checksums before reading")
    src_lang: str = setting("en", "source language (file suffix / dataset key)")
    tgt_lang: str = setting("de", "target language")
    train_split: str = setting("train", "training split (file stem for data.name=parallel)")
    val_split: str = setting("val", "validation split: selects the best checkpoint")
    test_split: str = setting("test", "test split: BLEU (Multi30k: test = test_2016_flickr)")
    tokenizer: str | None = setting(
        None, "a tokenizer file/directory to use instead of training a BPE (one joint vocabulary for both languages)"
    )
    vocab_size: int = setting(8000, "vocabulary size, special tokens included (a cap for tokenizer_kind=words)", min=8)
    tokenizer_kind: str = setting(
        "whitespace",
        "BPE pre-tokenization: whitespace (Metaspace words) or bytelevel; or words: no BPE, a vocabulary of "
        "whitespace-separated words as they are (OpenNMT preprocess.py on untokenized text)",
        choices=("whitespace", "bytelevel", "words"),
    )
    joint_vocab: bool = setting(True, "one vocabulary for both languages (else one per language)")
    min_frequency: int = setting(2, "BPE: minimum pair frequency of a merge; words: minimum word count", min=1)
    batch_tokens: int = setting(
        1024, "training batch size in padded target tokens (the paper: 1024 for Multi30k)", min=1
    )
    eval_batch_tokens: int = setting(4096, "padded tokens per validation-loss batch", min=1)
    eval_batch_size: int = setting(64, "sentences per beam-search batch", min=1)
    max_len: int = setting(100, "drop training pairs with more tokens than this on either side", min=1)
    steps_per_epoch: int | None = setting(
        None,
        "optimizer steps per epoch (default: one pass over the training set); passes continue across epochs",
        min=1,
    )
    label_smoothing: float = setting(
        0.1,
        "label smoothing of the training loss (the paper's Table 5: 0.1; the official code trains without: its "
        "loss builder replaces the smoothed loss by plain NLL)",
        min=0.0,
        max=1.0,
        max_open=True,
    )
    beam_size: int = setting(2, "beam size for the test translations (the paper: 2)", min=1)
    length_penalty: str = setting(
        "wu",
        "beam-search length penalty (OpenNMT -length_penalty): wu ((5 + len(Y)) / 6)^alpha (the official eval "
        "script), avg len(Y), none; len(Y) counts <bos> and <eos>, as OpenNMT",
        choices=LENGTH_PENALTIES,
    )
    length_alpha: float = setting(1.0, "exponent alpha of the wu length penalty (the official eval script: 1)", min=0.0)
    min_decode_len: int = setting(
        1, "no <eos> before this many generated tokens (OpenNMT -min_length; the official eval script: 1)", min=0
    )
    select_by: str = setting(
        "val_accuracy",
        "validation metric that picks the best checkpoint: val_accuracy (the official OpenNMT trainer) or val_loss",
        choices=tuple(SELECTION),
    )
    replace_unk: bool = setting(
        False,
        "replace each generated <unk> by the source word with the highest attention at the step that produced it "
        "(OpenNMT -replace_unk, as the official eval script: the last decoder layer's first cross-attention head); "
        "needs word vocabularies (tokenizer_kind=words); off: <unk> is dropped from the detokenized output",
    )
    max_decode_len: int = setting(100, "longest translation generated, in tokens", min=1)
    bleu_tokenize: str = setting("13a", "sacrebleu tokenizer for BLEU (13a = sacrebleu's default, intl, none, ...)")
    bleu_last: bool = setting(False, "also report test_bleu_last: BLEU of the final weights (doubles decoding time)")
    train_limit: int | None = setting(None, "use only the first N training pairs (CPU-sized runs)", min=1)
    val_limit: int | None = setting(None, "use only the first N validation pairs", min=1)
    test_limit: int | None = setting(None, "translate only the first N test sentences", min=1)
