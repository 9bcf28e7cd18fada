"""Inference latency of compacted / sparse exports vs the dense model.

Model: the paper's MNIST MLP 784-1568-1568-1568-10 at 99% sparsity in the three hidden layers
(Zhang et al., NeurIPS 2025, arXiv:2501.19107, Table 4). A DST run with percolation leaves only part
of the hidden neurons active (ANP, Table 7: 20-35% for the CHT family on MNIST); this script builds
such a *percolated* topology synthetically: a fraction ``--active`` of each hidden layer's neurons is
active and the layer's exact link budget (1% of the full layer) is spread at random among them. With
``--active 1`` no neuron is dead (compaction removes nothing; only sparse storage helps).

Exports, each measured alternately against the dense original with ``chtorch.compaction.export_report``:

* ``compact``         dead neurons removed, smaller dense layers (``chtorch.compaction.compact``);
* ``sparse``          every masked layer stored as CSR (``chtorch.compaction.to_sparse_inference``);
* ``compact+sparse``  both (CSR only for layers below ``--max-density``).

    python -m benchmarks.inference --out benchmarks/results/sparse-inference-cpu.md
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks._common import Session, add_protocol_args, interleave
from chtorch.compaction import compact, export_report, find_dead_neurons, to_sparse_inference
from chtorch.masks import link_budget

SIZES = (784, 1568, 1568, 1568, 10)
NAMES = ["0", "2", "4", "6"]  # nn.Sequential indices of the four Linear layers (the last is dense)


def percolated_mask(n_out, n_in, density, active_out, active_in, generator) -> torch.Tensor:
    """Exact budget of links placed at random between the active rows and active columns."""
    n_links = link_budget(n_out, n_in, 1.0 - density)
    rows, cols = active_out.nonzero().squeeze(1), active_in.nonzero().squeeze(1)
    if n_links > len(rows) * len(cols):
        raise ValueError("too few active neurons for the link budget; raise --active")
    block = torch.randperm(len(rows) * len(cols), generator=generator)[:n_links]
    mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    mask[rows[block // len(cols)], cols[block % len(cols)]] = True
    return mask


def build_model(density: float, active: float, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # benchmark script: owns the global RNG
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    actives = [torch.ones(SIZES[0], dtype=torch.bool)]
    for width in SIZES[1:-1]:
        flags = torch.zeros(width, dtype=torch.bool)
        flags[torch.randperm(width, generator=g)[: max(1, round(active * width))]] = True
        actives.append(flags)
    with torch.no_grad():
        for i, name in enumerate(NAMES[:-1]):
            layer = model.get_submodule(name)
            mask = percolated_mask(SIZES[i + 1], SIZES[i], density, actives[i + 1], actives[i], g)
            layer.weight.mul_(mask)
            layer.register_buffer("weight_mask", mask)
        classifier = model.get_submodule(NAMES[-1])
        classifier.weight.mul_(actives[-1])  # percolation: dead neurons have no outgoing links
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument(
        "--active",
        type=float,
        nargs="+",
        default=[0.27, 1.0],
        help="fraction of active hidden neurons (0.27 = CHTsn's ANP on MNIST, Table 7)",
    )
    parser.add_argument("--max-density", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Inference latency: compacted / sparse exports vs dense")
    table = []
    for active in args.active:
        model = build_model(args.density, active, args.seed)
        alive = find_dead_neurons(model, [NAMES], activation=torch.relu)
        exports = {
            "compact": compact(model, [NAMES], activation=torch.relu).eval(),
            "sparse": to_sparse_inference(model, max_density=args.max_density),
        }
        exports["compact+sparse"] = to_sparse_inference(exports["compact"], max_density=args.max_density)
        widths = "-".join(str(int(alive[n].sum())) for n in NAMES[:-1])
        for batch in args.batch_sizes:
            x = torch.randn(batch, SIZES[0], generator=torch.Generator().manual_seed(args.seed + batch))
            with torch.inference_mode():
                jobs = {"dense": model, **exports}
                timing = interleave({n: (lambda m=m, x=x: m(x)) for n, m in jobs.items()}, args.repeats)
            for name, exported in exports.items():
                report = export_report(model, exported, x, repeats=3)  # sizes, FLOPs and the numerical check
                table.append((active, widths, batch, name, report, timing["dense"], timing[name]))
                r = report.ratios()
                print(
                    f"active {active:.2f} (hidden {widths}) batch {batch:4d} {name:15s}: "
                    f"dense {timing['dense'].ms()}, export {timing[name].ms()} "
                    f"-> x{timing['dense'].wall / timing[name].wall:.2f} "
                    f"faster; stored params /{r['params_stored']:.1f}; "
                    "FLOPs dense/export "
                    f"{report.original.executed_flops / max(1, report.exported.executed_flops):.1f}; "
                    f"max diff {report.max_abs_diff:.1e}",
                    flush=True,
                )
    lines = session.header(
        [
            f"- model: MLP {'-'.join(map(str, SIZES))}, density {args.density} in the hidden layers, synthetic "
            "percolated topology (see the script's docstring); latency = median of "
            f"{args.repeats} forwards in inference mode, interleaved "
            "with the dense original (wall ms, CPU ms in brackets)",
            "",
            "| active hidden | hidden widths after compaction | batch | export | dense latency | export latency "
            "| speed-up | stored params (dense / export) | FLOPs executed (dense / export) | max abs diff |",
            "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
    )
    for active, widths, batch, name, rep, t_dense, t_export in table:
        o, e = rep.original, rep.exported
        lines.append(
            f"| {active:.0%} | {widths} | {batch} | {name} | {t_dense.ms()} | {t_export.ms()} "
            f"| {t_dense.wall / t_export.wall:.2f}x | {o.params_stored:,} / {e.params_stored:,} "
            f"| {o.executed_flops:,} / {e.executed_flops:,} | {rep.max_abs_diff:.1e} |"
        )
    lines += [
        "",
        "FLOPs executed: links for CSR layers, every entry (zeros included) for dense layers.",
    ]
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
