"""One whole MNIST epoch, topology update included: CHTs on the truly sparse backend vs dense.

The paper's MLP 784-1568-1568-1568-10 (Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 4: batch 32,
SGD momentum 0.9, weight decay 5e-4) at 99% sparsity. An epoch is 1875 optimizer steps over the 60000
training images plus, for CHTs, the end-of-epoch topology update (soft removal, percolation, CH2-L3n
regrowth). Variants: ``dense`` (no sparsity), ``chts-masked`` (dense weights times masks) and
``chts-sparse`` (``backend="sparse"``: SparseLinear layers). Epochs of the variants alternate, and the
median per variant is reported with the ratios and the topology update's share of the epoch.

    python -m benchmarks.mnist_epoch --data ../shared/data/mnist --out benchmarks/results/mnist-epoch-cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import chtorch
from benchmarks._common import Session, add_protocol_args
from chtorch.config import OptimConfig
from chtorch.data import TensorLoader, load_dataset
from chtorch.train.optim import build_optimizer


def build(variant: str, steps_per_epoch: int, epochs: int):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1568),
        nn.ReLU(),
        nn.Linear(1568, 1568),
        nn.ReLU(),
        nn.Linear(1568, 1568),
        nn.ReLU(),
        nn.Linear(1568, 10),
    )
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.025, momentum=0.9, weight_decay=5e-4))  # the trainer's
    sp = None
    if variant != "dense":
        sp = chtorch.sparsify(
            model,
            opt,
            method="chts",
            sparsity=0.99,
            total_steps=steps_per_epoch * epochs,
            update_interval=steps_per_epoch,
            backend=variant.split("-")[1],
            weight_init="swi",
            t_end_fraction=1.0,
        )  # an update at the end of every epoch
    return model, opt, sp


def run_epoch(model, opt, sp, loader) -> tuple[float, float, float, float]:
    """(epoch wall seconds, topology-update seconds, mean loss, epoch CPU seconds)."""
    update = 0.0
    total = 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sp is not None:
            t0 = time.perf_counter()
            report = sp.step()
            if report is not None:
                update += time.perf_counter() - t0
        opt.zero_grad()
        total += loss.item()
    return time.perf_counter() - start, update, total / len(loader), time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="directory with the MNIST files (default: $CHTORCH_DATA)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per variant (alternating)")
    parser.add_argument("--variants", default="dense,chts-masked,chts-sparse")
    add_protocol_args(parser, threads=1)
    args = parser.parse_args()
    session = Session(args, "One MNIST epoch with its topology update: CHTs sparse backend vs dense")
    data = load_dataset("mnist", args.data, "train", flatten=True)
    loader = TensorLoader(data.images, data.labels, batch_size=32, shuffle=True, seed=0)
    variants = args.variants.split(",")
    runs = {v: build(v, len(loader), args.epochs) for v in variants}
    results: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in variants}
    for epoch in range(args.epochs):
        for v in variants:
            loader.set_epoch(epoch)
            results[v].append(run_epoch(*runs[v], loader))
            print(
                f"epoch {epoch + 1} {v}: {results[v][-1][0]:.1f} s (cpu "
                f"{results[v][-1][3]:.1f} s; update {results[v][-1][1]:.2f} s), "
                f"loss {results[v][-1][2]:.3f}",
                flush=True,
            )

    med = {v: statistics.median(r[0] for r in results[v]) for v in variants}
    upd = {v: statistics.median(r[1] for r in results[v]) for v in variants}
    cpu = {v: statistics.median(r[3] for r in results[v]) for v in variants}
    lines = session.header() + [
        "- model: MLP 784-1568-1568-1568-10, 99% sparsity in the three hidden layers (CHTs: BRF init, soft removal, "
        "percolation, soft CH2-L3n regrowth, SWI), batch 32 (1875 steps), SGD momentum 0.9, wd 5e-4",
        f"- {args.epochs} epochs per variant, alternating; median epoch reported",
        "",
        "| variant | epoch (s) | epoch CPU (s) | topology update (s) | update share | dense / variant |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        share = upd[v] / med[v] if med[v] else 0.0
        ratio = med["dense"] / med[v] if "dense" in med else float("nan")
        lines.append(f"| {v} | {med[v]:.1f} | {cpu[v]:.1f} | {upd[v]:.2f} | {share:.1%} | {ratio:.2f}x |")
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
