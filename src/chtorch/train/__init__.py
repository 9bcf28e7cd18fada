"""Reference training: recipes, the loop, checkpoints, logs, plots and reports (``chtorch train``).

    from chtorch.config import load_config
    from chtorch.train import train
    result = train(load_config("configs/mlp_mnist_cpu.yaml", ["data.dir=../shared/data/mnist"]))

The loop is task-agnostic; a :class:`Recipe` supplies the data, model, loss and metrics
(image classification built in; see :mod:`chtorch.recipes.base` to add one).
"""

from chtorch.recipes.base import Recipe, get_recipe, recipes, register_recipe
from chtorch.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from chtorch.train.compare import CompareResult, compare
from chtorch.train.trainer import RunResult, Trainer, TrainingError, resume, train

__all__ = [
    "train",
    "resume",
    "compare",
    "Trainer",
    "RunResult",
    "CompareResult",
    "TrainingError",
    "CheckpointError",
    "Recipe",
    "register_recipe",
    "get_recipe",
    "recipes",
    "save_checkpoint",
    "load_checkpoint",
]
