"""Speed of Cannistraci-Hebb link prediction: ch_l3n (auto: sparse-aware) and ch_l3p against the
plain dense four-GEMM CH2-L3n formulation of the official code, measured side by side in one run.

For every layer (n_out x n_in, random mask of the given density) each repeat runs, in turn, the
dense four-GEMM reference (``ch_l3n_dense_reference``), ``ch_l3n(method="auto")`` and
``ch_l3p`` (CH3); the table gives medians and the ratios reference/L3n and L3p/reference.
L3p is skipped where its batched-GEMM cost (``l3p_cost``) exceeds ``--l3p-max-gmac``.

Goals: L3n >= 10x faster than the four GEMMs at <= 2% density, never slower.

    python -m benchmarks.linkpred                  # full grids (several minutes on 1 core)
    python -m benchmarks.linkpred --quick          # small sizes, 1 repeat
    python -m benchmarks.linkpred --out benchmarks/results/linkpred-cpu-<date>.md
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from benchmarks._common import Session, add_protocol_args, measure
from chtorch.linkpred import ch_l3n, ch_l3n_dense_reference, ch_l3p, choose_method, l3p_cost

SIZES = (256, 512, 1024, 2048, 4096)
DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.3)
GRID_LAYERS = ((1024, 1024), (1568, 1568), (1024, 4096))
GRID_DENSITIES = (0.01, 0.05, 0.1, 0.3)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one call."""
    return measure(fn, 1, device)


def bench_layer(
    n_out: int, n_in: int, density: float, repeats: int, l3p_max_gmac: float, device: torch.device, seed: int
) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n_out, n_in, generator=g) < density).to(device)
    cost, _ = l3p_cost(mask)
    run_l3p = cost <= l3p_max_gmac * 1e9
    jobs: dict[str, Callable[[], object]] = {
        "ref": lambda: ch_l3n_dense_reference(mask, "CH2"),
        "l3n": lambda: ch_l3n(mask, "CH2"),
        "bags": lambda: ch_l3n(mask, "CH2", method="sparse"),  # the pure-PyTorch sparse path, for comparison
    }
    if run_l3p:
        jobs["l3p"] = lambda: ch_l3p(mask, "CH3")
    warm = sum(timed(fn, device)[0] for fn in jobs.values())  # warm-up
    # Fast layers get more repeats (up to ~1 s of work, at most 25): medians of a few ms are noisy.
    repeats = max(repeats, min(25, int(1.0 / max(warm, 1e-6))))
    wall: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):  # interleaved, so that load changes hit all alike
        for name, fn in jobs.items():
            w, c = timed(fn, device)
            wall[name].append(w)
            cpu[name].append(c)
    med = {name: statistics.median(values) for name, values in wall.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "layer": f"{n_out}x{n_in}",
        "density": density,
        "method": choose_method(mask),
        "repeats": repeats,
        "ref": med["ref"],
        "l3n": med["l3n"],
        "speedup": med["ref"] / med["l3n"],
        "speedup_cpu": med_cpu["ref"] / max(med_cpu["l3n"], 1e-9),
        "bags": med["bags"],
        "l3p": med.get("l3p"),
        "l3p_gmac": cost / 1e9,
    }


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def table(rows: list[dict[str, object]], l3p_max_gmac: float) -> str:
    head = (
        "| layer | density | 4-GEMM ref (ms) | L3n auto (ms) | auto method | ref / L3n (wall) | ref / L3n (CPU) "
        "| L3n PyTorch bags (ms) | L3p CH3 (ms) | L3p / ref | L3p GMAC "
        "| repeats |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        l3p = r["l3p"]
        l3p_ratio = f"{l3p / r['ref']:.2f}" if l3p is not None else f"skipped (> {l3p_max_gmac:g} GMAC)"
        lines.append(
            f"| {r['layer']} | {r['density'] * 100:g}% | {fmt_ms(r['ref'])} | {fmt_ms(r['l3n'])} | {r['method']} "
            f"| **{r['speedup']:.1f}x** | {r['speedup_cpu']:.1f}x | "
            f"{fmt_ms(r['bags'])} | {fmt_ms(l3p)} | {l3p_ratio} | {r['l3p_gmac']:.2f} "
            f"| {r['repeats']} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 256-1024, 1 repeat, shape grid on 1024x1024")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per layer (median reported)")
    parser.add_argument("--l3p-max-gmac", type=float, default=200.0, help="skip L3p above this many GMAC")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default=None, help="comma-separated square sizes (default 256..4096)")
    parser.add_argument("--no-shape-grid", action="store_true", help="skip the grid of the paper's layer shapes")
    add_protocol_args(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    session = Session(args, f"CH link prediction speed ({device.type})")
    sizes = SIZES[:3] if args.quick else SIZES
    if args.sizes:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    repeats = 1 if args.quick else args.repeats
    grid_layers = () if args.no_shape_grid else GRID_LAYERS[:1] if args.quick else GRID_LAYERS

    extra = [
        f"- median of >= {repeats} interleaved repeat(s) after one warm-up (more for fast layers, see the "
        f"last column); random masks (uniform, seed {args.seed})",
        "- times are wall-clock medians; the CPU-time ratio (process CPU "
        "time) is less sensitive to other processes on a shared machine",
        "- ref = plain dense four-GEMM CH2-L3n (`ch_l3n_dense_reference`, the official code's form); "
        "L3n = `ch_l3n(mask, 'CH2')` (method `auto`); PyTorch bags = `method='sparse'`; L3p = `ch_l3p(mask, 'CH3')`",
        "",
    ]
    header = "\n".join(extra)
    print(header, flush=True)
    sections = []
    for title, layers, densities in (
        ("Layer size x density (square layers)", [(n, n) for n in sizes], DENSITIES),
        ("Paper layer shapes", list(grid_layers), GRID_DENSITIES),
    ):
        if not layers:
            continue
        print(f"## {title}\n", flush=True)
        rows = []
        for n_out, n_in in layers:
            for density in densities:
                row = bench_layer(n_out, n_in, density, repeats, args.l3p_max_gmac, device, args.seed)
                rows.append(row)
                l3p_txt = f"{fmt_ms(row['l3p'])} ms" if row["l3p"] is not None else "skipped (too slow)"
                print(
                    f"  {row['layer']:>10} {density * 100:5.1f}%  ref {fmt_ms(row['ref']):>8} ms  "
                    f"L3n {fmt_ms(row['l3n']):>8} ms ({row['method']})  ref/L3n {row['speedup']:6.1f}x "
                    f"(CPU time {row['speedup_cpu']:5.1f}x)  "
                    f"L3p {l3p_txt:>11}",
                    flush=True,
                )
        text = table(rows, args.l3p_max_gmac)
        print("\n" + text, flush=True)
        sections.append(f"## {title}\n\n{text}")
    session.write(session.header(extra, device=device) + sections)


if __name__ == "__main__":
    main()
