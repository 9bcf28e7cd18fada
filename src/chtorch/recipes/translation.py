"""Machine translation recipe (``run.recipe: translation``): the paper's Transformer experiments.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §4.1 and Table 5 train OpenNMT-py's encoder-decoder
Transformer on Multi30k en→de (6 layers, d_model 512, 8 heads, FFN 1024, dropout 0.1, label
smoothing 0.1, batches of 1024 tokens, 5000 steps, noam with 1000 warm-up steps and scale 0.25,
the iterative re-warm-up of w = 20 steps after every topology update, ΔT = 100), and report BLEU of
beam search (beam 2) on the test set from the best validation checkpoint. This recipe does the same:

* **data**: Multi30k task-1 raw files (``data.dir`` or ``$CHTORCH_DATA``), any directory of
  ``{split}.{src}`` / ``{split}.{tgt}`` files (``data.name: parallel``), or IWSLT14 / WMT17 from
  Hugging Face ``datasets`` when it is installed and the network allows;
* **tokenizer**: a BPE trained with ``tokenizers`` on the training sentences (joint source+target
  vocabulary by default), or (``data.tokenizer_kind: words``) a word vocabulary of whitespace-separated
  tokens per language as OpenNMT's ``preprocess.py`` builds it, saved in the run directory
  (``tokenizer/``) and reloaded on resume, or a tokenizer file the user gives (``data.tokenizer``);
* **batches**: token-count batches (``data.batch_tokens`` padded tokens, similar lengths together),
  reshuffled every pass with a generator derived from ``(seed, pass)``; an epoch is one pass, or
  ``data.steps_per_epoch`` steps of the endless stream of passes;
* **model**: :class:`chtorch.models.Seq2SeqTransformer`, loss
  :func:`~chtorch.models.label_smoothed_cross_entropy` (0.1 by default);
* **evaluation** every epoch: validation NLL per target token, perplexity ``exp(NLL)`` and token
  accuracy (teacher-forced argmax = reference, ``<eos>`` included, as OpenNMT's ``Statistics``); the
  weights of the best validation accuracy (``data.select_by``; the official trainer keeps the
  checkpoint of the highest validation accuracy) are kept in ``best_model.pt``; after the last epoch
  the test set is translated with beam search from those weights (OpenNMT's length penalties,
  ``data.length_penalty``; with ``data.replace_unk`` each generated ``<unk>`` becomes the source word
  it attends to most, as OpenNMT's ``-replace_unk``) and scored with ``sacrebleu`` (``test_bleu``, the
  primary metric); ``chtorch evaluate RUN_DIR`` repeats this later with other decoding options;
* **percolation couplings** (paper §4.3): ``q_proj``/``k_proj`` rows and ``v_proj → o_proj``
  chains of every attention block, ``w_1 → w_2`` of every feed-forward block, found by
  :func:`chtorch.dst.percolation.infer_couplings`; ``model.per_head_sparsity`` budgets, removes and
  regrows the q/k/v rows per attention head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chtorch._io import atomic_write, atomic_write_text
from chtorch.config import (
    ConfigError,
    model_schema,
    model_values,
)
from chtorch.data import (
    encode_pairs,
    filter_pairs,
    load_tokenizer,
    read_multi30k,
    read_parallel,
    train_bpe,
    train_word_level,
)
from chtorch.data.translation import collate_pairs, load_hf_translation, token_batch_indices
from chtorch.dst import Coupling, infer_couplings
from chtorch.models import Seq2SeqTransformer, label_smoothed_cross_entropy
from chtorch.models.transformer import Seq2SeqConfig
from chtorch.recipes.base import Recipe, RecipeSpec, register_recipe_spec
from chtorch.recipes.common import PER_HEAD_SPARSITY, cached_tokenizer, run_dir
from chtorch.recipes.decoding import corpus_bleu, replace_unknown, translate, translate_aligned
from chtorch.recipes.translation_config import SCORING_KEYS, SELECTION, TranslationDataConfig
from chtorch.rng import make_generator

__all__ = [
    "TranslationDataConfig",
    "TransformerModelConfig",
    "Translation",
    "corpus_bleu",
    "translate",
    "cached_tokenizer",
    "BEST_MODEL_NAME",
]

#: File in the run directory holding the weights (and masks) of the best validation checkpoint.
BEST_MODEL_NAME = "best_model.pt"

#: The ``model`` section of the Transformer: :class:`~chtorch.models.Seq2SeqConfig` without the
#: vocabulary sizes and padding id (the tokenizer decides them), plus per-head sparsity.
TransformerModelConfig = model_schema(
    "transformer",
    Seq2SeqConfig,
    doc="The encoder-decoder Transformer (defaults: the paper's Multi30k model, Table 5).",
    exclude=("src_vocab", "tgt_vocab", "pad_id", "layer_norm_eps"),
    defaults={"max_len": 256, "share_embeddings": True},
    extra=[
        PER_HEAD_SPARSITY,
    ],
)


# ------------------------------------------------------------------------------------------------
# The recipe


class Translation(Recipe):
    """Encoder-decoder translation; metrics ``train_loss`` (label-smoothed, per target token),
    ``val_loss`` (NLL per target token), ``val_ppl`` = exp(val_loss), ``val_accuracy`` (token
    accuracy), ``best_val_loss`` / ``best_val_accuracy`` (those of the kept checkpoint, chosen by
    ``data.select_by``), and after the last epoch ``test_bleu`` from the best-validation weights
    (``best_epoch`` says which)."""

    name = "translation"
    primary_metric = "test_bleu"
    higher_is_better = True
    evaluation_keys = SCORING_KEYS

    @property
    def _main(self) -> bool:
        """True in the process that writes files (rank 0 under ``torchrun``)."""
        return bool(getattr(self, "is_main", True))

    # -- data -------------------------------------------------------------------------------------
    def _read_split(self, split: str) -> list[tuple[str, str]]:
        cfg = self.config.data
        if cfg.name == "multi30k":
            return read_multi30k(split, cfg.dir, src=cfg.src_lang, tgt=cfg.tgt_lang, verify=cfg.verify)
        if cfg.name == "parallel":
            if cfg.dir is None:
                raise ConfigError(
                    "data.name=parallel reads {split}.{lang} files from data.dir: set data.dir", "data.dir"
                )
            return read_parallel(cfg.dir, split, src=cfg.src_lang, tgt=cfg.tgt_lang)

        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"data.name={cfg.name} comes from Hugging Face datasets, which is not installed: "
                "pip install datasets (or use data.name=parallel with local text files)",
                "data.name",
            ) from None
        # Read from the Hugging Face cache, or downloaded when the network allows.
        return load_hf_translation(cfg.name, split, src=cfg.src_lang, tgt=cfg.tgt_lang)

    @staticmethod
    def _limit(pairs: list[tuple[str, str]], n: int | None) -> list[tuple[str, str]]:
        return pairs if n is None else pairs[:n]

    def _tokenizers(self, train_pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
        cfg = self.config.data
        if cfg.tokenizer is not None:
            tok = load_tokenizer(cfg.tokenizer)
            return tok, tok
        folder = run_dir(self.config)
        base = {
            "kind": cfg.tokenizer_kind,
            "vocab_size": cfg.vocab_size,
            "min_frequency": cfg.min_frequency,
            "corpus": cfg.name,
            "train_split": cfg.train_split,
            "train_limit": cfg.train_limit,
            "src": cfg.src_lang,
            "tgt": cfg.tgt_lang,
        }

        def bpe(texts: list[str]) -> Callable[[], Any]:
            if cfg.tokenizer_kind == "words":
                return lambda: train_word_level(texts, cfg.vocab_size, min_frequency=cfg.min_frequency)
            return lambda: train_bpe(texts, cfg.vocab_size, kind=cfg.tokenizer_kind, min_frequency=cfg.min_frequency)

        if cfg.joint_vocab:
            texts = [s for s, _ in train_pairs] + [t for _, t in train_pairs]
            tok = cached_tokenizer(folder, "tokenizer", {**base, "side": "joint"}, bpe(texts), save=self._main)
            return tok, tok
        src = cached_tokenizer(
            folder, "tokenizer_src", {**base, "side": "src"}, bpe([s for s, _ in train_pairs]), save=self._main
        )
        tgt = cached_tokenizer(
            folder, "tokenizer_tgt", {**base, "side": "tgt"}, bpe([t for _, t in train_pairs]), save=self._main
        )
        return src, tgt

    def setup(self) -> None:
        cfg = self.config.data
        if self.config.model.share_embeddings and not cfg.joint_vocab and cfg.tokenizer is None:
            raise ConfigError(
                "model.share_embeddings needs one joint vocabulary: set "
                "data.joint_vocab=true or model.share_embeddings=false",
                "model.share_embeddings",
            )
        train = self._limit(self._read_split(cfg.train_split), cfg.train_limit)
        val = self._limit(self._read_split(cfg.val_split), cfg.val_limit)
        test = self._limit(self._read_split(cfg.test_split), cfg.test_limit)
        self.src_tok, self.tgt_tok = self._tokenizers(train)
        for attr in ("pad_id", "bos_id", "eos_id"):
            if getattr(self.src_tok, attr) != getattr(self.tgt_tok, attr):
                raise ConfigError(f"the source and target tokenizers disagree on {attr}", "data.tokenizer")
        self.pad_id, self.bos_id, self.eos_id = self.tgt_tok.pad_id, self.tgt_tok.bos_id, self.tgt_tok.eos_id
        self.n_raw_train = len(train)
        self.train_ids = filter_pairs(encode_pairs(train, self.src_tok, self.tgt_tok), cfg.max_len)
        if not self.train_ids:
            raise ConfigError(
                f"no training pair has 1..{cfg.max_len} tokens on both sides: raise data.max_len", "data.max_len"
            )
        # Validation loss needs non-empty sources; cap lengths at the model's position table.
        limit = self.config.model.max_len - 1
        self.val_ids = [
            (s[:limit], t[: limit - 1]) for s, t in encode_pairs(val, self.src_tok, self.tgt_tok) if len(s) > 0
        ]
        self.test_sources = [
            ids[:limit]
            for ids in (
                self.src_tok.encode_batch([s for s, _ in test])
                if hasattr(self.src_tok, "encode_batch")
                else [self.src_tok.encode(s) for s, _ in test]
            )
        ]
        self.test_references = [t for _, t in test]
        self.test_source_words = self._source_words([s for s, _ in test], limit)
        self.batches_per_pass = len(token_batch_indices(self.train_ids, cfg.batch_tokens))
        self._pass_cache: tuple[int, list[list[int]]] | None = None
        self._epoch = -1
        self._best: dict[str, Any] | None = None

    def _source_words(self, texts: list[str], limit: int) -> list[list[str]] | None:
        """The source words of each test sentence, position for position with its token ids, for
        ``data.replace_unk`` (None when it is off). Defined for word vocabularies only: with subwords a
        ``<unk>`` is a piece of a word, and copying a whole source word (or a source piece) into the middle
        of a target word has no faithful counterpart in the official code, which ran on words."""
        if not self.config.data.replace_unk:
            return None
        for side, tok in (("source", self.src_tok), ("target", self.tgt_tok)):
            if not getattr(tok, "word_level", False):
                raise ConfigError(
                    f"data.replace_unk copies source words over <unk> and needs word vocabularies, but the {side} "
                    "tokenizer splits words into pieces: set data.tokenizer_kind=words (a data.tokenizer file must be "
                    "a word-level one), or data.replace_unk=false",
                    "data.replace_unk",
                )
        return [words[:limit] for words in self.src_tok.token_texts(texts)]

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        try:
            config = Seq2SeqConfig(
                src_vocab=self.src_tok.vocab_size,
                tgt_vocab=self.tgt_tok.vocab_size,
                pad_id=self.pad_id,
                **model_values(self.config.model),
            )
        except ValueError as exc:
            raise ConfigError(f"model: {exc}", "model") from None
        return Seq2SeqTransformer(config).to(self.device)

    def model_dim(self) -> int | None:
        return self.config.model.d_model

    def couplings(self, model: nn.Module, layer_names: list[str]) -> list[Coupling] | None:
        """q/k rows and v→o of every attention block, w_1→w_2 of every feed-forward block (paper
        §4.3, the OpenNMT pairs ``(linear_keys, linear_query)``, ``(linear_values, final_linear)``,
        ``(w_1, w_2)``), restricted to the selected layers."""
        return infer_couplings(model, layer_names)

    def sparsity_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = dict(options)
        if self.config.model.per_head_sparsity and not options.get("head_groups"):
            heads = self.config.model.n_heads
            options["head_groups"] = {"*.q_proj": heads, "*.k_proj": heads, "*.v_proj": heads}
        return options

    # -- training ---------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        # batches: data.steps_per_epoch optimizer steps of train.grad_accum micro-batches each
        steps = self.config.data.steps_per_epoch
        return steps * self.config.train.grad_accum if steps else self.batches_per_pass

    def _pass(self, index: int) -> list[list[int]]:
        """The batches (pair indices) of pass ``index`` over the training set."""
        if self._pass_cache is None or self._pass_cache[0] != index:
            g = make_generator(self.config.run.seed, "translation-batches", index)
            self._pass_cache = (index, token_batch_indices(self.train_ids, self.config.data.batch_tokens, g))
        return self._pass_cache[1]

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        self._epoch = epoch
        if epoch == 0 and start == 0:
            self._forget_best()  # a fresh run: a best_model.pt left by an aborted attempt is stale
        per_epoch = self.steps_per_epoch
        for position in range(epoch * per_epoch + start, (epoch + 1) * per_epoch):
            pass_index, within = divmod(position, self.batches_per_pass)
            indices = self._pass(pass_index)[within]
            batch = collate_pairs(self.train_ids, indices, pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id)
            yield batch.to(self.device)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch.src, batch.tgt_in)
        loss = label_smoothed_cross_entropy(logits, batch.tgt_out, self.config.data.label_smoothing, pad_id=self.pad_id)
        n = batch.n_tokens
        return loss, {"loss_sum": loss.detach() * n, "tokens": n}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(1.0, float(sums.get("tokens", 0)))
        return {"train_loss": float(sums.get("loss_sum", 0.0)) / n}

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> tuple[float, float]:
        """(mean NLL per target token, token accuracy) of the validation pairs, ``<eos>`` included, no
        smoothing. Accuracy: the share of target tokens whose teacher-forced argmax is the reference
        token (OpenNMT ``Statistics.accuracy``, here in [0, 1])."""
        was_training = model.training
        model.eval()
        total, tokens, correct = 0.0, 0, 0
        for indices in token_batch_indices(self.val_ids, self.config.data.eval_batch_tokens):
            batch = collate_pairs(self.val_ids, indices, pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id).to(
                self.device
            )
            logits = model(batch.src, batch.tgt_in)
            total += float(
                label_smoothed_cross_entropy(logits, batch.tgt_out, 0.0, pad_id=self.pad_id, reduction="sum")
            )
            tokens += batch.n_tokens
            keep = batch.tgt_out != self.pad_id
            correct += int(((logits.argmax(dim=-1) == batch.tgt_out) & keep).sum())
        model.train(was_training)
        return total / max(1, tokens), correct / max(1, tokens)

    def validation_loss(self, model: nn.Module) -> float:
        """Mean NLL per target token (``<eos>`` included) of the validation pairs, no smoothing."""
        return self.validation_metrics(model)[0]

    def test_bleu(self, model: nn.Module) -> tuple[float, list[str]]:
        """(BLEU, detokenized hypotheses) of ``model`` on the test split."""
        cfg = self.config.data
        options: dict[str, Any] = dict(
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            beam_size=cfg.beam_size,
            batch_size=cfg.eval_batch_size,
            max_len=cfg.max_decode_len,
            alpha=cfg.length_alpha,
            penalty=cfg.length_penalty,
            min_len=cfg.min_decode_len,
            device=self.device,
        )
        if self.test_source_words is None:
            hyps = [self.tgt_tok.decode(h) for h in translate(model, self.test_sources, **options)]
        else:
            found = translate_aligned(model, self.test_sources, **options)
            hyps = [
                replace_unknown(ids, aligned, words, self.tgt_tok)
                for (ids, aligned), words in zip(found, self.test_source_words)
            ]
        return corpus_bleu(hyps, self.test_references, cfg.bleu_tokenize), hyps

    def evaluation_weights(self) -> tuple[dict[str, torch.Tensor], str] | None:
        """The best validation checkpoint (``best_model.pt``), whose test BLEU the run reports."""
        path = self._best_path()
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"{path}: no best validation checkpoint yet (the run keeps one from its first evaluation on); "
                "train or resume the run until it has finished an epoch"
            )
        best = torch.load(path, map_location="cpu", weights_only=True)
        key = self.config.data.select_by
        what = f"best validation checkpoint {BEST_MODEL_NAME} (epoch {int(best['epoch'])}"
        return best["model"], what + (f", {key} {float(best[key]):.4g})" if key in best else ")")

    def score(self, model: nn.Module) -> tuple[dict[str, float], list[str]]:
        """Test BLEU of ``model`` and its detokenized test translations."""
        bleu, hyps = self.test_bleu(model)
        return {"test_bleu": bleu}, hyps

    def _best_path(self) -> Path | None:
        folder = run_dir(self.config)
        return None if folder is None else folder / BEST_MODEL_NAME

    def _forget_best(self) -> None:
        self._best = None
        path = self._best_path()
        if path is not None and self._main:
            path.unlink(missing_ok=True)

    def _load_best(self) -> dict[str, Any] | None:
        if self._best is None:
            path = self._best_path()
            if path is not None and path.is_file():
                self._best = torch.load(path, map_location="cpu", weights_only=True)
        # Only evaluations of earlier epochs count (a file from a crashed attempt may be ahead).
        if self._best is not None and int(self._best["epoch"]) > self._epoch:
            self._best = None
        return self._best

    def _save_best(self, model: nn.Module, metrics: dict[str, float]) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self._best = {"epoch": self._epoch + 1, **metrics, "model": state}
        path = self._best_path()
        if path is not None and self._main:
            with atomic_write(path) as (handle, _):
                torch.save(self._best, handle)

    def result_files(self) -> list[Path]:
        path = self._best_path()
        return super().result_files() + ([path] if path is not None and path.is_file() else [])

    def result_file_ahead(self, path: Path, epochs_done: int) -> bool:
        # best_model.pt of an evaluation whose epoch never reached its checkpoint: _load_best ignores it
        # and the next evaluation replaces it, so its content decides nothing.
        if path != self._best_path():
            return False
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) > epochs_done
        except Exception:  # unreadable or foreign: a changed file, which the caller reports
            return False

    def _improves(self, metrics: dict[str, float], best: dict[str, Any] | None) -> bool:
        """Whether ``metrics`` beat the kept checkpoint by ``data.select_by`` (strictly: a tie keeps the
        earlier one, as the official trainer's ``min_acc < accuracy``)."""
        key = self.config.data.select_by
        if best is None or key not in best or int(best["epoch"]) == self._epoch + 1:
            return True
        if SELECTION[key]:
            return metrics[key] > float(best[key])
        return metrics[key] < float(best[key])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        val_loss, val_accuracy = self.validation_metrics(model)
        metrics = {"val_loss": val_loss, "val_accuracy": val_accuracy}
        out = {**metrics, "val_ppl": math.exp(min(val_loss, 50.0))}
        best = self._load_best()
        if self._improves(metrics, best):
            self._save_best(model, metrics)
            best = self._best
        assert best is not None
        out["best_val_loss"] = float(best["val_loss"])
        out["best_val_accuracy"] = float(best.get("val_accuracy", float("nan")))
        if self._epoch + 1 >= self.config.train.epochs:
            import copy

            best_model = copy.deepcopy(model)
            best_model.load_state_dict({k: v.to(self.device) for k, v in best["model"].items()})
            bleu, hyps = self.test_bleu(best_model)
            out["test_bleu"] = bleu
            out["best_epoch"] = int(best["epoch"])
            self._write_translations(hyps)
            if self.config.data.bleu_last:
                out["test_bleu_last"] = self.test_bleu(model)[0]
        return out

    def _write_translations(self, hyps: list[str]) -> None:
        folder = run_dir(self.config)
        if folder is None or not self._main:
            return
        atomic_write_text(folder / "test_translations.txt", "".join(h.replace("\n", " ") + "\n" for h in hyps))

    def export_chains(self, model: nn.Module, layer_names: list[str]) -> tuple[list[list[str]], Any]:
        """Each feed-forward ``w_1 → ReLU → w_2`` is a chain (its hidden neurons are what percolation
        frees); attention is accounted for by :func:`chtorch.compaction.attention_notes`."""
        modules = dict(model.named_modules())
        chains = [[name, name[: -len("w_1")] + "w_2"] for name in modules if name.endswith(".ffn.w_1")]
        return [c for c in chains if c[1] in modules], torch.relu

    def example_input(self) -> Any:
        """The first validation batch (``data.eval_batch_tokens`` tokens): ``(src, tgt_in)``."""
        indices = token_batch_indices(self.val_ids, self.config.data.eval_batch_tokens)[0]
        batch = collate_pairs(self.val_ids, indices, pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id).to(
            self.device
        )
        return (batch.src, batch.tgt_in)

    def describe(self) -> dict[str, Any]:
        cfg = self.config.data
        return {
            "corpus": cfg.name,
            "languages": f"{cfg.src_lang}-{cfg.tgt_lang}",
            "train_pairs": len(self.train_ids),
            "train_pairs_read": self.n_raw_train,
            "val_pairs": len(self.val_ids),
            "test_sentences": len(self.test_sources),
            "src_vocab": self.src_tok.vocab_size,
            "tgt_vocab": self.tgt_tok.vocab_size,
            "batches_per_pass": self.batches_per_pass,
            "batch_tokens": cfg.batch_tokens,
        }


register_recipe_spec(
    RecipeSpec(
        Translation,
        TranslationDataConfig,
        {"transformer": TransformerModelConfig},
        export_classes={"Seq2SeqTransformer": (Seq2SeqTransformer, Seq2SeqConfig)},
        # The official Transformer code keeps the model's Glorot initialisation for every method
        # (docs/decisions.md, "initial weights"), so the CH presets' SWI does not apply here unless a config asks.
        sparsity_defaults={"weight_init": "keep"},
    )
)
