"""Image classification with the paper's MLP (MNIST, Fashion-MNIST, EMNIST, CIFAR-10, digits).

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §4 / Table 4: flattened images, hidden Linear layers
with ReLU, a dense classifier, cross-entropy, batch 32. Whole splits are held in memory (on the
training device) and batched by :class:`chtorch.data.TensorLoader`, whose permutation depends only on
``(seed, epoch)``; under ``torchrun`` each rank takes its disjoint, equal-size slice of it. CSTI's input
correlation is computed here from the training images, because it is data and the library core takes only
tensors. ``data.val_fraction`` of the training images (after ``data.train_limit``) is held out for
validation by :func:`chtorch.data.holdout.holdout_indices`, the same images for every seed and method;
the paper configs set it to 0 and train on the whole training set, as the paper (docs/decisions.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chtorch._checks import closest
from chtorch.config import (
    Config,
    ConfigError,
    model_schema,
    model_values,
    setting,
)
from chtorch.data import TensorLoader, dataset_names, load_dataset, random_crop_flip
from chtorch.data.holdout import holdout_indices
from chtorch.data.vision import dataset_info
from chtorch.models import MLP
from chtorch.models.mlp import ACTIVATIONS, MLPConfig
from chtorch.recipes.base import Recipe, RecipeSpec, register_recipe_spec
from chtorch.rng import derive_seed, make_generator
from chtorch.topology import pearson_correlation

__all__ = ["ImageClassification", "ImageDataConfig", "MLPModelConfig"]


@dataclass
class ImageDataConfig:
    """An image classification dataset read from its standard files (see chtorch.data)."""

    name: str = setting("digits", "dataset: digits (built in, offline), mnist, fashion_mnist, emnist_balanced, cifar10")
    dir: str | None = setting(
        None, "data root holding the dataset's files (default: $CHTORCH_DATA, then ~/.cache/chtorch)"
    )
    batch_size: int = setting(32, "training batch size (the paper: 32)", min=1)
    eval_batch_size: int = setting(1000, "evaluation batch size", min=1)
    normalize: bool = setting(True, "standardise pixels with the dataset's mean and std")
    augment: bool = setting(False, "random crop (padding 4) and horizontal flip, as the paper's CIFAR-10 code")
    train_limit: int | None = setting(None, "use only the first N training images (CPU-sized runs)", min=1)
    test_limit: int | None = setting(None, "evaluate on only the first N test images", min=1)
    val_fraction: float = setting(
        0.1,
        "fraction of the training images held out for validation, which selects the epoch that chtorch compare "
        "reports (a fixed split, the same for every seed and method); 0 trains on all of them, as the paper",
        min=0.0,
        max=1.0,
        max_open=True,
    )
    download: bool = setting(False, "download missing files from the canonical sources (checksum-verified)")
    verify: bool = setting(True, "verify file checksums before reading")
    csti_samples: int = setting(10000, "training images used to estimate the input correlation for CSTI", min=2)


#: The ``model`` section of the MLP: :class:`~chtorch.models.MLPConfig` without the sizes the data
#: decides, with CPU-sized hidden widths by default.
MLPModelConfig = model_schema(
    "mlp",
    MLPConfig,
    doc="The paper's MLP: hidden Linear layers with an activation, then a dense classifier.",
    exclude=("in_features", "n_classes"),
    defaults={"hidden": [256, 256, 256]},
)


def validate_image_config(config: Config) -> None:
    """The dataset must be known; its name is normalised (``fmnist`` -> ``fashion_mnist``)."""
    try:
        config.data.name = dataset_info(config.data.name).name
    except ValueError:
        names = dataset_names()
        raise ConfigError(
            f"unknown dataset {config.data.name!r}{closest(config.data.name, names)}; "
            f"known datasets: {', '.join(names)}",
            "data.name",
        ) from None


class ImageClassification(Recipe):
    """MLP image classification; metrics ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy`` (on the held-out ``data.val_fraction`` of the training images; absent when it is
    0), ``test_loss``, ``test_accuracy`` (accuracy in [0, 1])."""

    name = "image_classification"
    primary_metric = "test_accuracy"
    higher_is_better = True
    evaluation_keys = frozenset({"data.test_limit"})
    shards_data = True  # under torchrun each rank gets its slice of every epoch's permutation

    def setup(self) -> None:
        cfg = self.config.data
        root = cfg.dir
        kwargs = dict(root=root, normalize=cfg.normalize, download=cfg.download, verify=cfg.verify)
        train = load_dataset(cfg.name, split="train", **kwargs)
        test = load_dataset(cfg.name, split="test", **kwargs)
        x_train, y_train = train.images, train.labels
        x_test, y_test = test.images, test.labels
        if cfg.train_limit is not None:
            x_train, y_train = x_train[: cfg.train_limit], y_train[: cfg.train_limit]
        if cfg.test_limit is not None:
            x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
        try:
            keep, held_out = holdout_indices(int(x_train.shape[0]), cfg.val_fraction)
        except ValueError as exc:
            raise ConfigError(str(exc), "data.val_fraction") from None
        x_val, y_val = x_train[held_out], y_train[held_out]
        if held_out.numel():
            x_train, y_train = x_train[keep], y_train[keep]
        self.info = train
        self.n_classes = train.n_classes
        self.in_features = train.in_features
        # Augmentation works on (B, C, H, W); the MLP flattens itself, so keep images 4-D.
        self.x_train = x_train.to(self.device)
        self.y_train = y_train.to(self.device)
        self.x_test = x_test.to(self.device)
        self.y_test = y_test.to(self.device)
        self.x_val = x_val.to(self.device)
        self.y_val = y_val.to(self.device)
        self.loader = TensorLoader(
            self.x_train,
            self.y_train,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=derive_seed(self.config.run.seed, "image-data"),
            rank=self.rank,
            world_size=self.world_size,
        )
        # Padding value of a black pixel after normalisation, for random crops.
        if train.normalized:
            self.fill = [(0.0 - m) / s for m, s in zip(train.mean, train.std)]
        else:
            self.fill = [0.0] * len(train.mean)

    def build_model(self) -> nn.Module:
        config = MLPConfig(in_features=self.in_features, n_classes=self.n_classes, **model_values(self.config.model))
        return MLP(config).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        self.loader.set_epoch(epoch)
        batches = iter(self.loader)
        augment = self.config.data.augment
        for index, (x, y) in enumerate(itertools.islice(batches, start, None), start=start):
            if augment:
                # Under torchrun each rank crops its own images differently (rank in the key).
                keys = (epoch, index) if self.world_size == 1 else (epoch, index, self.rank)
                g = make_generator(self.config.run.seed, "augment", *keys)
                x = random_crop_flip(x.cpu(), g, fill=self.fill).to(self.device)
            yield x, y

    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
        n = y.shape[0]
        return loss, {"loss_sum": loss.detach() * n, "correct": correct, "count": n}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(1.0, float(sums.get("count", 0)))
        return {"train_loss": float(sums.get("loss_sum", 0.0)) / n, "train_accuracy": float(sums.get("correct", 0)) / n}

    def selection(self) -> tuple[str, bool, str | None] | None:
        """Validation accuracy (ties: the lower validation loss) when a validation split is held out."""
        return ("val_accuracy", True, "val_loss") if self.x_val.shape[0] > 0 else None

    @torch.no_grad()
    def _evaluate_split(self, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of ``model`` on images ``x_all`` (N, C, H, W), labels ``y_all`` (N,)."""
        bs = self.config.data.eval_batch_size
        loss_sum, correct = 0.0, 0
        for start in range(0, x_all.shape[0], bs):
            x, y = x_all[start : start + bs], y_all[start : start + bs]
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
        n = max(1, x_all.shape[0])
        return loss_sum / n, correct / n

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        if self.x_val.shape[0] > 0:
            out["val_loss"], out["val_accuracy"] = self._evaluate_split(model, self.x_val, self.y_val)
        out["test_loss"], out["test_accuracy"] = self._evaluate_split(model, self.x_test, self.y_test)
        model.train(was_training)
        return out

    def sparsity_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """CSTI needs the Pearson correlation of the input pixels (Zhang et al., ICLR 2024, App. D):
        computed from the first ``data.csti_samples`` training images, flattened ``(N, C*H*W)``."""
        options = dict(options)
        if str(options.get("init", "")).lower() == "csti":
            init_options = dict(options.get("init_options", {}))
            if "correlation" not in init_options:
                n = min(self.config.data.csti_samples, self.x_train.shape[0])
                x = self.x_train[:n].reshape(n, -1).cpu()
                init_options["correlation"] = pearson_correlation(x).to(self.device)
            options["init_options"] = init_options
        return options

    def export_chains(self, model: nn.Module, layer_names: list[str]) -> tuple[list[list[str]], Any]:
        """The MLP is one chain: its hidden layers in order, then the dense classifier."""
        names = [f"layers.{i}" for i in range(len(self.config.model.hidden))] + ["classifier"]
        activation = ACTIVATIONS[self.config.model.activation]()
        return [names], activation

    def example_input(self) -> Any:
        return self.x_test[: self.config.data.eval_batch_size]

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.config.data.name,
            "train_samples": int(self.x_train.shape[0]),
            "val_samples": int(self.x_val.shape[0]),
            "test_samples": int(self.x_test.shape[0]),
            "in_features": int(self.in_features),
            "classes": int(self.n_classes),
        }


register_recipe_spec(
    RecipeSpec(
        ImageClassification,
        ImageDataConfig,
        {"mlp": MLPModelConfig},
        export_classes={"MLP": (MLP, MLPConfig)},
        # SWI (Zhang et al.; docs/decisions.md, "initial weights"): masked Kaiming init shrinks the signal by
        # sqrt(density) per layer, so a 90-99% sparse MLP trains poorly without it. The official MLP code's
        # DSTScheduler scales by density·out_features ("swi_out"; docs/decisions.md, SWI fan) for its CHT and CHTs
        # commands; its SET command (and run.py's default, so RigL) draws dense Kaiming instead: the shipped MLP
        # configs set weight_init: kaiming for set and rigl. The methods without public MLP code (MEST, GMP, GraNet,
        # CHTss) get SWI. The MLP code skips the optimizer step of an update iteration (docs/decisions.md).
        sparsity_defaults={"weight_init": "swi_out", "skip_step_on_update": True},
        validate=validate_image_config,
        default=True,
    )
)
