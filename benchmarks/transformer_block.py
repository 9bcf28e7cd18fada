"""Training step of one Transformer block, sparse vs dense.

A pre-norm block of the paper's Transformer shapes (Zhang et al., NeurIPS 2025, arXiv:2501.19107,
§4: d_model 512, FFN 2048, 8 heads): attention projections q, k, v, o (512x512) and the FFN (512x2048,
2048x512) are the sparse layers (``SparseLinear``, random masks at the given sparsity); layer norms and
the attention itself stay dense. A step is forward + backward + AdamW step + zero_grad on
``tokens`` tokens (sequences of 128). Variants are timed interleaved.

``--profile`` adds where a step's time goes: ``torch.profiler``'s self CPU time per operator, per step
(mean of ``--profile-steps`` steps after the timing), for every variant and shape; the sparse kernels
appear as ``chtorch_native::*`` (``to_panels`` is the conversion of an input or output gradient into
the kernels' layout).

    python -m benchmarks.transformer_block --out benchmarks/results/transformer-block-cpu.md
    python -m benchmarks.transformer_block --sparsities 0.95 --tokens 4096 --profile --out ...
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._common import Session, add_protocol_args, interleave
from chtorch.config import OptimConfig
from chtorch.sparse import to_sparse
from chtorch.train.optim import build_optimizer

D_MODEL, D_FFN, HEADS, SEQ = 512, 2048, 8, 128
SPARSE = ("q", "k", "v", "o", "ffn_in", "ffn_out")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.q, self.k, self.v, self.o = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.ffn_in, self.ffn_out = nn.Linear(D_MODEL, D_FFN), nn.Linear(D_FFN, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, HEADS, D_MODEL // HEADS).transpose(1, 2)

        att = nn.functional.scaled_dot_product_attention(
            heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), is_causal=True
        )
        x = x + self.o(att.transpose(1, 2).reshape(b, t, D_MODEL))
        return x + self.ffn_out(nn.functional.gelu(self.ffn_in(self.norm2(x))))


def make(kind: str, sparsity: float, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)  # benchmark script: owns the global RNG
    block = Block()
    opt = build_optimizer(block, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01))  # the trainer's (fused on CPU)
    if kind != "dense":
        g = torch.Generator().manual_seed(seed + 1)
        masks = {name: torch.rand(block.get_submodule(name).weight.shape, generator=g) >= sparsity for name in SPARSE}
        to_sparse(block, list(masks), masks, optimizer=opt, impl=kind.split("-", 1)[1])
    return block, opt


def profile_ops(step: Callable[[], None], steps: int, top: int) -> list[tuple[str, float]]:
    """The ``top`` operators by self CPU time, in ms per step, and the rest summed as ``(other)``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()), key=lambda kv: -kv[1])
    rest = sum(ms for _, ms in totals[top:])
    return [*totals[:top], ("(other)", rest)]


def profile_lines(profiles: list[tuple[float, int, str, list[tuple[str, float]]]]) -> list[str]:
    lines = ["", "## Where the time goes (torch.profiler, self CPU ms per step; the profiler adds some overhead)", ""]
    for sparsity, tokens, kind, ops in profiles:
        total = sum(ms for _, ms in ops)
        lines += [
            f"### {kind}, {sparsity:.0%}, {tokens} tokens: {total:.1f} ms per step",
            "",
            "| operator | ms / step | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{name}` | {ms:.2f} | {ms / total:.1%} |" for name, ms in ops]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--impls", nargs="+", default=["native", "csr"], choices=["native", "csr", "gather"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="add the per-operator breakdown of a step")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-top", type=int, default=12, help="operators listed per variant")
    add_protocol_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "Transformer block (d512, FFN 2048) training step: sparse vs dense")
    kinds = ["dense"] + [f"sparse-{i}" for i in args.impls]
    rows, profiles = [], []
    for sparsity in args.sparsities:
        for tokens in args.tokens:
            x = torch.randn(tokens // SEQ, SEQ, D_MODEL, generator=torch.Generator().manual_seed(args.seed))
            jobs = {}
            for kind in kinds:
                block, opt = make(kind, sparsity, args.seed)

                def step(block=block, opt=opt, x=x) -> None:
                    block(x).square().mean().backward()
                    opt.step()
                    opt.zero_grad()

                jobs[kind] = step
            t = interleave(jobs, args.repeats)
            rows.append((sparsity, tokens, t))
            if args.profile:
                profiles += [
                    (sparsity, tokens, kind, profile_ops(fn, args.profile_steps, args.profile_top))
                    for kind, fn in jobs.items()
                ]
            print(
                f"sparsity {sparsity:.0%} tokens {tokens}: " + ", ".join(f"{k} {v.ms()}" for k, v in t.items()),
                flush=True,
            )
    session.finish()
    lines = session.header(
        [
            f"- block: pre-norm, d_model {D_MODEL}, FFN {D_FFN}, {HEADS} heads, sequences of {SEQ}; sparse layers: "
            "q, k, v, o, FFN in/out (random masks); step = forward + backward + AdamW + zero_grad; "
            f"median of {args.repeats} interleaved samples (wall ms, CPU ms in brackets)",
            "",
            "| sparsity | tokens | " + " | ".join(kinds) + " | " + " | ".join(f"dense / {k}" for k in kinds[1:]) + " |",
            "|---:|---:|" + "---:|" * (2 * len(kinds) - 1),
        ]
    )
    for sparsity, tokens, t in rows:
        lines.append(
            f"| {sparsity:.0%} | {tokens} | "
            + " | ".join(t[k].ms() for k in kinds)
            + " | "
            + " | ".join(f"{t['dense'].wall / t[k].wall:.2f}x" for k in kinds[1:])
            + " |"
        )
    lines += profile_lines(profiles)
    print("\n".join(lines))
    session.write(lines)


if __name__ == "__main__":
    main()
