"""What fresh pages cost the sparse kernels at large batches (the 4096-token
Transformer cell).

glibc serves an allocation of 32 MiB or more (the FFN activation of 4096 tokens x 2048 features is exactly
32 MiB) with a fresh ``mmap`` and returns it to the system when freed, so every such buffer is
page-faulted in again by its first writer. This script times, at one and two threads, the kernels of one
sparse 512 -> 2048 layer at 5% density on 4096 tokens: the forward ``spmm`` (a 32 MiB output), the input
gradient (8 MiB), the weight gradient (no large output), the conversion of a 32 MiB gradient into panels,
and a plain 32 MiB ``clone()``. Run it twice, without and with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` (freed buffers stay in the heap,
so no fresh pages after the first step); the results file's command line shows which.

    python -m benchmarks.fresh_pages --out benchmarks/results/fresh-pages-cpu.md
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python -m benchmarks.fresh_pages --out ...
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import Session, Timing, add_protocol_args, interleave
from chtorch.sparse import SparseLinear, get_kernel

TOKENS, N_IN, N_OUT, DENSITY = 4096, 512, 2048, 0.05


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Fresh pages: sparse kernels of a 512 -> 2048 layer on 4096 tokens")
    g = torch.Generator().manual_seed(args.seed)
    layer = SparseLinear(N_IN, N_OUT, torch.rand(N_OUT, N_IN, generator=g) < DENSITY, impl="native")
    kernel = get_kernel("native")
    forward, grad_input, grad_values, to_operand = kernel.forward, kernel.grad_input, kernel.grad_values, kernel.operand
    x = torch.randn(TOKENS, N_IN, generator=g)
    grad = torch.randn(TOKENS, N_OUT, generator=g)
    x_op, grad_op = to_operand(x), to_operand(grad)
    values, layout = layer.values.detach(), layer.layout
    parts = {
        "spmm forward (32 MiB out)": lambda: forward(x_op, values, None, layout, TOKENS),
        "spmm input gradient (8 MiB out)": lambda: grad_input(grad_op, values, layout, TOKENS),
        "sddmm weight gradient": lambda: grad_values(grad_op, x_op, values, layout),
        "to_panels of a 32 MiB gradient": lambda: to_operand(grad),
        "clone() of 32 MiB": lambda: grad.clone(),
    }
    timings: dict[int, dict[str, Timing]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        timings[threads] = interleave(parts, args.repeats)
    session.finish()
    lines = session.header(
        [
            f"- layer: SparseLinear {N_IN} -> {N_OUT}, density {DENSITY}, native kernels, {TOKENS} tokens; "
            f"median of {args.repeats} interleaved samples per thread count (wall ms, CPU ms in brackets)",
            "",
            "| part | 1 thread | 2 threads | scaling |",
            "|---|---:|---:|---:|",
        ]
    )
    for name in parts:
        one, two = timings[1][name], timings[2][name]
        lines.append(f"| {name} | {one.ms()} | {two.ms()} | {one.wall / two.wall:.2f}x |")
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
