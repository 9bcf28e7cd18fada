"""Loggers: JSONL, CSV, TensorBoard and W&B receive the same scalars (per-layer density and ANP
included); step records survive topology updates; records carry the LR each step trained with; the
epoch line names validation metrics "val"; run.loggers is validated."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest

from chtorch.config import ConfigError, build_config
from chtorch.train import resume
from chtorch.train.console import epoch_line
from chtorch.train.loggers import build_loggers, check_logger_names, record_scalars
from chtorch.train.metrics import read_metrics
from chtorch.train.trainer import Trainer


def _train(raw: dict, run_dir: Path, callbacks=()) -> Trainer:
    raw = {**raw, "run": {**raw["run"], "dir": str(run_dir)}}
    trainer = Trainer(build_config(raw), out=io.StringIO(), callbacks=callbacks)
    return trainer


def _expected_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    out = {}
    for record in read_metrics(run_dir):
        for tag, value in record_scalars(record).items():
            out[(tag, int(record["step"]))] = value
    return out


def test_record_scalars_flattens_layers_and_skips_coordinates() -> None:
    record = {
        "kind": "epoch",
        "epoch": 2,
        "step": 40,
        "val_ppl": 12.5,
        "active_neurons": 0.75,
        "note": "text",
        "frozen": True,
        "layers": {"a.q": {"density": 0.1, "shape": [4, 8], "active_in": 0.5}},
    }
    assert record_scalars(record) == {
        "epoch/val_ppl": 12.5,
        "epoch/active_neurons": 0.75,
        "epoch/frozen": 1.0,
        "epoch/layers/a.q/density": 0.1,
        "epoch/layers/a.q/active_in": 0.5,
    }


def test_logger_names_are_checked() -> None:
    assert check_logger_names(["JSONL", "csv"]) == ["jsonl", "csv"]
    with pytest.raises(ConfigError, match="must include jsonl"):
        check_logger_names(["csv"])
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'.*tensorboard"):
        check_logger_names(["jsonl", "tensorbord"])
    with pytest.raises(ConfigError, match="twice"):
        check_logger_names(["jsonl", "csv", "csv"])


def test_missing_logger_package_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        build_loggers(tmp_path, ["jsonl", "tensorboard"])
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="pip install wandb"):
        build_loggers(tmp_path, ["jsonl", "wandb"])


def test_epoch_line_names_each_split() -> None:
    record = {
        "epoch": 3,
        "train_loss": 2.5,
        "val_loss": 1.75,
        "val_ppl": 5.75,
        "test_bleu": 12.25,
        "density": 0.1,
        "lr": 0.01,
        "seconds": 1.0,
    }
    line = epoch_line(record, 8)
    assert "train loss 2.5000" in line and "val loss 1.7500 ppl 5.7500" in line and "test bleu 12.2500" in line
    assert "test loss" not in line and "test ppl" not in line


def test_step_records_on_update_steps_and_lr_of_the_step(tmp_path: Path, llama_raw) -> None:
    trainer = _train(llama_raw(train={"epochs": 2, "log_every": 1}), tmp_path / "r")
    used: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    records = read_metrics(tmp_path / "r")
    steps = [r for r in records if r["kind"] == "step"]
    updates = {r["step"] for r in records if r["kind"] == "update"}
    assert updates and [r["step"] for r in steps] == list(range(1, trainer.total_steps + 1))  # update steps included
    # The LM recipe skips the optimizer step of an update iteration (the LLaMA code): the other steps
    # record the LR they trained with, not the scheduler's next value.
    assert len(used) == trainer.total_steps - len(updates)
    assert [r["lr"] for r in steps if r["step"] not in updates] == used
    step_lr = {r["step"]: r["lr"] for r in steps}
    epochs = [r for r in records if r["kind"] == "epoch" and r["epoch"] >= 1]
    assert [r["lr"] for r in epochs] == [step_lr[r["step"]] for r in epochs]
    # The epoch ends on an update step, after which the re-warm-up restarts the LR: the record keeps
    # the LR of that step, not the restarted one the next step trains with.
    assert epochs[0]["step"] in updates and epochs[0]["lr"] != pytest.approx(step_lr[epochs[0]["step"] + 1])


def test_tensorboard_and_csv_receive_the_jsonl_scalars(tmp_path: Path, llama_raw) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = llama_raw(run={"loggers": ["jsonl", "csv", "tensorboard"]}, train={"epochs": 2, "log_every": 2})
    _train(raw, tmp_path / "r").fit()
    expected = _expected_scalars(tmp_path / "r")
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    seen = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert seen.keys() == expected.keys()
    assert all(seen[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items())
    layer = "model.layers.3.mlp.down_proj"
    assert {
        "epoch/active_neurons",
        "epoch/lr",
        "epoch/val_ppl",
        f"epoch/layers/{layer}/density",
        f"update/layers/{layer}/overlap",
    } <= {tag for tag, _ in seen}
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]
    import csv

    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    epochs = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"]
    assert len(rows) == len(epochs) and float(rows[-1][f"layers/{layer}/density"]) == pytest.approx(
        epochs[-1]["layers"][layer]["density"]
    )
    assert len(list(csv.DictReader((tmp_path / "r" / "steps.csv").open()))) == 4


def test_tensorboard_drops_what_an_interrupted_session_logged_after_its_checkpoint(tmp_path: Path, llama_raw) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = llama_raw(run={"loggers": ["jsonl", "tensorboard"]}, train={"epochs": 3, "log_every": 1})

    def stop(trainer: Trainer) -> None:
        if trainer.step == 6:  # mid-epoch 2: steps 5-6 are logged, then rewound by the resume
            trainer.request_stop()

    _train(raw, tmp_path / "r", callbacks=[stop]).fit()
    # A session killed after that checkpoint had logged steps 7-9 before dying: its events are stale.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "r" / "tensorboard")) as stale:
        for step in (7, 8, 9):
            stale.add_scalar("step/loss", -1.0, step)
    resume(tmp_path / "r", out=io.StringIO())
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, 13))
    assert -1.0 not in [e.value for e in events.Scalars("step/loss")]
    assert [e.step for e in events.Scalars("step/loss")] == [
        r["step"] for r in read_metrics(tmp_path / "r") if r["kind"] == "step"
    ]


class _FakeWandb(types.ModuleType):
    """The documented surface chtorch uses: wandb.init(...) -> run with log(dict, step=) and finish(), wandb.Html."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: dict[tuple[str, int], object] = {}
        self.finished = 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step=None):
                for key, value in data.items():
                    fake.logged[(key, step)] = value

            def finish(self):
                fake.finished += 1

        return Run()

    class Html:
        def __init__(self, text: str) -> None:
            self.text = text


def test_wandb_receives_the_jsonl_scalars_and_a_resume_continues_its_run(
    tmp_path: Path, llama_raw, monkeypatch
) -> None:
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    raw = llama_raw(run={"loggers": ["jsonl", "wandb"]}, train={"epochs": 2, "log_every": 1})

    def stop(trainer: Trainer) -> None:
        if trainer.step == 4:
            trainer.request_stop()

    _train(raw, tmp_path / "r", callbacks=[stop]).fit()
    resume(tmp_path / "r", out=io.StringIO())
    assert len(fake.inits) == 2 and fake.finished == 2
    first, second = fake.inits
    assert first["id"] == second["id"] and second["resume"] == "allow" and first["dir"] == str(tmp_path / "r")
    assert first["config"]["sparsity"]["method"] == "chtss"
    scalars = {k: v for k, v in fake.logged.items() if k[0] != "config"}
    assert scalars == pytest.approx(_expected_scalars(tmp_path / "r"))
    assert isinstance(fake.logged[("config", 0)], fake.Html)


def test_wandb_offline_needs_no_network(tmp_path: Path, llama_raw, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = llama_raw(run={"loggers": ["jsonl", "wandb"]}, train={"epochs": 1, "log_every": 0})
    _train(raw, tmp_path / "r").fit()
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
