"""Where the time of a truly sparse training step goes, and of CH2-L3n.

The paper's MLP 784-1568-1568-1568-10 at 99% sparsity (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
Table 4), hidden layers as ``SparseLinear``. For each kernel implementation, thread count and batch
the script times, interleaved (median wall and CPU ms per call):

* ``step``           forward + backward + optimizer.step + zero_grad (what training pays);
* ``fwd+bwd``        forward + loss + backward;
* ``forward``        forward with autograd recording;
* ``kernels fwd``    the three sparse forward products alone (sum over layers);
* ``kernels dx``     the three input-gradient products alone;
* ``kernels dW``     the three weight-gradient (SDDMM) products alone;
* ``dense rest``     the dense classifier forward + backward, ReLUs and the loss alone;
* ``optimizer``      optimizer.step alone (SGD momentum / AdamW over the values and the dense rest);
* ``zero_grad``      optimizer.zero_grad alone;
* ``overhead``       fwd+bwd minus the kernels and the dense rest: Python, autograd nodes, layout
                     conversions (into the native kernels' feature-major panels), allocation.

Masking costs nothing on the sparse backend (the topology is the index structure); the masked dense
backend's per-step re-masking is timed by ``benchmarks.sparse_training`` (variant ``masked``).

CH2-L3n at the given sizes and densities: ``prep`` (neighbour lists, in PyTorch) and the native kernel,
beside the pure-PyTorch bag sums and the dense four-GEMM reference.

    python -m benchmarks.profile_step --out benchmarks/results/profile-sparse-step-cpu.md
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks._common import Session, Timing, add_protocol_args, interleave
from benchmarks.sparse_training import SIZES, SPARSE_LAYERS, Variant, random_mask
from chtorch.linkpred import ch_l3n, ch_l3n_dense_reference
from chtorch.linkpred._common import neighbours
from chtorch.linkpred.l3n import _l3n_native
from chtorch.sparse import SparseLinear, get_kernel, native

PARTS = (
    "step",
    "fwd+bwd",
    "forward",
    "kernels fwd",
    "kernels dx",
    "kernels dW",
    "dense rest",
    "optimizer",
    "zero_grad",
)


def profile_mlp(impl: str, optimizer: str, batch: int, masks: dict, repeats: int, seed: int) -> dict[str, Timing]:
    variant = Variant(f"sparse-{impl}", masks, optimizer, seed)
    model, opt = variant.model, variant.optimizer
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (batch,), generator=g)
    # Inputs each sparse layer sees in training (batch-major: the layers return ordinary tensors).
    layers = [model.get_submodule(n) for n in SPARSE_LAYERS]
    assert all(isinstance(layer, SparseLinear) for layer in layers)
    with torch.no_grad():
        inputs, h = [], x
        for module in model:
            if isinstance(module, SparseLinear):
                inputs.append(h)
            h = module(h)
    kernel = get_kernel(impl)
    forward, grad_input, grad_values = kernel.forward, kernel.grad_input, kernel.grad_values
    to_operand = kernel.operand  # the layout the kernels read (native: feature-major panels)
    grads = [torch.randn(batch, layer.out_features, generator=g) for layer in layers]
    classifier = model[len(model) - 1]
    last_hidden = inputs[-1].detach().clone()

    def step() -> None:
        variant.step(x, y)

    def fwd_bwd() -> None:
        nn.functional.cross_entropy(model(x), y).backward()

    def fwd() -> None:
        model(x)

    def k_fwd() -> None:
        for layer, inp in zip(layers, inputs):
            forward(to_operand(inp), layer.active_values().detach(), layer.bias.detach(), layer.layout, batch)

    def k_dx() -> None:
        for layer, grad in zip(layers, grads):
            grad_input(to_operand(grad), layer.active_values().detach(), layer.layout, batch)

    # the backward converts the output gradient once for dx and dW (counted in dx), the input was converted by the
    # forward
    converted = [(to_operand(grad), to_operand(inp)) for grad, inp in zip(grads, inputs)]

    def k_dw() -> None:
        for layer, (grad, inp) in zip(layers, converted):
            grad_values(grad, inp, layer.active_values().detach(), layer.layout)

    def dense_rest() -> None:
        h = torch.relu(last_hidden.requires_grad_(True))
        nn.functional.cross_entropy(classifier(h), y).backward()
        for _ in range(2):  # the other two ReLUs, forward and backward
            a = inputs[1].detach().requires_grad_(True)
            torch.relu(a).backward(grads[0])

    def opt_step() -> None:
        opt.step()

    def zero() -> None:
        opt.zero_grad(set_to_none=False)

    fwd_bwd()  # gradients exist, so optimizer.step does the full work
    jobs = {
        "step": step,
        "fwd+bwd": fwd_bwd,
        "forward": fwd,
        "kernels fwd": k_fwd,
        "kernels dx": k_dx,
        "kernels dW": k_dw,
        "dense rest": dense_rest,
        "optimizer": opt_step,
        "zero_grad": zero,
    }
    return interleave(jobs, repeats, calls=3, warmup=2)


def profile_l3n(n: int, density: float, repeats: int, seed: int) -> dict[str, Timing]:
    mask = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < density
    jobs = {
        "dense 4-GEMM": lambda: ch_l3n_dense_reference(mask),
        "PyTorch bags": lambda: ch_l3n(mask, method="sparse"),
        "prep (neighbour lists)": lambda: neighbours(mask),
    }
    if native.available():
        # the native kernel builds its own neighbour lists (in C++): its prep is this one
        jobs["prep (neighbour lists)"] = lambda: native.load().neighbour_lists(mask)
        jobs["native total"] = lambda: _l3n_native(mask, "CH2")
    return interleave(jobs, repeats, warmup=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--impls", nargs="+", default=["native", "csr"], choices=["native", "csr", "gather"])
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--l3n-sizes", type=int, nargs="*", default=[1024, 1568])
    parser.add_argument("--l3n-densities", type=float, nargs="*", default=[0.01, 0.02, 0.05])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Profile of the truly sparse training step and of CH2-L3n")
    impls = [i for i in args.impls if i != "native" or native.available()]

    g = torch.Generator().manual_seed(args.seed)
    masks = {name: random_mask(SIZES[i + 1], SIZES[i], args.density, g) for i, name in enumerate(SPARSE_LAYERS)}
    mlp_rows, l3n_rows = [], []
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        for impl in impls:
            for opt_name in args.optimizers:
                for batch in args.batch_sizes:
                    t = profile_mlp(impl, opt_name, batch, masks, args.repeats, args.seed)
                    mlp_rows.append((threads, impl, opt_name, batch, t))
                    print(
                        f"{threads} thr {impl} {opt_name} batch {batch}: "
                        + ", ".join(f"{k} {v.ms()}" for k, v in t.items()),
                        flush=True,
                    )
        for n in args.l3n_sizes:
            for density in args.l3n_densities:
                t = profile_l3n(n, density, max(3, args.repeats // 3), args.seed)
                l3n_rows.append((threads, n, density, t))
                print(
                    f"{threads} thr L3n {n}^2 {density:.0%}: " + ", ".join(f"{k} {v.ms()}" for k, v in t.items()),
                    flush=True,
                )
    session.finish()

    lines = session.header(
        [
            f"- model: MLP {'-'.join(map(str, SIZES))}, density "
            f"{args.density} in the three hidden layers (SparseLinear), "
            "classifier dense; wall ms per call, process CPU ms in "
            "brackets; parts timed interleaved, 3 calls per sample, "
            f"median of {args.repeats}",
            "- overhead = fwd+bwd − (kernels fwd + dx + dW) − dense "
            "rest: Python, autograd nodes, transposes, allocation",
            "",
            "| threads | impl | optimizer | batch | " + " | ".join(PARTS) + " | overhead | overhead share of step |",
            "|---:|---|---|---:|" + "---:|" * (len(PARTS) + 2),
        ]
    )
    for threads, impl, opt_name, batch, t in mlp_rows:
        kernels = t["kernels fwd"].wall + t["kernels dx"].wall + t["kernels dW"].wall
        overhead = t["fwd+bwd"].wall - kernels - t["dense rest"].wall
        lines.append(
            f"| {threads} | {impl} | {opt_name} | {batch} | "
            + " | ".join(t[p].ms() for p in PARTS)
            + f" | {overhead * 1e3:.2f} ms | {overhead / t['step'].wall:.0%} |"
        )
    names = list(l3n_rows[0][3]) if l3n_rows else []
    lines += [
        "",
        "CH2-L3n (square layers, random masks): the dense four-GEMM reference, the pure-PyTorch bag sums, and the "
        "native kernel with its PyTorch preparation (neighbour lists) shown apart.",
        "",
        "| threads | layer | density | " + " | ".join(names) + " | prep share of native |",
        "|---:|---|---:|" + "---:|" * (len(names) + 1),
    ]
    for threads, n, density, t in l3n_rows:
        share = f"{t['prep (neighbour lists)'].wall / t['native total'].wall:.0%}" if "native total" in t else "-"
        lines.append(
            f"| {threads} | {n}x{n} | {density:.0%} | " + " | ".join(t[k].ms() for k in names) + f" | {share} |"
        )
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
