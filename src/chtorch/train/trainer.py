"""The reference training loop: one recipe, one optimizer, one sparsity engine, exact resume.

Per step (the three-line integration of ``chtorch.sparsify``; :mod:`chtorch.train.stepping` adds
``train.grad_accum`` micro-batches per step and ``train.precision``)::

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

import itertools
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

import chtorch.recipes.builtin  # noqa: F401  (registers the built-in recipes)
from chtorch.api import sparsify
from chtorch.config import (
    Config,
    ConfigError,
    method_options_for,
    option_defaults_for,
    save_config,
)
from chtorch.dst import LayerSelectionError, infer_couplings, is_dense, merge_overrides, update_limit
from chtorch.recipes.base import Recipe, get_recipe
from chtorch.rng import derive_seed
from chtorch.train import distributed as ddp
from chtorch.train import records
from chtorch.train.checkpoint import (
    CHECKPOINT_NAME,
    remove_stale_temporaries,
    save_checkpoint,
)
from chtorch.train.console import epoch_line
from chtorch.train.lifecycle import RunResult, check_same_run, interrupted_message, nonfinite_error
from chtorch.train.lifecycle import settings_errors as _settings_errors
from chtorch.train.loggers import MetricsLog
from chtorch.train.metrics import read_metrics
from chtorch.train.optim import build_optimizer, build_scheduler
from chtorch.train.preflight import preflight
from chtorch.train.progress import Progress
from chtorch.train.run_state import check_result_files, restore_run, run_state
from chtorch.train.rundir import defer_sigint
from chtorch.train.stepping import Precision, micro_groups, optimizer_step

__all__ = ["Trainer"]


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
        self.out: Any = (out or sys.stdout) if self.is_main else records.NullWriter()
        self.callbacks = list(callbacks)
        self.resume_state = resume_state
        self.device = self.dist.device
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.step = 0  # optimizer steps done
        self.sums: dict[str, Any] = {}
        self.nonfinite = 0
        self.elapsed = 0.0
        # SHA-256 of the recipe's result files at the last checkpoint (None until one is written or read)
        self.result_files: dict[str, str] | None = None
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
            torch.manual_seed(derive_seed(cfg.run.seed, "rank", self.rank))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.precision = Precision(cfg.train.precision, self.device)
        self.grad_accum = cfg.train.grad_accum
        batches = int(self.recipe.steps_per_epoch)  # micro-batches: grad_accum of them per optimizer step
        if self.dist.enabled and not self.recipe.shards_data:
            batches //= self.world_size  # the trainer deals the recipe's batches out round-robin
        self.batches_per_epoch = batches - batches % self.grad_accum  # a last, partial step is dropped
        self.steps_per_epoch = self.batches_per_epoch // self.grad_accum
        if self.steps_per_epoch < 1:
            more = f" for {self.world_size} processes" if self.dist.enabled else ""
            accum = f" and train.grad_accum={self.grad_accum}" if self.grad_accum > 1 else ""
            raise ConfigError(
                f"the training set yields no optimizer step{more}{accum}: lower data.batch_size or raise "
                "data.train_limit",
                "data.batch_size",
            )
        if not self.dist.all_equal(self.steps_per_epoch):
            raise ddp.DistributedError(
                "the ranks have different numbers of steps per epoch; every rank must get a shard "
                "of the same number of batches (a recipe bug: see Recipe.shards_data)"
            )
        self.total_steps = cfg.train.epochs * self.steps_per_epoch

        self.sparsity = None
        interval = t_end = None
        sp = cfg.sparsity
        if not is_dense(sp.method):
            interval = sp.update_interval * (self.steps_per_epoch if sp.update_unit == "epoch" else 1)
            # The config's layers of overrides (options, then method_options[method]) over the
            # recipe's defaults, and the recipe's data-dependent additions; sparsify merges them over
            # the preset (one place). What the user set must be read by the method; the recipe's
            # values go as defaults. The recipe's coupling rule is called by the engine with the
            # layers it selected.
            given = method_options_for(cfg)
            merged = self.recipe.sparsity_options(merge_overrides(option_defaults_for(cfg), given))
            options = {k: v for k, v in merged.items() if k in given}
            defaults = {k: v for k, v in merged.items() if k not in given}
            defaults["couplings"] = self.recipe.couplings
            try:
                self.sparsity = sparsify(
                    self.model,
                    self.optimizer,
                    method=sp.method,
                    sparsity=sp.sparsity,
                    total_steps=self.total_steps,
                    seed=cfg.run.seed,
                    update_interval=interval,
                    layers=sp.layers,
                    exclude=sp.exclude,
                    backend=sp.backend,
                    kernel=sp.kernel,
                    option_defaults=defaults,
                    **options,
                )
            except LayerSelectionError as exc:
                raise ConfigError(f"sparsity.layers / sparsity.exclude: {exc}", "sparsity.layers") from None
            except ValueError as exc:  # OptionError included: a combination the engine refuses for this model
                raise ConfigError(f"sparsity settings do not fit this model: {exc}", "sparsity") from None
            t_end = update_limit(self.sparsity.t_end, self.sparsity.options.final_update)
            self.sparsity.set_grad_scaler(self.precision.scaler)
            self.chains = self.sparsity.couplings or infer_couplings(self.model, self.sparsity.layer_names)
        else:
            self.chains = []
        self.update_interval = interval
        preflight(cfg, self.sparsity, self.steps_per_epoch, self.total_steps, interval)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.optim, self.total_steps, interval, t_end, self.recipe.model_dim()
        )
        self.train_model = self.model  # wrapped in DDP by fit(), after a checkpoint is loaded

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (:func:`chtorch.train.run_state.run_state`; a collective under DDP)."""
        return run_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint into the freshly built run (:func:`chtorch.train.run_state.restore_run`)."""
        restore_run(self, state)

    def save(self) -> Path:
        """Write the checkpoint now (atomically; on rank 0 — under DDP every rank must call this)."""
        state = self.state_dict()
        path = self.run_dir / CHECKPOINT_NAME
        if self.is_main:
            save_checkpoint(state, path)
        return path

    # ------------------------------------------------------------------ records
    def _snapshot(self, name: str) -> None:
        if self.sparsity is not None and self.is_main:
            records.save_snapshot(self.sparsity, self.run_dir, name, self.epoch, self.step)

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
            check_same_run(self.run_dir, self.resume_state)
            check_result_files(self, self.resume_state.get("files"))
            self.result_files = self.resume_state.get("files")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resume_step = self.step if self.resume_state is not None else None
            self.log: MetricsLog | records.NullLog = MetricsLog.for_run(self.run_dir, cfg, resume_step)
        else:
            self.log = records.NullLog()
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
                    **records.topology_state(self.sparsity, self.chains),
                    "layers": records.layer_state(self.sparsity),
                }
            )
        self.train_model = ddp.wrap_model(self.model, self.dist)

        handler_installed = False
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            handler_installed = True
        progress = Progress(
            cfg.train.progress if self.is_main else "off", self.total_steps, self.step, cfg.train.epochs, self.out
        )
        interrupted = False
        record: dict[str, Any] = {}
        try:
            if self.epoch >= cfg.train.epochs:
                progress.message(
                    f"chtorch: {self.run_dir} already finished {self.epoch}/{cfg.train.epochs} epochs; nothing to train"
                )
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
            with defer_sigint(self.out):  # a second Ctrl-C must not cut this save short
                self.save()
            self.log.close()
            message = interrupted_message(
                self.run_dir,
                self.epoch,
                cfg.train.epochs,
                self.step,
                self.total_steps,
                self.world_size,
                self.dist.enabled,
            )
            print(message, file=self.out, flush=True)
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
        return itertools.islice(batches, self.rank, (self.batches_per_epoch - start) * w, w)

    def _run_epoch(self, progress: Progress) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t0 = time.perf_counter()
        self.model.train()
        for group in micro_groups(self._batches(epoch, self.batch), self.grad_accum):
            loss, report = optimizer_step(self, group)
            if loss is None and self.nonfinite > cfg.train.max_nonfinite:
                raise nonfinite_error(self.run_dir, self.nonfinite, cfg.train.max_nonfinite)
            self.batch += len(group)
            if report is not None:
                self.log.write(
                    records.update_record(report, epoch, self.sparsity.density() if self.sparsity is not None else 1.0)
                )
            if loss is not None and cfg.train.log_every and self.step % cfg.train.log_every == 0:
                self.log.write(records.step_record(epoch, self.step, float(loss.detach()), self.lr_used))
            postfix = None
            if progress.bar is not None and (self.batch % 10 == 0 or self.batch == self.batches_per_epoch):
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
            check_result_files(self, self.result_files)  # the kept best model may decide the test score
            record.update(self.recipe.evaluate(self.model))  # the whole test set, on rank 0
        record.update(records.topology_state(self.sparsity, self.chains))
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        record["seconds"] = seconds
        record["layers"] = records.layer_state(self.sparsity)
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
        summary = records.run_summary(self, record, finished)
        return RunResult(
            self.run_dir, record, finished, interrupted, self.epoch, self.step, self.recipe.primary_metric, summary
        )

    def _finish(self) -> RunResult:
        cfg = self.config
        if not self.is_main:
            record = self.dist.broadcast(None)  # rank 0's last record, once its files are written
            return self._result(record or {}, finished=True, interrupted=False)
        rows = [r for r in read_metrics(self.run_dir) if r.get("kind") == "epoch"]
        record = rows[-1] if rows else {}
        result = self._result(record, finished=True, interrupted=False)
        records.write_outputs(
            self.run_dir, result.summary, plots=cfg.train.plots, report=cfg.train.report, out=self.out
        )
        if cfg.train.progress != "off":
            self.print_summary(result)
        self.dist.broadcast(record)
        return result

    def print_summary(self, result: RunResult) -> None:
        cfg = self.config
        line = records.summary_line(
            cfg.run.name, cfg.sparsity.method, result.record, result.primary_metric, result.epochs, self.elapsed
        )
        print(line, file=self.out)
        if self.sparsity is not None:
            print(self.sparsity.summary(), file=self.out)
        print(f"run directory: {self.run_dir}", file=self.out, flush=True)
