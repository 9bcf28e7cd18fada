"""What a checkpoint holds of a training run, and how a freshly built run takes it back.

:class:`~chtorch.train.trainer.Trainer` builds the run (recipe, model, optimizer, engine, LR
schedule) from its config; a resume builds it again and restores into it the weights, the engine's
masks and counters, the optimizer and scheduler state, every rank's RNG states and running sums and
the position in the data (epoch, batch, step), so it continues bit-identically. A checkpoint from
another model, sparsity or number of processes is refused before anything changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from chtorch.config import config_to_dict
from chtorch.train.checkpoint import CHECKPOINT_NAME, CheckpointError, check_optimizer_state, rng_state, set_rng_state
from chtorch.train.lifecycle import chtorch_version, launch_hint
from chtorch.train.run_files import result_digests, verify_result_files

if TYPE_CHECKING:
    from chtorch.train.trainer import Trainer

__all__ = ["run_state", "restore_run", "check_result_files", "record_result_files"]


def run_state(self: Trainer) -> dict[str, Any]:
    """Everything a resume needs. Under DDP this is a collective (every rank calls it; rank 0's
    result holds every rank's RNG state and running sums, the other ranks' results do not)."""
    per_rank = self.dist.gather({"rng": rng_state(), "sums": {k: float(v) for k, v in self.sums.items()}})
    state = {
        "epoch": self.epoch,
        "batch": self.batch,
        "step": self.step,
        "finished": self.epoch >= self.config.train.epochs,
        "model": self.model.state_dict(),
        "optimizer": self.optimizer.state_dict(),
        "scheduler": self.scheduler.state_dict(),
        "sparsity": None if self.sparsity is None else self.sparsity.state_dict(),
        "rng": rng_state(),
        "config": config_to_dict(self.config),
        "metrics_offset": self.log.offset,
        "sums": {k: float(v) for k, v in self.sums.items()},
        "nonfinite": self.nonfinite,
        "grad_scaler": self.precision.state_dict(),
        "elapsed": self.elapsed,
        "versions": {"torch": str(torch.__version__), "chtorch": chtorch_version()},
        "world_size": self.world_size,
        "files": record_result_files(self),
    }
    if self.dist.enabled:
        state["ranks"] = per_rank
    return state


def restore_run(self: Trainer, state: dict[str, Any]) -> None:
    """Restore a checkpoint into the freshly built run; a checkpoint from another model or
    sparsity is refused before anything changes."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != self.world_size:
        raise CheckpointError(
            f"this run was trained by {saved_world} process(es) and is being resumed by {self.world_size}: resume it "
            f"with the same number — {launch_hint(saved_world)} — since the number of processes decides the data "
            "shards, the steps per epoch and the sparsity schedule"
        )
    if (state["sparsity"] is None) != (self.sparsity is None):
        raise CheckpointError("the checkpoint's sparsity (dense vs sparse) does not match this run's config")
    try:
        self.model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())  # torch's message spans lines; an error is one line
        raise CheckpointError(
            f"the checkpoint does not fit this model (another model or sparsity config?): {detail}"
        ) from None
    if self.sparsity is not None:
        try:
            self.sparsity.load_state_dict(state["sparsity"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint's sparsity state does not fit this run: {exc}") from None
    try:  # shapes and types torch does not check itself: one line, not a traceback at the first step
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(self.optimizer, self.run_dir / CHECKPOINT_NAME)
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("grad_scaler"))
        mine = state["ranks"][self.rank] if self.dist.enabled else {"rng": state["rng"], "sums": state["sums"]}
        set_rng_state(mine["rng"])
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's optimizer, scheduler or RNG state does not fit this run: {type(exc).__name__}: {exc}"
        ) from None
    self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
    self.sums = dict(mine["sums"])
    self.nonfinite = int(state["nonfinite"])
    self.elapsed = float(state["elapsed"])


def record_result_files(self: Trainer) -> dict[str, str]:
    """The SHA-256 of the recipe's result files now (see :mod:`chtorch.train.run_files`), kept as the
    run's reference until the next checkpoint; empty on ranks other than 0, which write no files."""
    self.result_files = result_digests(self.run_dir, self.recipe.result_files()) if self.is_main else {}
    return self.result_files


def check_result_files(self: Trainer, recorded: object) -> None:
    """Refuse a run whose result files differ from ``recorded`` (a checkpoint's ``files``): on resume
    and before every evaluation, which may score the kept best model."""
    if self.is_main:
        verify_result_files(
            self.run_dir, recorded, self.recipe.result_files(), lambda p: self.recipe.result_file_ahead(p, self.epoch)
        )
