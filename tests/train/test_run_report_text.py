"""report.md's words match the records: the overlap of the update it names, the batch as the recipe
sizes it, the noam schedule as a schedule (its scale is no LR), and a warning when a run that names a
paper table does not follow its protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chtorch.config import config_to_dict, load_config, save_config
from chtorch.dst.report import LayerUpdate, UpdateReport
from chtorch.train.records import update_record
from chtorch.train.run_report import batch_text, schedule_text, write_report


def _run(tmp_path: Path, config, records: list[dict]) -> Path:
    save_config(config, tmp_path / "config.yaml")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return tmp_path


def _update(step: int, regrown: int, overlap: int) -> dict:
    layer = LayerUpdate("fc", n_links=100, target=100, removed=regrown, regrown=regrown, overlap=overlap)
    return update_record(UpdateReport(step, step // 2, 0.9, 0.1, 1.0, layers={"fc": layer}), 0, 0.1)


def test_an_update_that_regrew_nothing_has_no_overlap() -> None:
    record = _update(8, 0, 0)
    assert record["overlap"] is None and record["layers"]["fc"]["overlap"] is None
    assert _update(6, 40, 10)["overlap"] == pytest.approx(0.25)


def test_the_report_gives_the_overlap_of_the_update_it_names(tmp_path) -> None:
    updates = [_update(2, 50, 30), _update(4, 40, 22), _update(6, 0, 0)]
    write_report(_run(tmp_path, load_config(None, []), [{"kind": "epoch", "epoch": 1, "step": 6}, *updates]))
    text = (tmp_path / "report.md").read_text()
    assert "3 topology updates; the last at step 6 regrew no links; the last that did, at step 4, " in text
    assert f"{100 * updates[1]['overlap']:.1f}%" in text and "0.0%" not in text
    write_report(_run(tmp_path, load_config(None, []), updates[:2]))
    assert (
        f"the last at step 4 (overlap of removed and regrown links {100 * updates[1]['overlap']:.1f}%)"
        in (tmp_path / "report.md").read_text()
    )


def test_translation_header_shows_token_batches_and_the_noam_schedule(tmp_path) -> None:
    config = load_config("translation_multi30k_cpu", [])
    as_dict = config_to_dict(config)
    assert batch_text(as_dict["data"]) == "1024 tokens"
    peak = 0.25 * 128**-0.5 * 240**-0.5
    assert schedule_text(as_dict["optim"], as_dict["model"]) == (
        f"lr noam, scale 0.25, warm-up 240 steps, peak lr {peak:.3g} (d_model 128)"
    )
    write_report(_run(tmp_path, config, []))
    header = (tmp_path / "report.md").read_text().split("## Result")[0]
    assert "batch 1024 tokens" in header and "batch ?" not in header and "lr 0.25" not in header
    assert "6 epochs of 200 steps (1200 steps)" in header


def test_report_warns_when_a_paper_table_run_leaves_the_protocol(tmp_path) -> None:
    write_report(_run(tmp_path, load_config("mlp_mnist_paper", []), []))
    assert "Not the paper's protocol" not in (tmp_path / "report.md").read_text()
    tiny = load_config("mlp_mnist_paper", ["train.epochs=3", "data.train_limit=2000", "model.hidden=[64,64]"])
    write_report(_run(tmp_path, tiny, []))
    text = (tmp_path / "report.md").read_text()
    assert (
        "**Not the paper's protocol**: train.epochs 3 (the paper: 100); model.hidden [64, 64] (the paper: "
        "[1568, 1568, 1568]); data.train_limit 2000 (the paper: the whole data set)."
    ) in text
