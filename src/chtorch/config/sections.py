"""The sections of a run configuration that every recipe shares, and the :class:`Config` holding them.

A run is six sections: ``run``, ``model``, ``data``, ``optim``, ``sparsity``, ``train``. Four are
fixed (this module); ``model`` and ``data`` are the schemas of the chosen model family and recipe
(see :mod:`chtorch.config.registry`). Defaults follow the paper's MLP setting (Zhang et al.,
NeurIPS 2025, arXiv:2501.19107, Table 4) where the offline demo does not need otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chtorch.config.fields import setting

__all__ = [
    "RunConfig",
    "OptimConfig",
    "SparsityConfig",
    "TrainConfig",
    "Config",
    "SECTIONS",
    "FIXED_SECTIONS",
    "config_to_dict",
]


@dataclass
class RunConfig:
    """Identity and placement of a run."""

    name: str = setting("digits_chts", "run name; the run directory defaults to runs/<name>-<date>-<time>")
    dir: str | None = setting(None, "run directory (checkpoints, metrics, plots, report); `--out` sets it")
    seed: int = setting(
        0, "seed of the model initialisation, data order and every topology choice", min=0, max=2**63 - 1
    )
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    threads: int = setting(
        1,
        "CPU threads for PyTorch: 1 suits small models and shared machines (more threads "
        "contend badly when other jobs run); 0 = PyTorch's default (all cores)",
        min=0,
        max=1024,  # more starts thousands of OpenMP threads (100000 crashes the process)
    )
    recipe: str = setting(
        "",
        "the task: which data, model, loss and metrics to build (empty: the default recipe, MLP image classification)",
    )
    imports: list[str] = setting(
        factory=list,
        help="modules to import before the config is checked (module names or .py paths): your own registered "
        "parts, methods, recipes, kernels or backends (docs/extending.md); `chtorch --import` adds to it",
    )
    loggers: list[str] = setting(
        factory=lambda: ["jsonl", "csv"],
        help="where the run's scalars go: jsonl (metrics.jsonl, required), csv, tensorboard, wandb (WANDB_MODE=offline "
        "works without network); see chtorch.train.loggers",
    )
    paper_table: str | None = setting(
        None,
        "the paper's table whose cells `chtorch compare` prints beside its results (chtorch.train.paper_tables)",
        choices=("table7-mnist", "table7-fmnist", "table7-emnist"),
    )


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = setting("sgd", "optimizer", choices=("sgd", "adamw", "adam"))
    lr: float = setting(0.025, "peak learning rate (for noam: the scale factor)", min=0.0, min_open=True)
    momentum: float = setting(0.9, "SGD momentum", min=0.0, max=1.0, max_open=True)
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    weight_decay: float = setting(5e-4, "weight decay (SGD: L2; AdamW: decoupled)", min=0.0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], help="Adam/AdamW betas", min=0.0, max=1.0, max_open=True)
    eps: float = setting(1e-8, "Adam/AdamW epsilon", min=0.0, min_open=True)
    schedule: str = setting(
        "linear",
        "LR schedule: constant, linear (lr -> final_lr), cosine (-> final_lr), noam",
        choices=("constant", "linear", "cosine", "noam"),
    )
    final_lr: float = setting(
        2.5e-4, "LR at the end of a linear or cosine schedule (the paper: 0.025 -> 2.5e-4)", min=0.0
    )
    decay_fraction: float = setting(
        1.0,
        "fraction of the training steps over which linear and cosine reach final_lr, then held (the official MLP code: "
        "0.9, flat for the last 10%)",
        min=0.0,
        max=1.0,
        min_open=True,
    )
    warmup_steps: int = setting(0, "global warm-up steps (noam: its warm-up, required)", min=0)
    d_model: int | None = setting(None, "model width for noam (default: the model's)", min=1)
    rewarmup_steps: int = setting(
        0,
        "iterative re-warm-up: after each topology update the LR ramps up again over this many steps (paper: 20)",
        min=0,
    )
    rewarmup_until: str = setting(
        "end",
        "how long the re-warm-up repeats: end (every update interval of the whole run, T_end or not, as both official "
        "codes' (t mod ΔT)/w) or last_update (only after the topology updates that run)",
        choices=("end", "last_update"),
    )
    grad_clip: float = setting(0.0, "clip the gradient norm to this value (0 = off)", min=0.0)
    kernel: str = setting(
        "auto",
        "optimizer implementation: fused (one kernel for all parameters; 2.5-3x faster steps on CPU), foreach, "
        "loop, or auto (fused where torch has it for the parameters' device and dtype, else torch's default)",
        choices=("auto", "fused", "foreach", "loop"),
    )


@dataclass
class SparsityConfig:
    """Which dynamic sparse training method, at which sparsity, with which parts."""

    method: str = setting("chts", "a registered method (`chtorch methods`) or 'dense' for no sparsification")
    sparsity: float = setting(
        0.9, "final fraction of zeros in each sparse layer (0.99 keeps 1% of links)", min=0.0, max=1.0, max_open=True
    )
    update_interval: int = setting(1, "topology update interval, in update_unit (the paper's MLPs: 1 epoch)", min=1)
    update_unit: str = setting("epoch", "unit of update_interval", choices=("epoch", "step"))
    layers: list[str] | None = setting(
        None, "layer names or glob patterns to sparsify (default: every Linear but the last)"
    )
    exclude: list[str] | None = setting(None, "layer names or glob patterns to keep dense")
    backend: str = setting(
        "masked",
        "execution of the sparse layers: masked (dense weight x mask, every method), "
        "sparse (truly sparse kernels; dense gradients only before an update), auto (sparse where a layer is at "
        "<= 20% density, re-decided at every update) or a registered backend",
    )
    kernel: str = setting(
        "auto",
        "kernel of the truly sparse layers: auto (native C++ on CPU when it builds, else torch.sparse CSR, "
        "else gather), native, csr, gather or a registered kernel (chtorch.register_kernel)",
    )
    options: dict[str, Any] = setting(
        factory=dict,
        help="overrides of the method's parts for every method (see SparsityOptions), merged over the recipe's "
        "defaults (the MLP recipe's: {weight_init: swi_out, skip_step_on_update: true}, as the official MLP code)",
    )
    method_options: dict[str, dict[str, Any]] = setting(
        factory=dict,
        help="extra overrides per method, applied when that method runs, e.g. {chts: {init: csti, weight_init: swi}}",
    )


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = setting(30, "training epochs", min=1)
    eval_every: int = setting(1, "evaluate every N epochs (and always after the last)", min=1)
    checkpoint: bool = setting(True, "write a checkpoint (atomically) after every epoch")
    plots: bool = setting(True, "write PNG plots at the end (needs matplotlib)")
    report: bool = setting(True, "write report.md at the end")
    progress: str = setting(
        "auto",
        "auto (bar on a terminal, else one line per epoch), bar, lines or off",
        choices=("auto", "bar", "lines", "off"),
    )
    log_every: int = setting(0, "also log the training loss every N steps (0 = per epoch only)", min=0)
    snapshot_every: int = setting(0, "save the masks every N epochs for plots (0 = start and end only)", min=0)
    tensorboard: bool = setting(True, "also log to TensorBoard when it is installed")
    max_nonfinite: int = setting(10, "stop after this many steps with a NaN/inf loss (each is skipped)", min=0)
    grad_accum: int = setting(
        1,
        "micro-batches per optimizer step (gradient accumulation): the global batch is the data batch x "
        "grad_accum x processes; data.steps_per_epoch stays in optimizer steps",
        min=1,
    )
    precision: str = setting(
        "fp32",
        "fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast with a GradScaler, CUDA only). Weights, optimizer "
        "state and topology updates stay fp32",
        choices=("fp32", "bf16", "fp16"),
    )


@dataclass
class Config:
    """A whole run: six sections. ``model`` and ``data`` are the schemas of the chosen model family
    and recipe (built by :func:`chtorch.config.build_config`)."""

    run: RunConfig = field(default_factory=RunConfig)
    model: Any = None
    data: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


#: The section names, in file order.
SECTIONS: tuple[str, ...] = ("run", "model", "data", "optim", "sparsity", "train")
#: The sections whose schema does not depend on the recipe or the model family.
FIXED_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "optim": OptimConfig,
    "sparsity": SparsityConfig,
    "train": TrainConfig,
}


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (lists, no tuples) of ``config``; :func:`~chtorch.config.build_config` reads it back."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {name: plain(dataclasses.asdict(getattr(config, name))) for name in SECTIONS}
