"""One test per row of the bad-input table (docs/errors.md), through the ``chtorch`` command.

Every row: exit status 2, a ``chtorch: error: ...`` message that names the problem and the fix, no
traceback, and nothing half-written — a failed ``train`` creates no run directory, a failed
``--resume`` leaves every file of the run byte-identical, and the directory still works afterwards.
Data files are synthetic MNIST-format files written here (no real dataset needed); the NaN rows use
the digits demo.
"""

from __future__ import annotations

import gzip
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chtorch.cli import main
from chtorch.config import ConfigError, load_config
from chtorch.train import resume, train
from chtorch.train.checkpoint import load_checkpoint
from chtorch.train.metrics import read_metrics
from chtorch.train.trainer import Trainer
from helpers import TINY_RUN

# The `chtorch` command end to end (deselect with -m "not e2e" for a quick inner loop).
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAST = [*TINY_RUN, "train.epochs=2", "sparsity.method=set"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("chtorch: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "text,words",
    [
        ("optim:\n  lrr: 0.1\n", ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"]),
        ("train:\n  epochs: two\n", ["train.epochs must be an integer", "'two'"]),
        ("sparsity:\n  sparsity: 1.5\n", ["sparsity.sparsity must be a number in [0, 1)", "got 1.5"]),
        ("sparsity:\n  method: chtz\n", ["unknown method 'chtz'", "did you mean 'cht'", "known methods"]),
        ("data:\n  name: imagenet\n", ["unknown dataset 'imagenet'", "known datasets", "mnist"]),
        ("model:\n  name: resnet\n", ["unknown model 'resnet'", "known models", "mlp"]),
        ("run:\n  recipe: detection\n", ["unknown recipe 'detection'", "known recipes", "image_classification"]),
        ("optim: [1, 2\n", ["not valid YAML"]),
        ("- a\n- b\n", ["a config must be a mapping of sections"]),
        # The model's own config dataclass declares hidden widths >= 1; the config checks it by key.
        ("model:\n  hidden: [32, -4]\n", ["model.hidden must be a number >= 1", "got -4", "model.hidden=[32, -4]"]),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "out-of-range",
        "unknown-method",
        "unknown-dataset",
        "unknown-model",
        "unknown-recipe",
        "not-yaml",
        "not-a-mapping",
        "invalid-model-value",
    ],
)
def test_config_file_errors(capsys, monkeypatch, tmp_path: Path, text: str, words: list[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written by mistake would land here
    code, _, err = cli(capsys, "train", str(config), "--out", str(tmp_path / "run"))
    # Schema errors name the file; a value only the model itself can reject names the section.
    assert_error(code, err, *([] if "hidden" in text else [str(config)]), *words)
    assert not (tmp_path / "run").exists() and not any(work.iterdir())


def test_missing_config_file(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run"))
    assert_error(code, err, "nope.yaml", "not found")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- data files

IMAGES, LABELS = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(folder: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """MNIST-format files (random pixels) under the standard names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = rng.integers(0, 10, size=(n,))
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, IMAGES), mtime=0))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, LABELS), mtime=0))
    return folder


def train_mnist(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(
        capsys,
        "train",
        str(ROOT / "configs" / "mlp_mnist_cpu.yaml"),
        "--set",
        f"data.dir={data}",
        "model.hidden=[16]",
        "train.epochs=1",
        "train.plots=false",
        "train.report=false",
        "train.tensorboard=false",
        "sparsity.sparsity=0.9",
        "sparsity.method=set",
        *extra,
        "--out",
        str(out),
        "--quiet",
    )


def test_synthetic_mnist_files_train(capsys, tmp_path: Path) -> None:
    """The control for the data rows: the same files, undamaged, train (checksums off: they are not MNIST)."""
    code, _, err = train_mnist(capsys, fake_mnist(tmp_path / "data"), tmp_path / "run", "data.verify=false")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run")["finished"]


def _damage(folder: Path, how: str) -> None:
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated-gzip":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated-idx":  # a complete gzip stream around a cut IDX body
        path.write_bytes(gzip.compress(raw[: len(raw) - 1000], mtime=0))
    elif how == "wrong-magic":  # the labels file where the images belong
        shutil.copy(folder / "train-labels-idx1-ubyte.gz", path)
    elif how == "garbage-magic":
        path.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + raw[4:], mtime=0))
    elif how == "count-mismatch":
        n = int.from_bytes(raw[4:8], "big")
        images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, 28, 28)[: n - 5]
        path.write_bytes(gzip.compress(idx_bytes(images, IMAGES), mtime=0))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how,verify,words",
    [
        (
            "missing",
            "false",
            ["missing train-images-idx3-ubyte.gz", "Put train-images-idx3-ubyte.gz", "Expected checksums"],
        ),
        (
            "truncated-gzip",
            "false",
            ["train-images-idx3-ubyte.gz", "damaged gzip data", "truncated or corrupt", "download it again"],
        ),
        ("truncated-idx", "false", ["train-images-idx3-ubyte.gz", "truncated", "the header says dims"]),
        ("wrong-magic", "false", ["IDX magic number 0x00000801", "expected 0x00000803", "right file"]),
        ("garbage-magic", "false", ["not an IDX file: magic number 0x12345678"]),
        ("count-mismatch", "false", ["holds 251 images but", "holds 256 labels", "same split"]),
        ("checksum", "true", ["checksum mismatch for", "train-images-idx3-ubyte.gz", "expected", "download it again"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_data_file_errors(capsys, tmp_path: Path, how: str, verify: str, words: list[str]) -> None:
    data = fake_mnist(tmp_path / "data")
    if how != "checksum":  # the undamaged synthetic files fail the real MNIST checksums by themselves
        _damage(data, how)
    code, _, err = train_mnist(capsys, data, tmp_path / "run", f"data.verify={verify}")
    assert_error(code, err, *words)
    assert not (tmp_path / "run").exists()  # the data is read before the run directory is made


def test_translation_line_count_mismatch(capsys, tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.en").write_text("a cat\nthe dog\na man runs\n", encoding="utf-8")
        (data / f"{split}.de").write_text("eine katze\nder hund\nein mann lauft\n", encoding="utf-8")
    with (data / "train.en").open("a", encoding="utf-8") as handle:
        handle.write("one line too many\n")
    code, _, err = cli(
        capsys,
        "train",
        str(ROOT / "configs" / "translation_multi30k_cpu.yaml"),
        "--set",
        "data.name=parallel",
        f"data.dir={data}",
        "--out",
        str(tmp_path / "run"),
    )
    assert_error(code, err, "different line counts", "train.en has 4 lines", "train.de has 3", "line i of one")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped in epoch 2 (a checkpoint, records after it) that the checkpoint tests damage."""

    def stop(trainer: Trainer) -> None:
        if trainer.epoch == 1 and trainer.batch == 5:
            trainer.request_stop()

    base = tmp_path_factory.mktemp("bad-checkpoints")
    result = train(load_config(None, FAST), base / "run", out=io.StringIO(), callbacks=[stop])
    assert result.interrupted
    return result.run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _other_run_checkpoint(tmp_path: Path, *overrides: str) -> bytes:
    other = train(load_config(None, [*FAST, "train.epochs=1", *overrides]), tmp_path / "other", out=io.StringIO())
    return (other.run_dir / "checkpoint.pt").read_bytes()


@pytest.mark.parametrize(
    "damage,words",
    [
        ("truncated", ["is corrupt or truncated", "cannot be resumed"]),
        ("garbage", ["is corrupt or truncated"]),
        ("foreign", ["is not a chtorch training checkpoint"]),
        ("pickled-code", ["holds Python objects other than tensors", "not written by chtorch"]),
        (
            "other-model",
            [
                "is from another run than",
                "model.hidden: checkpoint [16, 16], config.yaml [32, 32]",
                "another model or sparsity",
            ],
        ),
        ("other-sparsity", ["is from another run than", "sparsity.sparsity: checkpoint 0.8, config.yaml 0.9"]),
        ("other-method", ["is from another run than", "sparsity.method: checkpoint 'dense', config.yaml 'set'"]),
    ],
)
def test_checkpoint_errors_leave_the_run_intact(
    capsys, stopped_run: Path, tmp_path: Path, damage: str, words: list[str]
) -> None:
    run_dir = _copy(stopped_run, tmp_path)
    path = run_dir / "checkpoint.pt"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    elif damage == "pickled-code":
        torch.save({"format": "chtorch-checkpoint", "path": Path("x")}, path)
    else:
        overrides = {
            "other-model": ["model.hidden=[16,16]"],
            "other-sparsity": ["sparsity.sparsity=0.8"],
            "other-method": ["sparsity.method=dense"],
        }[damage]
        path.write_bytes(_other_run_checkpoint(tmp_path, *overrides))  # copied over from another run
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "train", "--resume", str(run_dir))
    assert_error(code, err, *words)
    assert snapshot(run_dir) == before  # metrics.jsonl not truncated, nothing written

    path.write_bytes(good)  # with its own checkpoint back, the run resumes and finishes
    assert resume(run_dir, out=io.StringIO()).finished


def test_resume_refuses_changes_that_alter_the_run(capsys, stopped_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(stopped_run, tmp_path)
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "train", "--resume", str(run_dir), "--set", "optim.lr=0.5")
    assert_error(code, err, "--set optim.lr cannot change on --resume", "Changeable keys", "start a new run")
    assert snapshot(run_dir) == before


def test_missing_checkpoint(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "train", "--resume", str(tmp_path))
    assert_error(code, err, "no checkpoint at", "not finished an epoch")


def test_checkpoint_of_a_damaged_run_directory_config(capsys, stopped_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(stopped_run, tmp_path)
    (run_dir / "config.yaml").write_text("run: [unclosed\n", encoding="utf-8")
    code, _, err = cli(capsys, "train", "--resume", str(run_dir))
    assert_error(code, err, "config.yaml is unreadable", "move config.yaml away")


def test_lost_metrics_log_warns_and_the_run_goes_on(capsys, stopped_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(stopped_run, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    code, _, err = cli(capsys, "train", "--resume", str(run_dir), "--quiet")
    assert code == 0, err
    assert "chtorch: warning:" in err and "shorter (0 bytes) than the checkpoint expects" in err
    assert [r["epoch"] for r in read_metrics(run_dir) if r["kind"] == "epoch"] == [2]  # appended from there


# ----------------------------------------------------------------------------- NaN loss


def test_nan_loss_stops_after_max_nonfinite_and_the_directory_stays_usable(capsys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys, "train", "--set", *FAST, "optim.lr=1e6", "train.max_nonfinite=2", "--out", str(run_dir), "--quiet"
    )
    lines = err.strip().splitlines()
    warned = [line for line in lines if line.startswith("chtorch: warning: non-finite loss")]
    assert len(warned) == 3 and "the step and any topology update due are skipped" in warned[0]
    assert_error(
        code, lines[-1] + "\n", "NaN/inf in 3 steps", "train.max_nonfinite=2", "no epoch finished", "Lower optim.lr"
    )
    assert not (run_dir / "checkpoint.pt").exists()
    code, _, err = cli(capsys, "train", "--resume", str(run_dir))
    assert_error(code, err, "no checkpoint")
    # A new run in the same directory starts clean: the failed attempt's records are gone.
    code, _, err = cli(capsys, "train", "--set", *FAST, "--out", str(run_dir), "--quiet")
    assert code == 0, err
    epochs = [r["epoch"] for r in read_metrics(run_dir) if r["kind"] == "epoch"]
    assert epochs == [0, 1, 2]


def test_nan_batch_skips_the_step_and_the_topology_update(tmp_path: Path) -> None:
    """A batch whose loss is NaN changes nothing — no optimizer step, no topology update — and
    training goes on; the update that was due happens at the next finite step."""
    config = load_config(None, [*FAST, "sparsity.update_unit=step", "sparsity.update_interval=5", "train.progress=off"])
    config.run.dir = str(tmp_path / "run")
    trainer = Trainer(config, out=io.StringIO())
    real_step = trainer.recipe.train_step
    poisoned = {"left": 2}

    def train_step(model, batch):
        loss, stats = real_step(model, batch)
        if trainer.step == 4 and poisoned["left"]:  # the batch of step 5, when an update is due
            poisoned["left"] -= 1
            return loss * float("nan"), stats
        return loss, stats

    trainer.recipe.train_step = train_step
    seen = []

    def record(t: Trainer) -> None:
        seen.append(
            (
                t.step,
                t.sparsity.update_count,
                [m.clone() for m in t.sparsity.masks.values()],
                t.model.layers[0].weight.detach().clone(),
            )
        )

    trainer.callbacks.append(record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit()
    assert result.finished and trainer.nonfinite == 2
    assert sum("non-finite loss at step 5" in str(w.message) for w in caught) == 2
    i = next(k for k, s in enumerate(seen) if s[0] == 4)  # step 4 done; the next two batches are NaN
    for j in (i + 1, i + 2):
        assert seen[j][0] == 4 and seen[j][1] == seen[i][1]  # no step, no update
        assert all(torch.equal(a, b) for a, b in zip(seen[j][2], seen[i][2]))  # masks unchanged
        assert torch.equal(seen[j][3], seen[i][3])  # weights unchanged: nothing NaN got in
    assert seen[i + 3][0] == 5 and seen[i + 3][1] == seen[i][1] + 1  # the postponed update
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# ----------------------------------------------------------------------------- fuzzing the model settings


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hidden=st.lists(st.integers(-3, 40), min_size=0, max_size=3),
    dropout=st.floats(-0.5, 1.5, allow_nan=False),
    sparsity=st.floats(-0.5, 1.5, allow_nan=False),
    batch=st.integers(-2, 5000),
)
def test_fuzz_settings_give_a_trainer_or_a_config_error(tmp_path: Path, hidden, dropout, sparsity, batch) -> None:
    """Any values of these keys either build a run or raise ConfigError (never another exception)."""
    overrides = [
        f"model.hidden={hidden}",
        f"model.dropout={dropout}",
        f"sparsity.sparsity={sparsity}",
        f"data.batch_size={batch}",
        "sparsity.method=set",
        "train.progress=off",
    ]
    try:
        config = load_config(None, overrides)
        config.run.dir = str(tmp_path / "never-written")
        Trainer(config, out=io.StringIO())
    except ConfigError:
        pass
    assert not (tmp_path / "never-written").exists()  # building a run writes nothing


# ----------------------------------------------------------------------------- fuzzing the text readers
# (the IDX and CIFAR readers and the config loader are fuzzed in test_data_vision.py / test_config.py)

_text_files = st.tuples(
    st.one_of(st.binary(max_size=200), st.text(max_size=80).map(lambda t: t.encode("utf-8"))),
    st.booleans(),  # gzip it
    st.integers(0, 40),  # bytes cut from the end (a truncated file)
)


def _write(path: Path, spec) -> bytes:
    content, compress, cut = spec
    data = gzip.compress(content, mtime=0) if compress else content
    data = data[: max(0, len(data) - cut)]
    path.write_bytes(data)
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_text_files)
def test_fuzz_text_readers_return_text_or_a_data_error(tmp_path: Path, spec) -> None:
    from chtorch.data import DataError
    from chtorch.data.text import read_text
    from chtorch.data.translation import read_lines

    path = tmp_path / "corpus.txt"
    data = _write(path, spec)
    try:
        text = read_text(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(text, str)
        if not data.startswith(b"\x1f\x8b"):
            assert text.encode("utf-8") == data  # plain UTF-8 comes back unchanged
    try:
        lines = read_lines(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert all(isinstance(line, str) and "\n" not in line for line in lines)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    src=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=12), max_size=6),
    tgt=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=12), max_size=6),
    compress=st.booleans(),
)
def test_fuzz_parallel_files_pair_up_or_name_both_line_counts(tmp_path: Path, src, tgt, compress) -> None:
    from chtorch.data import DataError
    from chtorch.data.translation import read_parallel

    for lang, lines in (("en", src), ("de", tgt)):
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        name = f"train.{lang}.gz" if compress else f"train.{lang}"
        for old in tmp_path.glob(f"train.{lang}*"):
            old.unlink()
        (tmp_path / name).write_bytes(gzip.compress(data, mtime=0) if compress else data)
    try:
        pairs = read_parallel(tmp_path, "train")
    except DataError as exc:
        assert len(src) != len(tgt)
        assert f"has {len(src)} lines" in str(exc) and f"has {len(tgt)}" in str(exc)
    else:
        assert len(src) == len(tgt) == len(pairs)
        assert pairs == [(a.strip(), b.strip()) for a, b in zip(src, tgt)]
