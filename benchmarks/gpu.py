"""The sparse backend and CH2-L3n on CUDA, one command.

Measures, interleaved, on the first CUDA device:

* one hidden layer of the paper's MLP (1568x1568 at 99% sparsity) and of a Transformer FFN
  (512x2048 at 95%), forward + backward: ``SparseLinear`` (torch.sparse CSR / cuSPARSE) vs ``nn.Linear``,
  batches 256 and 4096;
* ``ch_l3n`` (CH2, method ``auto``) vs the dense four-GEMM reference at 1024² and 4096², densities
  1%, 2%, 5%.

Without a CUDA device it says so (and, with ``--out``, writes a file that says so and holds no
figures). Run the GPU tests with ``python -m pytest -m gpu``.

    python -m benchmarks.gpu --out benchmarks/results/gpu.md
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks._common import Session, Timing, add_protocol_args, interleave
from chtorch.linkpred import ch_l3n, ch_l3n_dense_reference
from chtorch.sparse import SparseLinear

LAYERS = ((1568, 1568, 0.99), (2048, 512, 0.95))  # (out, in, sparsity)


def layer_rows(batches: list[int], repeats: int, device: torch.device) -> list[tuple[str, int, Timing, Timing]]:
    rows = []
    for n_out, n_in, sparsity in LAYERS:
        g = torch.Generator().manual_seed(0)
        mask = (torch.rand(n_out, n_in, generator=g) >= sparsity).to(device)
        dense = nn.Linear(n_in, n_out).to(device)
        sparse = SparseLinear.from_linear(dense, mask)
        for batch in batches:
            x = torch.randn(batch, n_in, device=device, requires_grad=True)
            t = interleave(
                {name: (lambda m=m, x=x: m(x).sum().backward()) for name, m in (("dense", dense), ("sparse", sparse))},
                repeats,
                calls=5,
                device=device,
            )
            rows.append((f"{n_out}x{n_in} at {sparsity:.0%}", batch, t["dense"], t["sparse"]))
            print(f"{rows[-1][0]} batch {batch}: dense {t['dense'].ms()}, sparse {t['sparse'].ms()}", flush=True)
    return rows


def l3n_rows(
    sizes: list[int], densities: list[float], repeats: int, device: torch.device
) -> list[tuple[int, float, Timing, Timing]]:
    rows = []
    for n in sizes:
        for density in densities:
            mask = (torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < density).to(device)
            jobs = {"ref": ch_l3n_dense_reference, "l3n": ch_l3n}
            t = interleave({k: (lambda f=f, m=mask: f(m)) for k, f in jobs.items()}, repeats, device=device)
            rows.append((n, density, t["ref"], t["l3n"]))
            print(f"L3n {n}^2 {density:.0%}: ref {t['ref'].ms()}, l3n {t['l3n'].ms()}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--l3n-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--l3n-densities", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--repeats", type=int, default=10)
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Sparse backend and CH2-L3n on CUDA", measuring=torch.cuda.is_available())
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        session.write(
            session.header(
                [
                    "",
                    "**No CUDA device was available: nothing was measured.** The GPU paths are tested by "
                    "`python -m pytest -m gpu` (skipped here) and measured by this command on a machine with a GPU.",
                ]
            )
        )
        return
    device = torch.device("cuda")
    layers = layer_rows(args.batches, args.repeats, device)
    l3n = l3n_rows(args.l3n_sizes, args.l3n_densities, args.repeats, device)
    lines = session.header(
        [
            "- CUDA timings synchronised around each sample; CPU ms are the host's",
            "",
            "| layer | batch | dense | sparse | dense / sparse |",
        ],
        device=device,
    )
    lines.append("|---|---:|---:|---:|---:|")
    lines += [f"| {name} | {b} | {d.ms()} | {s.ms()} | {d.wall / s.wall:.2f}x |" for name, b, d, s in layers]
    lines += ["", "| CH2-L3n layer | density | 4-GEMM ref | ch_l3n auto | ref / L3n |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n}x{n} | {dens:.0%} | {r.ms()} | {v.ms()} | {r.wall / v.wall:.2f}x |" for n, dens, r, v in l3n]
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
