"""Reference training: recipes, the loop, checkpoints, logs, plots and reports (``chtorch train``).

    from chtorch.train import load_config, train
    result = train(load_config("configs/mlp_mnist_cpu.yaml", ["data.dir=../shared/data/mnist"]))

The loop is task-agnostic; a :class:`Recipe` supplies the data, model, loss and metrics (image
classification, translation and language modelling are built in and registered on import of this
package; see :mod:`chtorch.recipes.base` to add one).

=================  ==========================================================================
``runs``           :func:`train` and :func:`resume`, the entry points
``trainer``        :class:`Trainer`: the run built from a config, and the loop
``lifecycle``      run directories, what a resume may change, the result, run errors
``records``        metrics rows, tables, snapshots, summary and terminal lines
``metrics``        the metrics log, CSV, topology files, active-neuron counts
``checkpoint``     atomic checkpoints and RNG state
``optim``          optimizer and its LambdaLR (with the re-warm-up)
``lr_schedules``   the LR curves: linear decay, noam, cosine with warm-up
``progress``       progress bar / lines
``distributed``    ``torchrun`` process groups and collectives
``plots``, ``run_report``, ``compare``, ``export``   what is made from finished runs
=================  ==========================================================================
"""

import chtorch.recipes.builtin  # noqa: F401  (registers the built-in recipes)
from chtorch.config import load_config
from chtorch.recipes.base import Recipe, get_recipe, recipes, register_recipe
from chtorch.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from chtorch.train.compare import CompareResult, compare
from chtorch.train.lifecycle import RunResult, TrainingError
from chtorch.train.runs import resume, train
from chtorch.train.trainer import Trainer

__all__ = [
    "load_config",
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
