"""Training-step speed: truly sparse SparseLinear vs dense vs masked dense (issue 5).

The paper's MNIST MLP 784-1568-1568-1568-10 (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 4:
SGD momentum 0.9, weight decay 5e-4, 99% sparsity in every layer but the classifier). One step is
forward + backward + optimizer.step + zero_grad on a random batch. Variants, timed alternately
(round robin, median over repeats) so that the shared machine's drifting load hits all alike:

* ``dense``          plain nn.Linear layers, no mask;
* ``masked``         the masked backend as DST libraries do it: dense weight, gradient masked by a
                     tensor hook, weights and optimizer state re-masked after every step;
* ``sparse-<impl>``  the three hidden layers as chtorch.sparse.SparseLinear (values + indices,
                     sparse forward/backward, optimizer state for the links only).

Also timed: one topology update through ``SparseLinear.set_mask`` (30% of links moved, optimizer
state carried) for the three layers.

    python benchmarks/sparse_training.py                       # print the table
    python benchmarks/sparse_training.py --out benchmarks/results/sparse-training-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from chtorch.masks import link_budget
from chtorch.sparse import to_sparse

SIZES = (784, 1568, 1568, 1568, 10)
SPARSE_LAYERS = ("0", "2", "4")  # nn.Sequential indices of the three hidden Linear layers


def random_mask(n_out: int, n_in: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """Erdos-Renyi mask with exactly link_budget links."""
    n_links = link_budget(n_out, n_in, 1.0 - density)
    flat = torch.zeros(n_out * n_in, dtype=torch.bool)
    flat[torch.randperm(n_out * n_in, generator=generator)[:n_links]] = True
    return flat.view(n_out, n_in)


def make_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # benchmark script: owns the global RNG
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=5e-4)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


class Variant:
    """A model, its optimizer and what one training step does."""

    def __init__(self, kind: str, masks: dict[str, torch.Tensor], optimizer: str, seed: int) -> None:
        self.kind = kind
        self.model = make_mlp(seed)
        self.masks = masks
        self.hooks = []
        if kind != "dense":
            with torch.no_grad():
                for name, mask in masks.items():
                    layer = self.model.get_submodule(name)
                    layer.weight.mul_(mask)
                    layer.register_buffer("weight_mask", mask.clone())
        self.optimizer = make_optimizer(optimizer, self.model.parameters())
        if kind == "masked":
            for name, mask in masks.items():
                weight = self.model.get_submodule(name).weight
                self.hooks.append(weight.register_hook(lambda g, m=mask: g * m))
        elif kind.startswith("sparse-"):
            to_sparse(self.model, list(masks), optimizer=self.optimizer, impl=kind.split("-", 1)[1])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.kind == "masked":  # hygiene of masked DST: off-mask weights and state stay 0
            with torch.no_grad():
                for name, mask in self.masks.items():
                    weight = self.model.get_submodule(name).weight
                    weight.mul_(mask)
                    for value in self.optimizer.state[weight].values():
                        if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                            value.mul_(mask)


def time_steps(variants: list[Variant], batch: int, repeats: int, steps: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (batch,), generator=g)
    for v in variants:  # warm-up (allocator, MKL handles, optimizer state)
        for _ in range(2):
            v.step(x, y)
    times: dict[str, list[float]] = {v.kind: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            start = time.perf_counter()
            for _ in range(steps):
                v.step(x, y)
            times[v.kind].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(t) for k, t in times.items()}


def time_topology_update(variant: Variant, zeta: float, repeats: int, seed: int) -> float:
    """Median seconds of set_mask on the three sparse layers, moving a fraction zeta of the links."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(repeats):
        new_masks = {}
        for name in variant.masks:
            mask = variant.model.get_submodule(name).weight_mask.clone()
            links = mask.nonzero()
            n_move = int(zeta * len(links))
            drop = links[torch.randperm(len(links), generator=g)[:n_move]]
            free = (~mask).nonzero()
            grow = free[torch.randperm(len(free), generator=g)[:n_move]]
            mask[drop[:, 0], drop[:, 1]] = False
            mask[grow[:, 0], grow[:, 1]] = True
            new_masks[name] = mask
        start = time.perf_counter()
        for name, mask in new_masks.items():
            variant.model.get_submodule(name).set_mask(mask, variant.optimizer)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_layer_crossover(densities, batch_sizes, width, repeats, seed) -> list[tuple[float, int, float, float]]:
    """Forward + backward of one width x width layer (input needing grad, as a hidden layer's does):
    SparseLinear (csr) vs nn.Linear at each density. Returns (density, batch, dense s, sparse s)."""
    from chtorch.sparse import SparseLinear

    g = torch.Generator().manual_seed(seed)
    results = []
    for density in densities:
        mask = random_mask(width, width, density, g)
        torch.manual_seed(seed)
        dense = nn.Linear(width, width)
        sparse = SparseLinear.from_linear(dense, mask, impl="csr")
        for batch in batch_sizes:
            x = torch.randn(batch, width, generator=g, requires_grad=True)
            layers = {"dense": dense, "sparse": sparse}
            samples: dict[str, list[float]] = {k: [] for k in layers}
            for _ in range(repeats + 2):
                for key, layer in layers.items():
                    start = time.perf_counter()
                    layer(x).sum().backward()
                    samples[key].append(time.perf_counter() - start)
            med = {k: statistics.median(v[2:]) for k, v in samples.items()}
            results.append((density, batch, med["dense"], med["sparse"]))
            print(
                f"layer {width}x{width} density {density:.2f} batch {batch:4d}: dense {med['dense'] * 1e3:.3f} ms, "
                f"sparse {med['sparse'] * 1e3:.3f} ms (x{med['dense'] / med['sparse']:.2f})",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    parser.add_argument("--impls", nargs="+", default=["csr", "gather"], choices=["native", "csr", "gather"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--crossover-densities",
        type=float,
        nargs="*",
        default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3],
        help="also time one 1568x1568 layer (forward + backward) at these densities",
    )
    parser.add_argument("--out", help="write the results as Markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    masks = {name: random_mask(SIZES[i + 1], SIZES[i], args.density, g) for i, name in enumerate(SPARSE_LAYERS)}
    load_before = os.getloadavg()
    kinds = ["dense", "masked"] + [f"sparse-{impl}" for impl in args.impls]
    rows = []
    update_s = {}
    for opt_name in args.optimizers:
        for batch in args.batch_sizes:
            variants = [Variant(kind, masks, opt_name, args.seed) for kind in kinds]
            med = time_steps(variants, batch, args.repeats, args.steps, args.seed + batch)
            rows.append((opt_name, batch, med))
            print(
                f"{opt_name:5s} batch {batch:4d}: "
                + "  ".join(f"{k} {med[k] * 1e3:7.2f} ms (x{med['dense'] / med[k]:.2f})" for k in kinds),
                flush=True,
            )
            if opt_name == args.optimizers[0] and batch == args.batch_sizes[0]:
                best = f"sparse-{args.impls[0]}"
                sparse_variant = next(v for v in variants if v.kind == best)
                update_s[best] = time_topology_update(sparse_variant, 0.3, max(3, args.repeats // 3), args.seed)
    crossover = time_layer_crossover(args.crossover_densities, args.batch_sizes, SIZES[1], args.repeats, args.seed)
    load_after = os.getloadavg()
    for kind, seconds in update_s.items():
        print(f"topology update ({kind}, set_mask on 3 layers, 30% of links moved): {seconds * 1e3:.2f} ms")

    if args.out:
        lines = [
            "# Sparse training step: SparseLinear vs dense vs masked dense",
            "",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"- hardware: {cpu_model()}, {os.cpu_count()} cores visible; torch threads: {args.threads}",
            f"- torch {torch.__version__}, python {platform.python_version()}, MKL: {torch.backends.mkl.is_available()}",
            f"- load average before/after (shared machine): {load_before[0]:.2f} / {load_after[0]:.2f}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- model: MLP {'-'.join(map(str, SIZES))}, density {args.density} in the three hidden layers "
            "(random, exact budget), classifier dense; step = forward + backward + optimizer.step + zero_grad",
            f"- timing: median over {args.repeats} samples of {args.steps} steps, variants interleaved",
            "",
            "| optimizer | batch | " + " | ".join(kinds) + " | " + " | ".join(f"dense / {k}" for k in kinds[1:]) + " |",
            "|---|---:|" + "---:|" * (2 * len(kinds) - 1),
        ]
        for opt_name, batch, med in rows:
            lines.append(
                f"| {opt_name} | {batch} | "
                + " | ".join(f"{med[k] * 1e3:.2f} ms" for k in kinds)
                + " | "
                + " | ".join(f"{med['dense'] / med[k]:.2f}x" for k in kinds[1:])
                + " |"
            )
        for kind, seconds in update_s.items():
            lines += [
                "",
                f"Topology update through `set_mask` ({kind}, 3 layers, 30% of links moved, optimizer "
                f"state carried): {seconds * 1e3:.2f} ms (median).",
            ]
        if crossover:
            lines += [
                "",
                f"One {SIZES[1]}x{SIZES[1]} layer, forward + backward (input gradient, weight gradient, bias), "
                "SparseLinear csr vs nn.Linear:",
                "",
                "| density | batch | dense | sparse | dense / sparse |",
                "|---:|---:|---:|---:|---:|",
            ]
            lines += [f"| {d:.2f} | {b} | {td * 1e3:.3f} ms | {ts * 1e3:.3f} ms | {td / ts:.2f}x |" for d, b, td, ts in crossover]
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
