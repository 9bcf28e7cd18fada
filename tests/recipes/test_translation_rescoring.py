"""``data.replace_unk`` in the translation recipe and ``chtorch evaluate RUN_DIR``: a finished run scored
again with other decoding options, into new files, the training records untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("sacrebleu")

import test_translation as toy  # noqa: E402  (the toy corpus and its tiny run config)

from chtorch.config import ConfigError, build_config  # noqa: E402
from chtorch.recipes.translation import Translation  # noqa: E402
from helpers import assert_error, cli  # noqa: E402

corpus = toy.corpus  # the module-scoped fixture: a toy English-"German" corpus
tiny_raw = toy.tiny_raw

WORDS = {"tokenizer_kind": "words", "joint_vocab": False}
SEPARATE = {"share_embeddings": False}


def word_recipe(corpus: Path, **data) -> Translation:
    raw = tiny_raw(corpus, data={**WORDS, **data}, model=SEPARATE)
    recipe = Translation(build_config(raw), torch.device("cpu"))
    recipe.setup()
    return recipe


def test_source_words_line_up_with_the_source_ids(corpus) -> None:
    # A cap of 14 tokens keeps 10 of the 16 words; the rarer ones encode to <unk>.
    recipe = word_recipe(corpus, vocab_size=14, replace_unk=True)
    texts = (corpus / "test.en").read_text(encoding="utf-8").splitlines()
    assert recipe.test_source_words == [t.split() for t in texts]
    assert [len(w) for w in recipe.test_source_words] == [len(ids) for ids in recipe.test_sources]
    unk = recipe.src_tok.unk_id
    assert any(unk in ids for ids in recipe.test_sources)
    assert word_recipe(corpus).test_source_words is None  # off by default


def test_replace_unk_needs_word_vocabularies(corpus) -> None:
    recipe = Translation(build_config(tiny_raw(corpus, data={"replace_unk": True})), torch.device("cpu"))
    with pytest.raises(ConfigError, match="tokenizer_kind=words"):
        recipe.setup()


def _biased(recipe: Translation, unk_bias: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = recipe.build_model().eval()
    with torch.no_grad():
        model.generator.bias[recipe.tgt_tok.unk_id] = unk_bias
    return model


def test_replace_unk_changes_nothing_without_unk(corpus) -> None:
    on, off = word_recipe(corpus, vocab_size=14, replace_unk=True), word_recipe(corpus, vocab_size=14)
    model = _biased(on, float("-inf"))
    bleu_on, hyps_on = on.test_bleu(model)
    assert (bleu_on, hyps_on) == off.test_bleu(model)
    assert any(h for h in hyps_on)


def test_every_generated_unk_becomes_a_source_word(corpus) -> None:
    recipe = word_recipe(corpus, vocab_size=14, replace_unk=True)
    _, hyps = recipe.test_bleu(_biased(recipe, 50.0))  # nothing but <unk> until max_decode_len
    for words, hyp in zip(recipe.test_source_words, hyps):
        out = hyp.split()
        assert len(out) == recipe.config.data.max_decode_len and set(out) <= set(words)


# ------------------------------------------------------------------------------------------------


def _train(corpus: Path, tmp_path: Path, capsys, **data) -> Path:
    import yaml

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(corpus, data=data, model=SEPARATE)), encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", str(config), "--quiet", "--out", str(out))
    assert code == 0, err
    return out


@pytest.mark.e2e
def test_evaluate_rescores_a_run_into_new_files(corpus, tmp_path, capsys) -> None:
    run = _train(corpus, tmp_path, capsys, **WORDS, vocab_size=14, steps_per_epoch=6)
    records = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    summary = json.loads(records["summary.json"])

    # The same options reproduce the run's own test BLEU and translations from best_model.pt.
    code, out, err = cli(capsys, "evaluate", str(run))
    assert code == 0, err
    assert "best validation checkpoint best_model.pt" in out and "test_bleu" in out
    same = json.loads((run / "evaluation-default.json").read_text())
    assert same["metrics"]["test_bleu"] == pytest.approx(summary["final"]["test_bleu"], abs=1e-9)
    assert f"epoch {summary['final']['best_epoch']}" in same["weights"] and same["run_finished"]
    assert (run / "evaluation-default.txt").read_bytes() == records["test_translations.txt"]

    code, out, err = cli(capsys, "evaluate", str(run), "--set", "data.replace_unk=true", "data.beam_size=3")
    assert code == 0, err
    rescored = json.loads((run / "evaluation-replace_unk=true+beam_size=3.json").read_text())
    assert rescored["overrides"] == ["data.replace_unk=true", "data.beam_size=3"]
    assert 0.0 <= rescored["metrics"]["test_bleu"] <= 100.0
    vocabulary = set((corpus / "train.de").read_text(encoding="utf-8").split())
    sources = (corpus / "test.en").read_text(encoding="utf-8").splitlines()
    lines = (run / "evaluation-replace_unk=true+beam_size=3.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(sources)
    for line, source in zip(lines, sources):
        assert set(line.split()) <= vocabulary | set(source.split())
    assert any(set(line.split()) - vocabulary for line in lines)  # some <unk> became an English word

    # The training records are exactly as they were.
    assert {name: (run / name).read_bytes() for name in records} == records


@pytest.mark.e2e
def test_evaluate_refuses_what_would_score_another_model(corpus, tmp_path, capsys) -> None:
    run = _train(corpus, tmp_path, capsys, train_limit=60)
    assert_error(*cli(capsys, "evaluate", str(run), "--set", "model.d_model=8")[::2], "model.d_model", "data.beam_size")
    assert_error(*cli(capsys, "evaluate", str(run), "--set", "data.replace_unk=true")[::2], "tokenizer_kind=words")
    assert_error(*cli(capsys, "evaluate", str(run), "--name", "a/b")[::2], "--name")
    assert_error(*cli(capsys, "evaluate", str(tmp_path))[::2], "checkpoint.pt")
    assert not list(run.glob("evaluation-*"))


@pytest.mark.e2e
def test_evaluate_scores_an_image_run_from_its_last_checkpoint(tmp_path, capsys) -> None:
    from helpers import TINY_RUN

    out = tmp_path / "digits"
    code, _, err = cli(capsys, "train", "--quiet", "--out", str(out), "--set", *TINY_RUN, "train.epochs=2")
    assert code == 0, err
    final = json.loads((out / "summary.json").read_text())["final"]
    code, stdout, err = cli(capsys, "evaluate", str(out), "--set", "data.eval_batch_size=7")
    assert code == 0, err
    record = json.loads((out / "evaluation-eval_batch_size=7.json").read_text())
    assert record["weights"].startswith("last checkpoint checkpoint.pt (epoch 2")
    assert record["metrics"]["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert record["outputs"] is None and not (out / "evaluation-eval_batch_size=7.txt").exists()
