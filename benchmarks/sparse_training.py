"""Training-step speed: truly sparse SparseLinear vs dense vs masked dense.

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
state carried) for the three layers. Each configuration runs at every ``--thread-counts`` value, the
thread counts interleaved with the variants in one round robin (this 2-vCPU machine's speed at two
threads drifts by up to 1.7x over minutes), and the file reports the thread scaling of dense and
sparse side by side.

    python -m benchmarks.sparse_training                       # print the table
    python -m benchmarks.sparse_training --out benchmarks/results/sparse-training-cpu.md
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from benchmarks._common import Session, Timing, add_protocol_args, interleave, measure
from chtorch.config import OptimConfig
from chtorch.masks import link_budget
from chtorch.sparse import to_sparse
from chtorch.train.optim import build_optimizer

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


def make_optimizer(name: str, model: nn.Module, kernel: str = "auto") -> torch.optim.Optimizer:
    """The trainer's optimizer (chtorch.train.optim; ``kernel="auto"``: torch's fused kernel on CPU)."""
    if name == "sgd":
        return build_optimizer(model, OptimConfig(name="sgd", lr=0.025, momentum=0.9, weight_decay=5e-4, kernel=kernel))
    return build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01, kernel=kernel))


class Variant:
    """A model, its optimizer and what one training step does."""

    def __init__(
        self, kind: str, masks: dict[str, torch.Tensor], optimizer: str, seed: int, kernel: str = "auto"
    ) -> None:
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
        self.optimizer = make_optimizer(optimizer, self.model, kernel)
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


def time_steps(
    variants: list[Variant], batch: int, repeats: int, steps: int, seed: int, thread_counts: list[int]
) -> dict[int, dict[str, Timing]]:
    """Median wall and CPU seconds per step of each variant at each thread count, all timed round
    robin in one loop (the thread count is switched before every sample), so that a drift of the
    shared machine hits the 1- and 2-thread figures alike and the scaling is measured side by side."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (batch,), generator=g)

    def step(v: Variant, threads: int) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        v.step(x, y)

    fns = {(t, v.kind): (lambda v=v, t=t: step(v, t)) for t in thread_counts for v in variants}
    timed = interleave({f"{t}|{k}": fn for (t, k), fn in fns.items()}, repeats, calls=steps, warmup=2)
    return {t: {v.kind: timed[f"{t}|{v.kind}"] for v in variants} for t in thread_counts}


def time_topology_update(variant: Variant, zeta: float, repeats: int, seed: int) -> Timing:
    """Median wall / CPU seconds of set_mask on the three sparse layers, moving a fraction zeta of the links."""
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
        samples.append(
            measure(
                lambda m=new_masks: [
                    variant.model.get_submodule(n).set_mask(k, variant.optimizer) for n, k in m.items()
                ]
            )
        )
    return Timing(statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    parser.add_argument("--impls", nargs="+", default=["native", "csr"], choices=["native", "csr", "gather"])
    parser.add_argument(
        "--thread-counts", type=int, nargs="+", default=[1, 2], help="torch threads to measure, each in turn"
    )
    parser.add_argument("--no-masked", action="store_true", help="leave out the masked dense variant")
    parser.add_argument(
        "--no-alone", action="store_true", help="skip the thread scaling of dense and sparse timed each alone"
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed sample")
    parser.add_argument(
        "--optimizer-kernel",
        default="auto",
        choices=["auto", "fused", "foreach", "loop"],
        help="optim.kernel of every variant",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Sparse training step: SparseLinear vs dense vs masked dense")

    g = torch.Generator().manual_seed(args.seed)
    masks = {name: random_mask(SIZES[i + 1], SIZES[i], args.density, g) for i, name in enumerate(SPARSE_LAYERS)}
    kinds = ["dense"] + ([] if args.no_masked else ["masked"]) + [f"sparse-{impl}" for impl in args.impls]
    rows = []
    update: dict[int, Timing] = {}
    alone: dict[tuple[str, int, str], dict[int, dict[str, Timing]]] = {}
    for opt_name in args.optimizers:
        for batch in args.batch_sizes:
            variants = [Variant(kind, masks, opt_name, args.seed, args.optimizer_kernel) for kind in kinds]
            by_threads = time_steps(variants, batch, args.repeats, args.steps, args.seed + batch, args.thread_counts)
            for threads, med in by_threads.items():
                rows.append((threads, opt_name, batch, med))
                print(
                    f"{threads} thr {opt_name:5s} batch {batch:4d}: "
                    + "  ".join(f"{k} {med[k].ms()} (x{med['dense'].wall / med[k].wall:.2f})" for k in kinds),
                    flush=True,
                )
            if len(args.thread_counts) > 1 and not args.no_alone:
                for v in variants:
                    if v.kind in ("dense", kinds[-len(args.impls)]):
                        alone[(opt_name, batch, v.kind)] = time_steps(
                            [v], batch, args.repeats, args.steps, args.seed + batch, args.thread_counts
                        )
            if opt_name == args.optimizers[0] and batch == args.batch_sizes[0]:
                sparse_variant = next(v for v in variants if v.kind == kinds[-len(args.impls)])
                for threads in args.thread_counts:
                    torch.set_num_threads(threads)
                    update[threads] = time_topology_update(sparse_variant, 0.3, max(3, args.repeats // 3), args.seed)
    rows.sort(key=lambda row: args.thread_counts.index(row[0]))
    session.finish()
    best = kinds[-len(args.impls)]
    lines = session.header(
        [
            f"- model: MLP {'-'.join(map(str, SIZES))}, density {args.density} in the three hidden layers "
            "(random, exact budget), classifier dense; step = forward + backward + optimizer.step + zero_grad",
            f"- timing: median over {args.repeats} samples of "
            f"{args.steps} steps, variants and thread counts interleaved "
            "(one round robin); "
            "wall ms with process CPU ms in brackets",
            f"- SparseLinear kernels: {', '.join(args.impls)} (`native` = chtorch's C++/OpenMP kernels)",
            "- optimizer: the trainer's (`chtorch.train.optim.build_optimizer`), "
            f"`optim.kernel={args.optimizer_kernel}` "
            "for every variant (`auto`: torch's fused kernel on CPU)",
            "",
            "| threads | optimizer | batch | "
            + " | ".join(kinds)
            + " | "
            + " | ".join(f"dense / {k}" for k in kinds[1:])
            + " |",
            "|---:|---|---:|" + "---:|" * (2 * len(kinds) - 1),
        ]
    )
    for threads, opt_name, batch, med in rows:
        lines.append(
            f"| {threads} | {opt_name} | {batch} | "
            + " | ".join(med[k].ms() for k in kinds)
            + " | "
            + " | ".join(f"{med['dense'].wall / med[k].wall:.2f}x" for k in kinds[1:])
            + " |"
        )
    if len(args.thread_counts) > 1:
        lo, hi = args.thread_counts[0], args.thread_counts[-1]
        lines += [
            "",
            f"Thread scaling, step time at {lo} thread(s) / at {hi} (goal: {best} >= 0.8x of dense's scaling):",
            "",
            f"| optimizer | batch | dense scaling | {best} scaling | {best} scaling / dense scaling |",
            "|---|---:|---:|---:|---:|",
        ]
        by_key = {(t, o, b): m for t, o, b, m in rows}
        for opt_name in args.optimizers:
            for batch in args.batch_sizes:
                a, b = by_key[(lo, opt_name, batch)], by_key[(hi, opt_name, batch)]
                dense_scale = a["dense"].wall / b["dense"].wall
                sparse_scale = a[best].wall / b[best].wall
                lines.append(
                    f"| {opt_name} | {batch} | {dense_scale:.2f}x | "
                    f"{sparse_scale:.2f}x | {sparse_scale / dense_scale:.2f} |"
                )
    if alone:
        lo, hi = args.thread_counts[0], args.thread_counts[-1]
        lines += [
            "",
            f"Thread scaling of each variant timed alone (its {lo}- "
            f"and {hi}-thread samples interleaved, no other model "
            "in between: a training run's situation; the dense models of the table above evict the caches before every "
            "sparse sample):",
            "",
            f"| optimizer | batch | dense {lo} / {hi} thread(s) | dense "
            f"scaling | {best} {lo} / {hi} thread(s) | {best} scaling "
            f"| {best} scaling / dense scaling |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for opt_name in args.optimizers:
            for batch in args.batch_sizes:
                d, sp = alone[(opt_name, batch, "dense")], alone[(opt_name, batch, best)]
                d_lo, d_hi = d[lo]["dense"], d[hi]["dense"]
                s_lo, s_hi = sp[lo][best], sp[hi][best]
                dense_scale, sparse_scale = d_lo.wall / d_hi.wall, s_lo.wall / s_hi.wall
                lines.append(
                    f"| {opt_name} | {batch} | {d_lo.ms()} / {d_hi.ms()} "
                    f"| {dense_scale:.2f}x | {s_lo.ms()} / {s_hi.ms()} | "
                    f"{sparse_scale:.2f}x | {sparse_scale / dense_scale:.2f} |"
                )
    lines += [
        "",
        f"Topology update through `set_mask` ({best}, 3 layers, 30% of links moved, optimizer state carried):",
        "",
    ]
    lines += [f"- {t} thread(s): {timing.ms()} (median)" for t, timing in update.items()]
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
