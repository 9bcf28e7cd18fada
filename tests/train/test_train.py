"""The training loop (chtorch.train): schedules, exact resume, atomic checkpoints, bad input, records."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from chtorch.config import ConfigError, OptimConfig, load_config
from chtorch.dst.percolation import chain
from chtorch.train import CheckpointError, TrainingError, resume, train
from chtorch.train import checkpoint as checkpoint_module
from chtorch.train.checkpoint import load_checkpoint, save_checkpoint
from chtorch.train.metrics import active_neuron_count, load_topology, read_metrics, save_topology
from chtorch.train.optim import build_optimizer, build_scheduler, lr_multiplier
from chtorch.train.plots import adjacency_image
from chtorch.train.trainer import Trainer
from helpers import TINY_RUN

TINY = [*TINY_RUN, "train.epochs=3", "train.progress=off", "sparsity.method=set"]


def tiny(*overrides: str):
    return load_config(None, [*TINY, *overrides])


def run(tmp_path: Path, name: str, *overrides: str, callbacks=()):
    return train(tiny(*overrides), tmp_path / name, out=io.StringIO(), callbacks=callbacks)


def lrs(config: OptimConfig, steps: int, **kwargs) -> list[float]:
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, config)
    sched = build_scheduler(opt, config, steps, **kwargs)
    out = []
    for _ in range(steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# ----------------------------------------------------------------------------- optimizer and LR


def test_linear_schedule_goes_from_lr_to_final_lr() -> None:
    values = lrs(OptimConfig(lr=0.025, final_lr=2.5e-4, schedule="linear"), 100)
    assert values[0] == pytest.approx(0.025) and values[100] == pytest.approx(2.5e-4)
    assert values[50] == pytest.approx((0.025 + 2.5e-4) / 2)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_decay_fraction_reaches_final_lr_early_and_holds() -> None:
    """The official MLP code's LinearLR runs over 90% of the epochs, then the LR stays at its end."""
    values = lrs(OptimConfig(lr=0.025, final_lr=2.5e-4, schedule="linear", decay_fraction=0.9), 100)
    assert values[0] == pytest.approx(0.025) and values[45] == pytest.approx((0.025 + 2.5e-4) / 2)
    assert values[90] == pytest.approx(2.5e-4) and values[100] == pytest.approx(2.5e-4) and values[89] > 2.5e-4
    cosine = lrs(OptimConfig(name="adamw", lr=1e-3, final_lr=1e-4, schedule="cosine", decay_fraction=0.5), 100)
    assert (
        cosine[50] == pytest.approx(1e-4) and cosine[100] == pytest.approx(1e-4) and cosine[25] == pytest.approx(5.5e-4)
    )


def test_cosine_and_noam() -> None:
    values = lrs(OptimConfig(name="adamw", lr=1e-3, final_lr=1e-4, schedule="cosine", warmup_steps=10), 100)
    assert (
        values[5] == pytest.approx(0.5e-3) and values[10] == pytest.approx(1e-3) and values[100] == pytest.approx(1e-4)
    )
    f = lr_multiplier(OptimConfig(name="adam", lr=2.0, schedule="noam", warmup_steps=4000), 10000, d_model=512)
    # step counter 3999 is the 4000th optimizer step: the noam peak d^-0.5 * warmup^-0.5
    assert f(3999) == pytest.approx(512**-0.5 * 4000**-0.5)
    with pytest.raises(ValueError, match="d_model"):
        lr_multiplier(OptimConfig(name="adam", lr=2.0, schedule="noam", warmup_steps=10), 100)


def test_iterative_rewarmup_after_each_topology_update() -> None:
    f = lr_multiplier(OptimConfig(schedule="constant", rewarmup_steps=4), 100, update_interval=10, t_end=30)
    # updates follow steps 10, 20, 30; the j-th step after one runs at min(1, j/4)
    assert [f(s) for s in (0, 1, 3, 9, 10, 11, 13)] == [0.25, 0.5, 1.0, 1.0, 0.25, 0.5, 1.0]
    assert f(30) == 0.25 and f(31) == 0.5  # the update at t_end = 30 is re-warmed too
    # as both official codes, the ramp repeats every interval of the whole run, after t_end too
    assert f(40) == 0.25 and f(41) == 0.5 and f(43) == 1.0
    config = OptimConfig(schedule="constant", rewarmup_steps=4, rewarmup_until="last_update")
    last = lr_multiplier(config, 100, update_interval=10, t_end=30)
    assert last(30) == 0.25 and last(40) == 1.0 and last(41) == 1.0  # no update after t_end: no re-warm-up
    dense = lr_multiplier(OptimConfig(schedule="constant", rewarmup_steps=4), 100, update_interval=None)
    assert dense(10) == 1.0


# ----------------------------------------------------------------------------- the loop


@pytest.mark.e2e
def test_epoch_update_unit_converts_to_steps(tmp_path: Path) -> None:
    cfg = tiny("sparsity.update_interval=2", "train.epochs=4")
    cfg.run.dir = str(tmp_path / "r")
    trainer = Trainer(cfg, out=io.StringIO())
    spe = trainer.steps_per_epoch
    assert spe == len(trainer.recipe.loader) > 1
    assert trainer.sparsity.options.update_interval == 2 * spe
    assert trainer.total_steps == 4 * spe == trainer.sparsity.total_steps
    trainer.fit()
    updates = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "update"]
    # SET updates every 2 epochs while step < T_end = the whole run (the MLP code): none after the last step
    assert [u["step"] for u in updates] == [2 * spe]


@pytest.mark.e2e
def test_records_and_files(tmp_path: Path) -> None:
    result = run(tmp_path, "r", "train.log_every=5")
    d = result.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "updates.csv",
        "checkpoint.pt",
        "summary.json",
        "topology/init.npz",
        "topology/final.npz",
    ):
        assert (d / name).is_file(), name
    records = read_metrics(d)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    last = epochs[-1]
    assert 0.0 <= last["test_accuracy"] <= 1.0 and last["density"] == pytest.approx(0.1, abs=1e-3)
    assert set(last["layers"]) == {"layers.0", "layers.1"}
    assert any(r["kind"] == "step" for r in records)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["finished"] and summary["method"] == "set" and summary["primary_metric"] == "test_accuracy"
    header = (d / "metrics.csv").read_text().splitlines()[0]
    assert "test_accuracy" in header and "layers/layers.0/density" in header


@pytest.mark.e2e
def test_training_learns_digits(tmp_path: Path) -> None:
    result = run(tmp_path, "r", "train.epochs=6", "model.hidden=[64,64]")
    assert result.record["test_accuracy"] > 0.8  # chance is 0.1


@pytest.mark.e2e
def test_dense_baseline(tmp_path: Path) -> None:
    result = run(tmp_path, "r", "sparsity.method=dense", "train.epochs=1")
    assert result.record["density"] == 1.0 and result.record["active_neurons"] == 1.0
    assert not (result.run_dir / "topology").exists()
    assert "weight_mask" not in "".join(load_checkpoint(result.run_dir)["model"])


@pytest.mark.e2e
def test_csti_gets_the_input_correlation(tmp_path: Path) -> None:
    cfg = tiny("sparsity.method=chts", "sparsity.options.init=csti", "model.hidden=[64,64]", "train.epochs=1")
    cfg.run.dir = str(tmp_path / "r")
    trainer = Trainer(cfg, out=io.StringIO())
    options = trainer.recipe.sparsity_options({"init": "csti"})
    corr = options["init_options"]["correlation"]
    assert corr.shape == (64, 64) and torch.allclose(corr, corr.T, equal_nan=True)
    # The first layer's initial links sit on the most correlated input pixels: constant (always
    # blank) pixels of the digits have no correlation, so they get no links.
    first = trainer.sparsity.masks["layers.0"]
    blank = torch.isnan(corr).all(dim=0)
    assert blank.any() and int(first[:, blank].sum()) == 0
    trainer.fit()


@pytest.mark.e2e
def test_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    run(tmp_path, "r", "train.epochs=1")
    with pytest.raises(ConfigError, match="--resume"):
        run(tmp_path, "r", "train.epochs=1")


@pytest.mark.e2e
def test_progress_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    train(tiny("train.progress=lines", "train.epochs=2"), tmp_path / "r", out=out)
    text = out.getvalue()
    assert "epoch 1/2 |" in text and "epoch 2/2 |" in text and "density" in text and "active" in text
    assert "chtorch: finished" in text


# ----------------------------------------------------------------------------- exact resume


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _states_equal(x, y)
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


def _records(path: Path) -> list[dict]:
    out = []
    for r in read_metrics(path):
        r.pop("seconds", None)
        out.append(r)
    return out


@pytest.mark.e2e
# chts_mlp: MEST EM&S does not compensate percolated links, so a layer holds fewer links than its budget
@pytest.mark.parametrize("method,stop", [("rigl", "sigint"), ("chts", "request"), ("chts_mlp", "request")])
def test_interrupt_and_resume_is_bit_identical(tmp_path: Path, method: str, stop: str) -> None:
    overrides = (f"sparsity.method={method}", "model.dropout=0.1", "train.epochs=4")
    full = run(tmp_path, "full", *overrides)

    def interrupt(trainer: Trainer) -> None:
        if trainer.step == 30:  # mid-epoch 2 (about 23 steps per epoch): the batch position must be restored
            if stop == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                trainer.request_stop()

    out = io.StringIO()
    part = train(tiny(*overrides), tmp_path / "part", out=out, callbacks=[interrupt])
    assert part.interrupted and not part.finished and part.steps == 30
    assert f"chtorch train --resume {tmp_path / 'part'}" in out.getvalue()
    spe = full.steps // 4
    assert load_checkpoint(tmp_path / "part")["batch"] == 30 - spe > 0
    if method == "chts_mlp":
        layers = load_checkpoint(tmp_path / "part")["sparsity"]["layers"].values()
        assert any(entry["links"] < entry["target"] for entry in layers)  # the case this parameter is here for
    done = resume(tmp_path / "part", out=io.StringIO())
    assert done.finished and done.steps == full.steps

    a, b = load_checkpoint(full.run_dir), load_checkpoint(done.run_dir)
    _states_equal(a["model"], b["model"])  # weights and weight_mask buffers
    _states_equal(a["sparsity"]["layers"], b["sparsity"]["layers"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        _states_equal(a["optimizer"]["state"][k], b["optimizer"]["state"][k])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert _records(full.run_dir) == _records(done.run_dir)  # no duplicated or missing records


@pytest.mark.e2e
def test_resume_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "r", "train.epochs=1")
    before = load_checkpoint(result.run_dir)["step"]
    again = resume(result.run_dir, out=io.StringIO())
    assert again.finished and again.steps == before


@pytest.mark.e2e
def test_resume_accepts_only_harmless_overrides(tmp_path: Path) -> None:
    def stop(trainer: Trainer) -> None:
        if trainer.step == 5:
            trainer.request_stop()

    part = run(tmp_path, "r", "train.epochs=2", callbacks=[stop])
    with pytest.raises(ConfigError, match="cannot change on --resume"):
        resume(part.run_dir, ["optim.lr=0.1"], out=io.StringIO())
    assert resume(part.run_dir, ["train.progress=off", "run.device=cpu"], out=io.StringIO()).finished


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "weights": torch.arange(4)}, path)
    original = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "weights": torch.arange(8)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.e2e
def test_trainer_checkpoint_failure_mid_run_keeps_last_epoch(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_save = checkpoint_module.torch.save

    def save_twice_then_fail(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            handle.write(b"x")
            raise OSError("killed while writing")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_twice_then_fail)
    with pytest.raises(OSError):
        run(tmp_path, "r", "train.epochs=3")
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "r")
    assert state["epoch"] == 2 and state["batch"] == 0
    assert resume(tmp_path / "r", out=io.StringIO()).finished  # and the run continues from it


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    torch.save({"state_dict": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a chtorch training checkpoint"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps(Path("x"), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "key,value,words",
    [
        ("model", {"hidden": [16, 16]}, "does not fit this model"),
        ("sparsity", {"sparsity": 0.8}, "sparsity"),
        ("sparsity", {"method": "dense"}, "dense vs sparse"),
    ],
)
def test_checkpoint_from_another_model_or_sparsity(tmp_path: Path, key: str, value: dict, words: str) -> None:
    def stop(trainer: Trainer) -> None:
        if trainer.step == 5:
            trainer.request_stop()

    part = run(tmp_path, "r", "train.epochs=2", callbacks=[stop])
    path = part.run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    state["config"][key].update(value)
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    with pytest.raises(CheckpointError, match=words):
        resume(part.run_dir, out=io.StringIO())


def test_rng_state_round_trip() -> None:
    state = checkpoint_module.rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    checkpoint_module.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ----------------------------------------------------------------------------- bad numbers


@pytest.mark.e2e
@pytest.mark.parametrize("skip", [True, False])
def test_optimizer_step_of_update_iterations_is_skipped_when_asked(tmp_path: Path, skip: bool) -> None:
    """The image recipe skips the optimizer step of an update iteration (the MLP code); AdamW's step
    counter of a dense parameter then lags the trainer's by the number of updates."""
    seen: list = []
    run(
        tmp_path,
        f"skip{skip}",
        "optim.name=adamw",
        "optim.lr=0.001",
        "sparsity.update_interval=1",
        f"sparsity.options={{skip_step_on_update: {str(skip).lower()}}}",
        callbacks=[lambda trainer: seen.append(trainer)],
    )
    trainer = seen[-1]
    bias = trainer.model.get_submodule(trainer.sparsity.layer_names[0]).bias
    updates = sum(1 for e in range(1, 4) if trainer.sparsity.is_update_step(e * trainer.steps_per_epoch))
    assert updates == 2  # one per epoch before T_end = the whole run for set: none after the last epoch
    assert int(trainer.optimizer.state[bias]["step"]) == trainer.step - (updates if skip else 0)


def test_nonfinite_loss_is_skipped_then_stops(tmp_path: Path) -> None:
    def poison(trainer: Trainer) -> None:
        if trainer.step == 3:
            with torch.no_grad():
                trainer.model.classifier.weight.fill_(float("nan"))

    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        with pytest.raises(TrainingError, match="max_nonfinite=2"):
            run(tmp_path, "r", "train.max_nonfinite=2", callbacks=[poison])


# ----------------------------------------------------------------------------- records helpers


def test_active_neuron_count_by_hand() -> None:
    # chain a (3 out x 2 in) -> b (2 out x 3 in): input neuron 1 of a has no link; hidden neuron 2
    # has an incoming link in a but no outgoing link in b; output neuron 1 of b has no link.
    a = torch.tensor([[1, 0], [1, 0], [1, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    active, total = active_neuron_count({"a": a, "b": b}, [chain("a", "b")])
    assert (active, total) == (1 + 2 + 1, 2 + 3 + 2)
    # without the chain each layer counts its inputs and outputs separately
    assert active_neuron_count({"a": a, "b": b}) == (1 + 3 + 2 + 1, 2 + 3 + 3 + 2)


def test_topology_snapshot_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    masks = {"x.0": torch.rand(5, 7, generator=g) < 0.3, "x.1": torch.rand(3, 5, generator=g) < 0.5}
    save_topology(masks, tmp_path / "t.npz", epoch=2)
    layers, meta = load_topology(tmp_path / "t.npz")
    assert meta == {"epoch": 2}
    for name, mask in masks.items():
        rows, cols, shape = layers[name]
        rebuilt = torch.zeros(shape, dtype=torch.bool)
        rebuilt[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = True
        assert torch.equal(rebuilt, mask)


def test_adjacency_image_block_density() -> None:
    rows, cols = np.array([0, 0, 1, 3]), np.array([0, 1, 1, 3])
    assert np.array_equal(adjacency_image(rows, cols, (4, 4), max_pixels=4), _dense(rows, cols))
    assert np.allclose(adjacency_image(rows, cols, (4, 4), max_pixels=2), [[3 / 4, 0], [0, 1 / 4]])


def _dense(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.zeros((4, 4))
    out[rows, cols] = 1
    return out


# ----------------------------------------------------------------------------- real data (slow)


def _mnist_dir() -> Path | None:
    for base in (os.environ.get("CHTORCH_DATA"), Path(__file__).resolve().parents[3] / "shared" / "data"):
        if base and (Path(base) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(base) / "mnist"
    return None


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST files not found (set CHTORCH_DATA or add ../shared/data/mnist)")
def test_mnist_cpu_config_trains(tmp_path: Path) -> None:
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "mlp_mnist_cpu.yaml",
        [
            f"data.dir={_mnist_dir()}",
            "train.epochs=1",
            "data.train_limit=6000",
            "data.test_limit=2000",
            "train.progress=off",
            "train.plots=false",
        ],
    )
    result = train(cfg, tmp_path / "mnist", out=io.StringIO())
    assert result.record["test_accuracy"] > 0.8
    assert result.record["density"] == pytest.approx(0.01, abs=1e-3)
    assert 0.0 < result.record["active_neurons"] <= 1.0


def test_settings_errors_names_the_section_and_keeps_data_errors() -> None:
    """A ValueError from building the data or the model (a setting the schema could not check) becomes
    a ConfigError of that section; data-file errors keep their own type."""
    from chtorch.config import ConfigError
    from chtorch.data import DataError
    from chtorch.data.files import DataFormatError
    from chtorch.train.lifecycle import settings_errors

    with pytest.raises(
        ConfigError, match=r"the model settings \(model\.\* in the config\) do not work: bad width"
    ) as info:
        with settings_errors("model"):
            raise ValueError("bad width")
    assert info.value.key == "model"
    with pytest.raises(DataFormatError):
        with settings_errors("data"):
            raise DataFormatError("truncated file")
    assert issubclass(DataFormatError, DataError)
    with pytest.raises(ConfigError, match="already a config error") as info:
        with settings_errors("data"):
            raise ConfigError("already a config error", "data.name")
    assert info.value.key == "data.name"
