"""The reference training loop: one recipe, one optimizer, one sparsity engine, exact resume.

Per step (the three-line integration of ``chtorch.sparsify``)::

    loss.backward(); optimizer.step(); sparsity.step(); scheduler.step(); optimizer.zero_grad()

Per epoch: evaluation (every ``train.eval_every`` epochs and after the last), one ``"epoch"`` record
in ``metrics.jsonl`` (metrics, density, active neurons, per-layer state), a topology snapshot, and an
atomic checkpoint. Ctrl-C stops at the next step boundary, saves a checkpoint and prints the resume
command; ``--resume`` continues bit-identically (same weights, masks, optimizer state, LR, data
order and RNG states as an uninterrupted run).

Under ``torchrun`` (see :mod:`chtorch.train.distributed`) the model is wrapped in
``DistributedDataParallel``, each rank trains on its own shard of every epoch (recipes that set
:attr:`~chtorch.recipes.base.Recipe.shards_data` shard themselves; for the others the trainer deals
the batches out round-robin), the training metrics are summed over ranks, and only rank 0 evaluates
and writes the run directory. Checkpoints hold the unwrapped model and every rank's RNG state and
running sums, so a resume with the same number of processes continues exactly.

MLP recipes update the topology once per epoch, as the paper (Zhang et al., NeurIPS 2025,
arXiv:2501.19107, Table 4): with ``sparsity.update_unit: epoch`` the engine's interval is
``update_interval × steps_per_epoch`` optimizer steps and ``total_steps = epochs × steps_per_epoch``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from chtorch.config import (
    DENSE,
    Config,
    ConfigError,
    build_config,
    config_to_dict,
    method_options_for,
    resolve_sparsity_options,
    save_config,
)
from chtorch.dst.percolation import infer_couplings
from chtorch.recipes.base import Recipe, get_recipe
from chtorch.train import distributed as ddp
from chtorch.train.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from chtorch.train.console import epoch_line
from chtorch.train.metrics import MetricsLog, active_neuron_count, read_metrics, save_topology
from chtorch.train.optim import build_optimizer, build_scheduler
from chtorch.train.progress import Progress, format_duration

__all__ = ["Trainer", "RunResult", "TrainingError", "train", "resume", "new_run_dir", "RESUME_OVERRIDABLE"]

#: Keys that ``--resume`` may change: they do not affect what is computed.
RESUME_OVERRIDABLE = frozenset(
    {
        "run.device",
        "run.threads",
        "run.loggers",
        "data.dir",
        "data.download",
        "data.verify",
        "data.eval_batch_size",
        "train.progress",
        "train.plots",
        "train.report",
        "train.tensorboard",
        "train.checkpoint",
        "train.max_nonfinite",
    }
)

SUMMARY_NAME = "summary.json"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


@dataclasses.dataclass
class RunResult:
    """What a run produced: its directory, the last epoch's record, and whether it completed."""

    run_dir: Path
    record: dict[str, Any]
    finished: bool
    interrupted: bool
    epochs: int
    steps: int
    primary_metric: str
    summary: dict[str, Any]

    @property
    def value(self) -> float | None:
        return self.record.get(self.primary_metric)


def new_run_dir(config: Config, base: str | os.PathLike[str] = "runs") -> Path:
    """``base/<name>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... when taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{config.run.name}-{stamp}"
    n = 2
    while path.exists():
        path = Path(base) / f"{config.run.name}-{stamp}-{n}"
        n += 1
    return path


class _NullWriter:
    """Where the output of ranks other than 0 goes."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _NullLog:
    """The metrics log of ranks other than 0: they write nothing."""

    offset = 0

    def write(self, record: Any) -> None:
        pass

    def truncate(self, offset: int) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _settings_errors(section: str) -> Iterator[None]:
    """A ValueError from building the data or model is a setting the schema could not check (e.g.
    ``model.hidden=[32, -4]``): report it as a :class:`ConfigError` of ``section``. Data-file errors
    keep their own type and message."""
    from chtorch.data import DataError

    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"the {section} settings ({section}.* in the config) do not work: {exc}", section) from None


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


class Trainer:
    """Builds a run from a :class:`Config` and trains it (see the module docstring).

    Args:
        config: the resolved configuration (``config.run.dir`` must be set).
        resume_state: a loaded checkpoint to continue from (see :func:`resume`).
        out: where epoch lines and the summary go (rank 0 only; other ranks print nothing).
        callbacks: called as ``callback(trainer)`` after every optimizer step (tests, custom logs),
            on every rank.

    Under ``torchrun`` the process group is joined here (:func:`chtorch.train.distributed.init_distributed`);
    :attr:`model` is always the plain module, :attr:`train_model` the ``DistributedDataParallel``
    wrapper that the training steps run through (the same module for one process).
    """

    def __init__(
        self,
        config: Config,
        *,
        resume_state: dict[str, Any] | None = None,
        out: TextIO | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        if config.run.dir is None:
            raise ValueError("config.run.dir must be set (use chtorch.train.train, which picks one)")
        self.config = config
        self.run_dir = Path(config.run.dir)
        self.dist = ddp.init_distributed(config.run.device)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self.out: Any = (out or sys.stdout) if self.is_main else _NullWriter()
        self.callbacks = list(callbacks)
        self.resume_state = resume_state
        self.device = self.dist.device
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.step = 0  # optimizer steps done
        self.sums: dict[str, Any] = {}
        self.nonfinite = 0
        self.elapsed = 0.0
        self.lr_used = math.nan  # the LR of the last optimizer step (set by the loop; see _run_epoch)
        self._stop_requested = False
        self._threads = torch.get_num_threads()  # restored after the run: the setting is process-wide
        try:
            self._setup()
        except BaseException:
            torch.set_num_threads(self._threads)
            raise

    # ------------------------------------------------------------------ construction
    def _setup(self) -> None:
        cfg = self.config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        # The trainer is the application: it seeds the global RNGs (model init, dropout). The library
        # core never uses them; its choices come from private generators.
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % (2**32))
        random.seed(cfg.run.seed)

        self.recipe: Recipe = get_recipe(cfg.run.recipe)(cfg, self.device)
        self.recipe.set_distributed(self.rank, self.world_size)
        # Rank 0 prepares the data first (a download, a tokenizer cache), then the others read it:
        # no two processes write the same file.
        if not self.is_main:
            self.dist.barrier()
        with _settings_errors("data"):
            self.recipe.setup()
        if self.is_main:
            self.dist.barrier()
        with _settings_errors("model"):
            self.model = self.recipe.build_model()  # identical on every rank: same seed (DDP also broadcasts it)
        if self.dist.enabled:
            # Dropout may differ per rank (it is per-sample noise); the topology never uses this RNG.
            from chtorch.rng import derive_seed

            torch.manual_seed(derive_seed(cfg.run.seed, "rank", self.rank))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        spe = int(self.recipe.steps_per_epoch)
        if self.dist.enabled and not self.recipe.shards_data:
            spe //= self.world_size  # the trainer deals the recipe's batches out round-robin
        self.steps_per_epoch = spe
        if self.steps_per_epoch < 1:
            more = f" for {self.world_size} processes" if self.dist.enabled else ""
            raise ConfigError(f"the training set yields no batch{more}: lower data.batch_size or raise data.train_limit", "data.batch_size")
        if not self.dist.all_equal(self.steps_per_epoch):
            raise ddp.DistributedError(
                "the ranks have different numbers of steps per epoch; every rank must get a shard "
                "of the same number of batches (a recipe bug: see Recipe.shards_data)"
            )
        self.total_steps = cfg.train.epochs * self.steps_per_epoch

        self.sparsity = None
        interval = t_end = None
        sp = cfg.sparsity
        if sp.method != DENSE:
            from chtorch.dst.engine import DynamicSparsity
            from chtorch.dst.scope import select_layers

            interval = sp.update_interval * (self.steps_per_epoch if sp.update_unit == "epoch" else 1)
            try:
                names = select_layers(self.model, sp.layers, sp.exclude)
            except ValueError as exc:
                raise ConfigError(f"sparsity.layers / sparsity.exclude: {exc}", "sparsity.layers") from None
            options = self.recipe.sparsity_options(method_options_for(cfg))
            couplings = self.recipe.couplings(self.model, names)
            if couplings is not None:
                options["couplings"] = couplings
            options["update_interval"] = interval
            try:
                self.sparsity = DynamicSparsity(
                    self.model,
                    self.optimizer,
                    sparsity=sp.sparsity,
                    total_steps=self.total_steps,
                    options=resolve_sparsity_options(sp.method, options),
                    seed=cfg.run.seed,
                    layers=names,
                    method=sp.method,
                    backend=sp.backend,
                )
            except ValueError as exc:  # OptionError included: a combination the engine refuses for this model
                raise ConfigError(f"sparsity settings do not fit this model: {exc}", "sparsity") from None
            t_end = self.sparsity.t_end
            self.chains = self.sparsity.couplings or infer_couplings(self.model, names)
        else:
            self.chains = []
        self.update_interval = interval
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps, interval, t_end, self.recipe.model_dim())
        self.train_model = self.model  # wrapped in DDP by fit(), after a checkpoint is loaded

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
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
            "elapsed": self.elapsed,
            "versions": {"torch": str(torch.__version__), "chtorch": _chtorch_version()},
            "world_size": self.world_size,
        }
        if self.dist.enabled:
            state["ranks"] = per_rank
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint into the freshly built run; a checkpoint from another model or
        sparsity is refused before anything changes."""
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise CheckpointError(
                f"this run was trained by {saved_world} process(es) and is being resumed by {self.world_size}: resume it "
                f"with the same number — {_launch_hint(saved_world)} — since the number of processes decides the data "
                "shards, the steps per epoch and the sparsity schedule"
            )
        if (state["sparsity"] is None) != (self.sparsity is None):
            raise CheckpointError("the checkpoint's sparsity (dense vs sparse) does not match this run's config")
        try:
            self.model.load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint does not fit this model (another model or sparsity config?): {exc}") from None
        if self.sparsity is not None:
            try:
                self.sparsity.load_state_dict(state["sparsity"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"the checkpoint's sparsity state does not fit this run: {exc}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        mine = state["ranks"][self.rank] if self.dist.enabled else {"rng": state["rng"], "sums": state["sums"]}
        set_rng_state(mine["rng"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.sums = dict(mine["sums"])
        self.nonfinite = int(state["nonfinite"])
        self.elapsed = float(state["elapsed"])

    def save(self) -> Path:
        """Write the checkpoint now (atomically; on rank 0 — under DDP every rank must call this)."""
        state = self.state_dict()
        path = self.run_dir / CHECKPOINT_NAME
        if self.is_main:
            save_checkpoint(state, path)
        return path

    # ------------------------------------------------------------------ records
    def layer_state(self) -> dict[str, dict[str, Any]]:
        if self.sparsity is None:
            return {}
        out = {}
        for name, _module, mask in self.sparsity.iter_layers():
            a_in, a_out = self.sparsity.active_neurons()[name]
            links = int(mask.sum())
            out[name] = {
                "links": links,
                "density": links / mask.numel(),
                "active_in": a_in,
                "active_out": a_out,
                "shape": [int(mask.shape[0]), int(mask.shape[1])],
            }
        return out

    def topology_state(self) -> dict[str, Any]:
        if self.sparsity is None:
            return {"density": 1.0, "active_neurons": 1.0}
        active, total = active_neuron_count(self.sparsity.masks, self.chains)
        return {
            "density": self.sparsity.density(),
            "active_neurons": active / max(1, total),
            "itop": self.sparsity.itop_rate(),
            "updates": self.sparsity.update_count,
        }

    def _update_record(self, report: Any, epoch: int) -> dict[str, Any]:
        return {
            "kind": "update",
            "epoch": epoch + 1,
            "step": report.step,
            "update": report.update_index,
            "sparsity": report.sparsity,
            "zeta": report.zeta,
            "temperature": report.temperature,
            "removed": report.removed,
            "regrown": report.regrown,
            "overlap": report.overlap_rate,
            "itop": report.itop_rate,
            "skipped": report.skipped,
            "seconds": report.seconds,
            "density": self.sparsity.density() if self.sparsity is not None else 1.0,
            "layers": {
                name: {
                    "links": l.n_links,
                    "pruned": l.pruned,
                    "removed": l.removed,
                    "percolated": l.percolated,
                    "regrown": l.regrown,
                    "overlap": l.overlap_rate,
                    "active_in": l.active_in,
                    "active_out": l.active_out,
                    "frozen": l.frozen,
                }
                for name, l in report.layers.items()
            },
        }

    def _snapshot(self, name: str) -> None:
        if self.sparsity is not None and self.is_main:
            save_topology(self.sparsity.masks, self.run_dir / "topology" / f"{name}.npz", epoch=self.epoch, step=self.step)

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.is_main:
            print(
                "\nchtorch: stopping after this step and saving a checkpoint (Ctrl-C again aborts without saving)",
                file=sys.stderr,
                flush=True,
            )

    def request_stop(self) -> None:
        """Stop at the next step boundary, save a checkpoint and return (as Ctrl-C does). Under DDP
        a request on any one rank stops every rank at the same step."""
        self._stop_requested = True

    def fit(self) -> RunResult:
        """Train to ``train.epochs`` (or until stopped) and return the :class:`RunResult`."""
        cfg = self.config
        if self.resume_state is not None:
            # A checkpoint that does not fit, or loads but belongs to another run (copied over), is
            # refused before anything in the run directory changes.
            self.load_state_dict(self.resume_state)
            _check_same_run(self.run_dir, self.resume_state)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resume_step = self.step if self.resume_state is not None else None
            self.log: MetricsLog | _NullLog = MetricsLog.for_run(self.run_dir, cfg, resume_step)
        else:
            self.log = _NullLog()
        if self.resume_state is not None:
            if self.is_main:
                try:
                    self.log.truncate(int(self.resume_state["metrics_offset"]))
                except ValueError as exc:  # the log was edited or lost: keep training, say what is missing
                    warnings.warn(
                        f"chtorch: {exc}; the records before the checkpoint are incomplete and new ones are appended",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                remove_stale_temporaries(self.run_dir / CHECKPOINT_NAME)  # left by a writer that was killed
            self.resume_state = None
        elif self.is_main:
            # A fresh run owns the directory: records of an earlier attempt that never reached a
            # checkpoint (a crash, a NaN stop in epoch 1) must not precede this run's.
            self.log.truncate(0)
            save_config(cfg, self.run_dir / "config.yaml")
            self._snapshot("init")
            self.log.write(
                {
                    "kind": "epoch",
                    "epoch": 0,
                    "step": 0,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **self.topology_state(),
                    "layers": self.layer_state(),
                }
            )
        self.train_model = ddp.wrap_model(self.model, self.dist)

        handler_installed = False
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            handler_installed = True
        progress = Progress(cfg.train.progress if self.is_main else "off", self.total_steps, self.step, cfg.train.epochs, self.out)
        interrupted = False
        record: dict[str, Any] = {}
        try:
            if self.epoch >= cfg.train.epochs:
                progress.message(f"chtorch: {self.run_dir} already finished {self.epoch}/{cfg.train.epochs} epochs; nothing to train")
            while self.epoch < cfg.train.epochs:
                record = self._run_epoch(progress)
                if self._stop_requested and self.epoch < cfg.train.epochs:
                    interrupted = True
                    break
        finally:
            progress.close()
            if handler_installed:
                signal.signal(signal.SIGINT, previous_handler)
            torch.set_num_threads(self._threads)
        if interrupted:
            self.save()
            self.log.close()
            resume_cmd = f"chtorch train --resume {self.run_dir}"
            if self.dist.enabled:
                resume_cmd = f"torchrun --nproc_per_node {self.world_size} -m chtorch.cli train --resume {self.run_dir}"
            print(
                f"chtorch: interrupted at epoch {self.epoch + 1}/{cfg.train.epochs}, step {self.step}/{self.total_steps}; "
                f"checkpoint saved.\nresume with:  {resume_cmd}",
                file=self.out,
                flush=True,
            )
            return self._result(record, finished=False, interrupted=True)
        self.log.close()
        return self._finish()

    def _batches(self, epoch: int, start: int) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from its batch ``start`` on. A recipe that does not shard
        its data itself has its batches dealt out round-robin: global batch ``i`` goes to rank
        ``i mod world_size`` (each rank generates and skips the others' batches)."""
        if not self.dist.enabled or self.recipe.shards_data:
            return iter(self.recipe.train_batches(epoch, start))
        w = self.world_size
        batches = self.recipe.train_batches(epoch, start * w)
        return itertools.islice(batches, self.rank, (self.steps_per_epoch - start) * w, w)

    def _run_epoch(self, progress: Progress) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t0 = time.perf_counter()
        self.model.train()
        logged_step = -1
        for batch in self._batches(epoch, self.batch):
            loss, stats = self.recipe.train_step(self.train_model, batch)
            report = None
            # Under DDP a step is skipped on every rank when the loss is not finite on one of them:
            # a rank that skipped backward() would leave the others waiting in DDP's all-reduce.
            if self.dist.any(not bool(torch.isfinite(loss.detach()))):
                self.nonfinite += 1
                if self.is_main:
                    warnings.warn(
                        f"chtorch: non-finite loss at step {self.step + 1}; the step and any topology update "
                        f"due are skipped ({self.nonfinite}/{cfg.train.max_nonfinite})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                self.optimizer.zero_grad(set_to_none=True)
                if self.nonfinite > cfg.train.max_nonfinite:
                    if (self.run_dir / CHECKPOINT_NAME).is_file():
                        kept = f"the checkpoint in {self.run_dir} (the last finished epoch) is intact"
                    else:
                        kept = f"no epoch finished, so {self.run_dir} holds no checkpoint"
                    raise TrainingError(
                        f"the loss was NaN/inf in {self.nonfinite} steps (train.max_nonfinite={cfg.train.max_nonfinite}); "
                        f"training stopped and {kept}. Lower optim.lr or set optim.grad_clip and start a new run"
                    )
            else:
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                # The LR this step trains with (the scheduler moves it after the step; just after a
                # topology update that is the first value of a re-warm-up): step and epoch records report this one.
                self.lr_used = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                if self.sparsity is not None:
                    report = self.sparsity.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                for key, value in stats.items():
                    self.sums[key] = self.sums.get(key, 0.0) + value
            self.batch += 1
            if report is not None:
                self.log.write(self._update_record(report, epoch))
            if cfg.train.log_every and self.step % cfg.train.log_every == 0 and self.step != logged_step:
                logged_step = self.step  # a skipped (non-finite) step does not log the same step twice
                self.log.write({"kind": "step", "epoch": epoch + 1, "step": self.step, "loss": float(loss.detach()), "lr": self.lr_used})
            postfix = None
            if progress.bar is not None and (self.batch % 10 == 0 or self.batch == self.steps_per_epoch):
                train = self.recipe.summarize(self.sums)
                postfix = {k.replace("train_", ""): f"{v:.4f}" for k, v in train.items()}
                if self.sparsity is not None:
                    postfix["density"] = f"{self.sparsity.density():.4f}"
            progress.step(epoch, postfix)
            for callback in self.callbacks:
                callback(self)
            if self.dist.enabled:
                self._stop_requested = self.dist.any(self._stop_requested)  # every rank stops at the same step
            if self._stop_requested:
                self.elapsed += time.perf_counter() - t0
                return {}
        # ---- end of epoch
        self.epoch += 1
        self.batch = 0
        record: dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "lr": self.lr_used}
        record.update(self.recipe.summarize(self.dist.sum(self.sums) if self.dist.enabled else self.sums))
        if self.is_main and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs):
            record.update(self.recipe.evaluate(self.model))  # the whole test set, on rank 0
        record.update(self.topology_state())
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        record["seconds"] = seconds
        record["layers"] = self.layer_state()
        self.log.write(record)
        self.sums = {}
        if self.sparsity is not None:
            self._snapshot("final")
            if cfg.train.snapshot_every and self.epoch % cfg.train.snapshot_every == 0:
                self._snapshot(f"epoch_{self.epoch:04d}")
        if cfg.train.checkpoint:
            self.save()
        eta = progress.eta(self.step)
        progress.line(epoch_line(record, cfg.train.epochs, eta))
        return record

    # ------------------------------------------------------------------ the end
    def _result(self, record: dict[str, Any], finished: bool, interrupted: bool) -> RunResult:
        summary = self._summary(record, finished)
        return RunResult(self.run_dir, record, finished, interrupted, self.epoch, self.step, self.recipe.primary_metric, summary)

    def _summary(self, record: dict[str, Any], finished: bool) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": cfg.run.name,
            "recipe": cfg.run.recipe,
            "method": cfg.sparsity.method,
            "seed": cfg.run.seed,
            "sparsity": 0.0 if self.sparsity is None else cfg.sparsity.sparsity,
            "finished": finished,
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": self.elapsed,
            "primary_metric": self.recipe.primary_metric,
            "higher_is_better": self.recipe.higher_is_better,
            "final": {k: v for k, v in record.items() if k not in ("layers", "kind")},
            "layers": record.get("layers", {}),
            "data": self.recipe.describe(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "versions": {"torch": str(torch.__version__), "chtorch": _chtorch_version()},
        }

    def _finish(self) -> RunResult:
        cfg = self.config
        if not self.is_main:
            record = self.dist.broadcast(None)  # rank 0's last record, once its files are written
            return self._result(record or {}, finished=True, interrupted=False)
        records = [r for r in read_metrics(self.run_dir) if r.get("kind") == "epoch"]
        record = records[-1] if records else {}
        result = self._result(record, finished=True, interrupted=False)
        path = self.run_dir / SUMMARY_NAME
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result.summary, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)
        if cfg.train.plots:
            from chtorch.train.plots import make_plots

            try:
                make_plots(self.run_dir)
            except ImportError as exc:
                print(f"chtorch: no plots ({exc})", file=self.out)
        if cfg.train.report:
            from chtorch.train.run_report import write_report

            write_report(self.run_dir)
        if cfg.train.progress != "off":
            self.print_summary(result)
        self.dist.broadcast(record)
        return result

    def print_summary(self, result: RunResult) -> None:
        rec = result.record
        metric = result.primary_metric
        value = rec.get(metric)
        shown = _percent(value) if "accuracy" in metric else ("-" if value is None else f"{value:.4f}")
        density = rec.get("density", 1.0)
        line = (
            f"chtorch: finished {self.config.run.name} ({self.config.sparsity.method}): "
            f"{metric.replace('_', ' ')} {shown}, density {density:.4f} (sparsity {100 * (1 - density):.1f}%), "
            f"active neurons {100 * rec.get('active_neurons', 1.0):.1f}% "
            f"[{result.epochs} epochs, {format_duration(self.elapsed)}]"
        )
        print(line, file=self.out)
        if self.sparsity is not None:
            print(self.sparsity.summary(), file=self.out)
        print(f"run directory: {self.run_dir}", file=self.out, flush=True)


def _launch_hint(world_size: int) -> str:
    if world_size <= 1:
        return "a plain `chtorch train --resume RUN_DIR`, without torchrun"
    return f"`torchrun --nproc_per_node {world_size} -m chtorch.cli train --resume RUN_DIR` (over all nodes: {world_size} processes)"


def _chtorch_version() -> str:
    try:
        import chtorch

        return chtorch.__version__
    except Exception:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Entry points


def train(
    config: Config,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    out: TextIO | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
) -> RunResult:
    """Train ``config`` in ``run_dir`` (default ``config.run.dir``, else ``runs/<name>-<time>``).
    A directory that already holds a checkpoint is refused: resume it or pick another."""
    config = dataclasses.replace(config, run=dataclasses.replace(config.run))
    ctx = ddp.init_distributed(config.run.device)
    decision: tuple[str, str | None] | None = None
    if ctx.is_main:  # rank 0 names the directory (a time stamp) and the others follow
        target = Path(run_dir) if run_dir is not None else (Path(config.run.dir) if config.run.dir else new_run_dir(config))
        error = None
        if (target / CHECKPOINT_NAME).exists():
            error = (
                f"{target} already holds a run (checkpoint.pt); continue it with `chtorch train --resume {target}` "
                "or choose another --out directory"
            )
        decision = (str(target.resolve()), error)
    target_name, error = ctx.broadcast(decision)
    if error is not None:
        raise ConfigError(error, "run.dir")
    config.run.dir = target_name
    return Trainer(config, out=out, callbacks=callbacks).fit()


def resume(
    run_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    out: TextIO | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint with the configuration it was started
    with. ``overrides`` may change only :data:`RESUME_OVERRIDABLE` keys (device, data location,
    logging), so the continuation computes exactly what the uninterrupted run would have."""
    from chtorch.config import apply_overrides, parse_override

    path = Path(run_dir)
    run_dir = path if path.is_dir() else path.parent
    state = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    for text in overrides:
        parts, _ = parse_override(text)
        key = ".".join(parts)
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(
                f"--set {key} cannot change on --resume: a resumed run continues its saved configuration exactly. "
                f"Changeable keys: {', '.join(sorted(RESUME_OVERRIDABLE))}; to change anything else start a new run "
                f"(e.g. chtorch train {run_dir / 'config.yaml'} --set {text})",
                key,
            )
    try:
        config = build_config(apply_overrides(state["config"], overrides))
    except ConfigError as exc:
        raise CheckpointError(f"the configuration stored in {run_dir} is no longer valid: {exc}") from None
    config.run.dir = str(run_dir.resolve())
    return Trainer(config, resume_state=state, out=out, callbacks=callbacks).fit()


def _flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and name.count(".") < 1:  # sections; option dicts compare whole
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _check_same_run(run_dir: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint that belongs to another run than ``run_dir/config.yaml`` (e.g. a
    checkpoint.pt copied over from another run): resuming it would continue that other run — another
    model or sparsity — and cut this run's metrics log at that run's offset."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        import yaml

        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # an unreadable config.yaml is not what a resume needs; say so
        raise CheckpointError(
            f"{path} is unreadable ({type(exc).__name__}: {exc}); the checkpoint holds the "
            "configuration, so move config.yaml away and resume again"
        ) from None
    if not isinstance(saved, dict):
        return
    a, b = _flatten(state.get("config", {})), _flatten(saved)
    ignore = RESUME_OVERRIDABLE | {"run.dir"}
    differ = sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"{k}: checkpoint {a.get(k)!r}, config.yaml {b.get(k)!r}" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise CheckpointError(
            f"{run_dir / CHECKPOINT_NAME} is from another run than {path} ({shown}{more}): it holds another model or "
            "sparsity. Put back this run's own checkpoint, or resume the run the checkpoint came from in its own directory"
        )
