"""Extensions from outside the package run end to end: a toy sparse kernel, a toy backend and a toy
recipe, each in a module written to a temporary folder (never inside ``chtorch``), loaded by
``chtorch train --import FILE`` or ``run.imports``, and trained for a few steps by the real command in a
fresh process (the registries of this test process stay untouched). Each toy writes what it saw to
``$TOY_OUT`` when the process exits, so the test knows it was really used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOY = textwrap.dedent(
    '''
    """A user's extensions: one sparse kernel, one backend, one recipe."""
    import atexit, dataclasses, json, os

    import torch
    import torch.nn.functional as F

    import chtorch
    from chtorch.config import setting
    from chtorch.dst import MaskedLayer
    from chtorch.models import MLP
    from chtorch.models.mlp import MLPConfig
    from chtorch.recipes.base import Recipe, RecipeSpec, register_recipe_spec
    from chtorch.sparse import SparseLinearKernel, get_kernel

    SEEN = {"kernel_forward": 0, "backend_installs": 0, "recipe_steps": 0}
    atexit.register(lambda: open(os.environ["TOY_OUT"], "w").write(json.dumps(SEEN)))

    GATHER = get_kernel("gather")


    def forward(x_op, values, bias, layout, batch):
        SEEN["kernel_forward"] += 1
        return GATHER.forward(x_op, values, bias, layout, batch)


    chtorch.register_kernel(
        SparseLinearKernel("toy_gather", forward, GATHER.grad_input, GATHER.grad_values, summary="counts calls")
    )


    class CountingLayer(MaskedLayer):
        def install(self, final, fresh, init, optimizer):
            SEEN["backend_installs"] += 1
            super().install(final, fresh, init, optimizer)


    chtorch.register_backend("toy_masked", CountingLayer, summary="a masked layer that counts topology updates")


    @dataclasses.dataclass
    class BlobsData:
        n: int = setting(256, "examples", min=8)
        features: int = setting(12, "input features", min=1)
        classes: int = setting(3, "classes", min=2)
        batch_size: int = setting(32, "batch size", min=1)


    class Blobs(Recipe):
        name = "toy_blobs"

        def setup(self):
            g = torch.Generator().manual_seed(self.config.run.seed)
            d = self.config.data
            centers = torch.randn(d.classes, d.features, generator=g) * 3
            self.y = torch.randint(0, d.classes, (d.n,), generator=g)
            self.x = centers[self.y] + torch.randn(d.n, d.features, generator=g)

        def build_model(self):
            d, m = self.config.data, self.config.model
            cfg = MLPConfig(in_features=d.features, n_classes=d.classes, hidden=tuple(m.hidden))
            return MLP(cfg).to(self.device)

        @property
        def steps_per_epoch(self):
            return self.config.data.n // self.config.data.batch_size

        def train_batches(self, epoch, start=0):
            bs = self.config.data.batch_size
            for i in range(start, self.steps_per_epoch):
                yield self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]

        def train_step(self, model, batch):
            SEEN["recipe_steps"] += 1
            x, y = batch
            loss = F.cross_entropy(model(x), y)
            return loss, {"loss_sum": float(loss) * len(y), "count": len(y)}

        def summarize(self, sums):
            return {"train_loss": sums["loss_sum"] / max(1, sums["count"])}

        @torch.no_grad()
        def evaluate(self, model):
            logits = model(self.x)
            return {"test_loss": float(F.cross_entropy(logits, self.y)),
                    "test_accuracy": float((logits.argmax(1) == self.y).float().mean())}


    register_recipe_spec(RecipeSpec(Blobs, BlobsData, {"mlp": None}))
    '''
)

COMMON = [
    "model.hidden=[32,32]",
    "train.epochs=2",
    "sparsity.method=set",
    "sparsity.update_unit=step",
    "sparsity.update_interval=2",
    "train.plots=false",
    "train.report=false",
    "train.progress=off",
]


def _train(tmp_path: Path, *args: str) -> dict[str, int]:
    toy = tmp_path / "toy_extensions.py"
    toy.write_text(TOY)
    out = tmp_path / "seen.json"
    env = {
        **os.environ,
        "TOY_OUT": str(out),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "chtorch.cli", "train", *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()
    return json.loads(out.read_text())


def test_a_kernel_registered_outside_the_package_trains(tmp_path: Path) -> None:
    seen = _train(
        tmp_path,
        "--import",
        "toy_extensions.py",
        "--set",
        *COMMON,
        "data.train_limit=256",
        "sparsity.backend=sparse",
        "sparsity.kernel=toy_gather",
    )
    assert seen["kernel_forward"] > 0


def test_a_backend_registered_outside_the_package_trains(tmp_path: Path) -> None:
    seen = _train(
        tmp_path,
        "--import",
        "toy_extensions.py",
        "--set",
        *COMMON,
        "data.train_limit=256",
        "sparsity.backend=toy_masked",
    )
    assert seen["backend_installs"] > 0  # every topology update installed through the toy layer


def test_a_recipe_registered_outside_the_package_trains_from_run_imports(tmp_path: Path) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(f"run:\n  recipe: toy_blobs\n  imports: [{tmp_path / 'toy_extensions.py'}]\n")
    seen = _train(tmp_path, str(config), "--set", *COMMON)
    assert seen["recipe_steps"] == 2 * 8  # two epochs of 256 / 32 batches


def test_an_unimportable_module_is_a_config_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "chtorch.cli", "config", "--import", "no_such_module_anywhere"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--import: cannot import 'no_such_module_anywhere'" in done.stderr
