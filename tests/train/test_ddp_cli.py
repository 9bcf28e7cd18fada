"""``torchrun`` end to end: two CPU processes (gloo) train the digits recipe through the ``chtorch`` command.

Each run is launched with ``torchrun --standalone`` (a c10d rendezvous on a free port picked at run
time, so parallel test runs do not collide). Most runs go through a small launcher written at test
time: it runs the ``chtorch.cli`` module as ``python -m chtorch.cli`` does (``runpy``), with a hook
that makes every rank dump its final state (rank 1 writes nothing in the run directory by design) and
optionally asks one rank to stop at a given step. The resume runs the installed ``chtorch`` script.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from chtorch.train.checkpoint import load_checkpoint
from helpers import TINY_RUN

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
    pytest.mark.skipif(sys.platform == "win32", reason="torchrun on Windows is not supported by these tests"),
]

TINY = [
    *TINY_RUN,
    "model.dropout=0.1",
    "train.epochs=3",
    "run.device=cpu",
    "sparsity.update_unit=step",
    "sparsity.update_interval=4",
    "train.progress=lines",
]

LAUNCHER = r'''
"""Test launcher: the chtorch command, plus a dump of each rank's final state and an optional stop."""
import os
import runpy
import sys

import torch

from chtorch.train import trainer as T

_fit = T.Trainer.fit


def fit(self):
    stop_at = int(os.environ.get("CHT_TEST_STOP_AT", "0"))
    stop_rank = int(os.environ.get("CHT_TEST_STOP_RANK", "0"))
    if stop_at:
        def stop(trainer):
            if trainer.step == stop_at and trainer.rank == stop_rank:
                trainer.request_stop()  # on one rank only: the ranks must agree to stop together
        self.callbacks.append(stop)
    result = _fit(self)
    torch.save({
        "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
        "updates": self.sparsity.update_count, "interrupted": result.interrupted,
        "wrapper": type(self.train_model).__name__, "world_size": self.world_size,
    }, os.path.join(os.environ["CHT_TEST_DUMP"], f"rank{self.rank}.pt"))
    return result


T.Trainer.fit = fit
try:
    runpy.run_module("chtorch.cli", run_name="__main__", alter_sys=True)  # = python -m chtorch.cli ARGS
except SystemExit as exit:
    sys.exit(0 if exit.code == 130 else exit.code)  # an agreed stop is the expected outcome here
'''


def torchrun(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("RANK", None)
    full_env.pop("WORLD_SIZE", None)
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def launch(tmp_path: Path, name: str, *cli_args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    script = tmp_path / "launch.py"
    if not script.exists():
        script.write_text(LAUNCHER, encoding="utf-8")
    dump = tmp_path / f"dump-{name}"
    dump.mkdir()
    result = torchrun([str(script), *cli_args], env={"CHT_TEST_DUMP": str(dump), **env}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, dump


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for key, value in a["state"][index].items():
            other = b["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)


@pytest.fixture(scope="module")
def chts_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    result, dump = launch(tmp, "chts", "train", "--set", *TINY, "sparsity.method=chts", "--out", str(tmp / "run"))
    return result, dump, tmp / "run"


def _check_agreement(dump: Path, run_dir: Path, stdout: str) -> None:
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert r0["wrapper"] == r1["wrapper"] == "DistributedDataParallel" and r0["world_size"] == 2
    assert r0["updates"] == r1["updates"] >= 3  # several topology updates happened
    masks = [k for k in r0["model"] if k.endswith("weight_mask")]
    assert masks == ["layers.0.weight_mask", "layers.1.weight_mask"]
    assert_same_state(r0["model"], r1["model"])  # masks and weights, bit for bit
    assert_same_optimizer(r0["optimizer"], r1["optimizer"])

    # Rank 0's checkpoint holds the unwrapped model (no "module." prefix) and equals its final state.
    state = load_checkpoint(run_dir)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert_same_state(state["model"], r0["model"])

    # The topology moved: regrown links overlap the initial masks only partly.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    assert len(updates) == r0["updates"] and sum(r["regrown"] for r in updates) > 0

    # Each rank trained on its half of every epoch: steps per epoch are those of N/2 samples.
    summary = json.loads((run_dir / "summary.json").read_text())
    per_rank = summary["data"]["train_samples"] // 2
    assert state["step"] == r0["step"] == 3 * math.ceil(per_rank / 64)

    # Only rank 0 wrote and printed: one record per epoch, one line per epoch, no stray files.
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert epochs == [0, 1, 2, 3]
    assert stdout.count("epoch 1/3 |") == 1 and stdout.count("run directory:") == 1
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


def test_ddp_chts_ranks_hold_identical_masks_and_weights(chts_run) -> None:
    result, dump, run_dir = chts_run
    _check_agreement(dump, run_dir, result.stdout)


def test_ddp_rigl_ranks_hold_identical_masks_and_weights(tmp_path: Path) -> None:
    # RigL ranks candidates by the dense gradient: it is averaged over ranks before selection.
    result, dump = launch(
        tmp_path, "rigl", "train", "--set", *TINY, "sparsity.method=rigl", "--out", str(tmp_path / "run")
    )
    _check_agreement(dump, tmp_path / "run", result.stdout)


def test_ddp_resume_continues_exactly(chts_run, tmp_path: Path) -> None:
    """Stop on rank 1 only, mid-epoch 2; resume with the installed ``chtorch`` script under torchrun:
    the result equals the uninterrupted run (weights, masks, optimizer moments)."""
    _, full_dump, full_dir = chts_run
    part_dir = tmp_path / "run"
    _, dump = launch(
        tmp_path,
        "part",
        "train",
        "--set",
        *TINY,
        "sparsity.method=chts",
        "--out",
        str(part_dir),
        CHT_TEST_STOP_AT="15",
        CHT_TEST_STOP_RANK="1",
    )
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert r0["interrupted"] and r1["interrupted"] and r0["step"] == r1["step"] == 15  # both stopped together
    saved = load_checkpoint(part_dir)
    assert saved["step"] == 15 and saved["batch"] > 0  # mid-epoch
    assert_same_state(saved["model"], r1["model"])

    script = shutil.which("chtorch")
    entry = [script] if script is not None else ["-m", "chtorch.cli"]
    result = torchrun([*entry, "train", "--resume", str(part_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.count("epoch 3/3 |") == 1

    done, full = load_checkpoint(part_dir), load_checkpoint(full_dir)
    assert done["finished"] and done["step"] == full["step"]
    assert_same_state(done["model"], full["model"])
    assert_same_state(torch.load(full_dump / "rank1.pt")["model"], done["model"])
    assert_same_optimizer(done["optimizer"], full["optimizer"])
    for a, b in zip(done["ranks"], full["ranks"]):  # every rank's RNG stream continued exactly
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_resume_needs_the_same_process_count(chts_run, capsys) -> None:
    """A 2-process run resumed by one process is refused clearly, and nothing in it changes."""
    _, _, run_dir = chts_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    from chtorch.cli import main

    code = main(["train", "--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "trained by 2 process(es)" in err and "--nproc_per_node 2" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_errors_of_other_ranks_name_the_rank(monkeypatch, capsys, tmp_path: Path) -> None:
    """Under torchrun every rank reports its error (one line each), rank 0's plainly."""
    from chtorch.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = main(["train", "--set", "optim.lrr=1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert (
        code == 2 and err.startswith("chtorch: [rank 1] error: unknown config key 'optim.lrr'") and err.count("\n") == 1
    )
    assert not (tmp_path / "run").exists()


def test_launch_mistakes_are_clear(monkeypatch) -> None:
    from chtorch.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.DistributedError, match="MASTER_ADDR is not set: start the run with torchrun"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(distributed.DistributedError, match="RANK='x' is not an integer"):
        distributed.init_distributed("cpu")
    assert distributed.resolve_device("cpu", 1, 2) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.resolve_device("cuda", 0, 2)


def test_compare_is_refused_under_torchrun(tmp_path: Path, monkeypatch, capsys) -> None:
    from chtorch.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = main(
        ["compare", str(Path(__file__).resolve().parents[2] / "configs" / "digits_chts.yaml"), "--methods", "set"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("chtorch: [rank 1] error: `chtorch compare` runs one process")


@pytest.mark.parametrize("rank", [0, 1])
def test_round_robin_sharding_for_recipes_that_do_not_shard(rank: int) -> None:
    """The trainer's generic mechanism: global batch i goes to rank i mod 2; a resumed epoch
    (start = this rank's batch index) continues with the same batches."""
    from chtorch.train.distributed import DistributedContext
    from chtorch.train.trainer import Trainer

    class Recipe:
        shards_data = False

        def train_batches(self, epoch: int, start: int = 0):
            return iter(range(100 * epoch + start, 100 * epoch + 11))  # 11 global batches per epoch

    trainer = object.__new__(Trainer)  # only the attributes _batches reads
    trainer.dist = DistributedContext(rank=rank, world_size=2)
    trainer.world_size, trainer.rank = 2, rank
    trainer.recipe = Recipe()
    trainer.batches_per_epoch = 11 // 2  # the last, odd batch is left out so both ranks step together
    mine = list(trainer._batches(1, 0))
    assert mine == [100 + i for i in range(rank, 10, 2)]
    assert list(trainer._batches(1, 3)) == mine[3:]
    Recipe.shards_data = True  # a recipe that shards itself is passed through untouched
    assert list(trainer._batches(0, 2)) == list(range(2, 11))


@pytest.mark.slow
def test_ddp_language_model_recipe(tmp_path: Path, data_dir: Path) -> None:
    """A recipe without its own sharding (the LM recipe) under torchrun: ranks agree, steps are halved."""
    lm = [
        str(Path(__file__).resolve().parents[2] / "configs" / "lm_shakespeare_cpu.yaml"),
        "--set",
        f"data.dir={data_dir}",
        "model.d_model=32",
        "model.n_layers=1",
        "model.d_ff=64",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.steps_per_epoch=8",
        "data.eval_tokens=2000",
        "train.epochs=2",
        "sparsity.update_interval=3",
        "train.plots=false",
        "train.report=false",
    ]
    _, dump = launch(tmp_path, "lm", "train", *lm, "--out", str(tmp_path / "run"))
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert r0["step"] == 8 and r0["updates"] == r1["updates"] >= 2
    assert_same_state(r0["model"], r1["model"])
