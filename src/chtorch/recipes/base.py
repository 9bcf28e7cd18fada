"""The recipe interface: everything task-specific a training run needs, behind one small class.

The :class:`~chtorch.train.trainer.Trainer` is task-agnostic: it owns the optimizer, LR schedule,
sparsity engine, loop, checkpoints, logs, plots and report. A recipe owns the task: it loads the
data, builds the model, computes the loss of a batch and the task's metrics, and says which layers
share neurons (percolation couplings) and which data-dependent sparsity options exist (the input
correlation of CSTI). Image classification is implemented in :mod:`chtorch.recipes.image`;
translation and language modelling plug in the same way:

1. subclass :class:`Recipe` (its :meth:`Recipe.couplings` is the percolation coupling rule);
2. register it once with :func:`register_recipe_spec` and a :class:`RecipeSpec`: its ``data`` config
   schema, the model families it trains with their ``model`` section schemas (derive one from the
   model's own config dataclass with :func:`chtorch.config.model_schema`), the model classes
   ``chtorch export`` may rebuild, sparsity defaults and a ``validate`` hook for checks only the
   task can make;
3. import the module before loading a config that names it: the built-in recipes are listed in
   :mod:`chtorch.recipes.builtin`, a user's module goes in ``run.imports`` (or ``chtorch --import``).

A training *epoch* is ``steps_per_epoch`` optimizer steps: a pass over the training set for
classification, or a fixed number of steps between evaluations for a stream of text.

Under ``torchrun`` the trainer tells the recipe its :attr:`Recipe.rank` and :attr:`Recipe.world_size`
(before :meth:`Recipe.setup`). A recipe that sets ``shards_data = True`` yields only its rank's shard
from :meth:`Recipe.train_batches` and reports that shard's ``steps_per_epoch`` (the image recipe does,
with :meth:`chtorch.data.TensorLoader.shard`); for any other recipe the trainer deals the batches out
round-robin — batch ``i`` to rank ``i mod world_size`` — which is correct but makes every rank build
every batch. Only rank 0 evaluates and writes files: a recipe that writes (a best-model copy, a
cache) should do so when :attr:`Recipe.is_main`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from chtorch._checks import closest
from chtorch.config import Config, register_model_schema, register_recipe_schema
from chtorch.dst import Coupling

__all__ = [
    "Recipe",
    "RecipeSpec",
    "register_recipe_spec",
    "register_recipe",
    "get_recipe",
    "recipes",
    "export_model_classes",
]


class Recipe(abc.ABC):
    """A task: data, model, loss, metrics and percolation couplings built from a :class:`Config`.

    Lifecycle: ``recipe = cls(config, device)``, ``recipe.setup()`` (load data once), then
    ``model = recipe.build_model()``; per epoch ``for batch in recipe.train_batches(epoch, start)``
    → ``loss, stats = recipe.train_step(model, batch)``; ``recipe.evaluate(model)`` → metrics.

    Determinism contract (needed for exact resume): ``train_batches(epoch, start)`` depends only
    on the config (seed) and its arguments — batch ``start`` of epoch ``e`` is the same batch in a
    fresh process — and any randomness inside a batch (augmentation) comes from generators derived
    with :func:`chtorch.rng.make_generator` from ``(seed, epoch, batch index)``.
    """

    #: Registry name (equal to ``config.run.recipe``).
    name: ClassVar[str] = ""
    #: The metric that ``chtorch compare`` tabulates, a key of :meth:`evaluate`'s result.
    primary_metric: ClassVar[str] = "test_accuracy"
    #: True when a larger primary metric is better (accuracy, BLEU); False for perplexity.
    higher_is_better: ClassVar[bool] = True
    #: True when :meth:`train_batches` yields only this rank's shard under ``torchrun`` (and
    #: :attr:`steps_per_epoch` counts that shard's batches, the same number on every rank).
    shards_data: ClassVar[bool] = False

    #: Config keys (``section.key``) that change only how a trained model is scored, so ``chtorch evaluate
    #: --set`` may change them (besides the device and the data location); never what shapes model or data.
    evaluation_keys: ClassVar[frozenset[str]] = frozenset()

    #: This process's rank and the number of processes (0 and 1 without ``torchrun``).
    rank: int = 0
    world_size: int = 1

    def __init__(self, config: Config, device: torch.device) -> None:
        self.config = config
        self.device = device

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Called by the trainer before :meth:`setup` with this process's place under ``torchrun``."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def is_main(self) -> bool:
        """True on rank 0 (or without ``torchrun``): the process that evaluates and writes files."""
        return self.rank == 0

    @abc.abstractmethod
    def setup(self) -> None:
        """Load or prepare the data (once, before :meth:`build_model`)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model on :attr:`device`, initialised from the global RNG (seeded by the trainer)."""

    @property
    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """Batches in one epoch: optimizer steps × ``train.grad_accum`` where the data sets a number of
        steps (``data.steps_per_epoch``), else a pass over the training set (``grad_accum`` per step)."""

    @abc.abstractmethod
    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` (0-based) from batch index ``start`` on (a resumed epoch)."""

    @abc.abstractmethod
    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one batch in training mode: ``(loss, stats)``. ``loss`` is the scalar to
        back-propagate; ``stats`` are additive sums (e.g. ``loss_sum``, ``correct``, ``count``) that
        :meth:`summarize` turns into the epoch's training metrics."""

    @abc.abstractmethod
    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Epoch training metrics (e.g. ``train_loss``, ``train_accuracy``) from summed ``stats``."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Evaluation metrics, keys prefixed by the split (``test_loss``, ``test_accuracy``)."""

    # -- optional hooks ---------------------------------------------------------------------------
    def couplings(self, model: nn.Module, layer_names: list[str]) -> list[Coupling] | None:
        """Percolation couplings of the sparse layers, or None to let the engine infer them from the
        layer names and shapes (consecutive MLP layers form one chain)."""
        return None

    def sparsity_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Add data-dependent sparsity options to ``options`` (a copy is returned), e.g. the input
        correlation that CSTI needs. Called only when a sparse method runs."""
        return dict(options)

    def model_dim(self) -> int | None:
        """The model width that the noam schedule scales by (None when the model has none)."""
        return None

    def export_chains(self, model: nn.Module, layer_names: list[str]) -> tuple[list[list[str]], Any]:
        """For ``chtorch export``: the chains of consecutive Linear layers (joined by an elementwise
        activation) whose dead neurons may be cut out, and that activation (see
        :func:`chtorch.compaction.compact`). Recipes whose models have no such chains keep this default."""
        raise NotImplementedError(f"`chtorch export` does not support recipe {self.name!r} yet")

    def example_input(self) -> Any:
        """One evaluation batch of model inputs (for export measurements)."""
        raise NotImplementedError(f"recipe {self.name!r} gives no example input")

    def selection(self) -> tuple[str, bool, str | None] | None:
        """How ``chtorch compare`` picks a run's epoch: ``(validation metric, higher is better, tie-break
        metric)`` — a tie of the metric goes to the better tie-break metric (lower, a loss), then to the later
        epoch — or None when the recipe has no per-epoch validation metric to select on
        (:mod:`chtorch.train.selection`)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the run report (sizes, classes, ...)."""
        return {}

    def result_files(self) -> list[Path]:
        """Files in the run directory besides the checkpoint that decide the results: the checkpoint
        records their SHA-256 and a resume (or ``chtorch evaluate``) refuses a changed one. Default:
        the cached tokenizers (every file in a ``tokenizer*`` folder of the run directory)."""
        folder = Path(self.config.run.dir) if self.config.run.dir else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for d in folder.glob("tokenizer*") if d.is_dir() for p in d.iterdir() if p.is_file())

    def result_file_ahead(self, path: Path, epochs_done: int) -> bool:
        """Whether the result file ``path`` was written after the checkpoint this run resumes from (taken
        after ``epochs_done`` epochs), by an attempt that stopped before its next checkpoint, so the
        recipe ignores and replaces it."""
        return False

    # -- re-scoring a trained run (``chtorch evaluate``) -----------------------------------------------
    def evaluation_weights(self) -> tuple[dict[str, torch.Tensor], str] | None:
        """The weights ``chtorch evaluate`` scores (a ``state_dict``) and what they are in words, e.g. the
        best validation checkpoint; None: the run's last checkpoint. Called after :meth:`setup`."""
        return None

    def score(self, model: nn.Module) -> tuple[dict[str, float], list[str]]:
        """The test metrics of a trained ``model`` and one output line per test example (empty when there
        is nothing to show), without writing anything. Default: :meth:`evaluate`, for recipes whose
        evaluation has no side effect."""
        return self.evaluate(model), []


_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be set to register it")
    _RECIPES[cls.name] = cls
    return cls


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as ``name`` (the built-in ones register when
    :mod:`chtorch.recipes.builtin` is imported; :mod:`chtorch.train` does)."""
    if name not in _RECIPES:
        raise ValueError(
            f"unknown recipe {name!r}{closest(name, _RECIPES)}; known recipes: {', '.join(sorted(_RECIPES))}"
        )
    return _RECIPES[name]


def recipes() -> list[str]:
    """The names of the registered recipes."""
    return sorted(_RECIPES)


_EXPORT_CLASSES: dict[str, tuple[type[nn.Module], type]] = {}


@dataclass(frozen=True)
class RecipeSpec:
    """Everything chtorch needs to know of a recipe, registered at once by :func:`register_recipe_spec`.

    ``recipe``: the :class:`Recipe` subclass (``recipe.name`` is ``run.recipe``; its ``couplings``
    method is the percolation coupling rule the engine calls with the selected layers). ``data``: the
    ``data`` section dataclass. ``models``: model family → its ``model`` section dataclass, or None
    for a family registered elsewhere; the first is the recipe's default. ``export_classes``: class
    name → (model class, its config dataclass) that ``chtorch export`` may rebuild.
    ``sparsity_defaults``: sparsity options the task uses unless the config says otherwise.
    ``validate(config)``: checks only the recipe can make (raise ``ConfigError``). ``default``: the
    recipe of a config that names none."""

    recipe: type[Recipe]
    data: type
    models: Mapping[str, type | None]
    export_classes: Mapping[str, tuple[type[nn.Module], type]] = field(default_factory=dict)
    sparsity_defaults: Mapping[str, Any] = field(default_factory=dict)
    validate: Callable[[Any], None] | None = None
    default: bool = False


def register_recipe_spec(spec: RecipeSpec) -> RecipeSpec:
    """Register a recipe's schemas, behaviour and export classes (see :class:`RecipeSpec`)."""
    if not (isinstance(spec.recipe, type) and issubclass(spec.recipe, Recipe)):
        raise TypeError(f"RecipeSpec.recipe must be a Recipe subclass, got {spec.recipe!r}")
    for family, schema in spec.models.items():
        if schema is not None:
            register_model_schema(family, schema)
    register_recipe_schema(
        spec.recipe.name,
        spec.data,
        list(spec.models),
        spec.sparsity_defaults,
        validate=spec.validate,
        default=spec.default,
    )
    register_recipe(spec.recipe)
    _EXPORT_CLASSES.update(spec.export_classes)
    return spec


def export_model_classes() -> dict[str, tuple[type[nn.Module], type]]:
    """Class name → (model class, config dataclass) of every model an export may name (a copy)."""
    return dict(_EXPORT_CLASSES)
