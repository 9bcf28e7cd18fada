"""The export report: parameters, FLOPs (only links for sparse layers) and latency of models."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from chtorch.compaction._common import has_topology, layer_links
from chtorch.sparse import SparseInferenceLinear, SparseLinear

__all__ = ["ModelStats", "ExportReport", "export_report"]


@dataclass
class ModelStats:
    """Size and cost of one model for one example input (linear layers' FLOPs only)."""

    params_stored: int  # numbers held in parameters and CSR value buffers (dense zeros included)
    params_effective: int  # links of sparse layers + all other parameters
    flops: int  # per forward: 2 * rows * links + rows * out (bias); masked and sparse layers count links only
    executed_flops: int  # what the kernels execute: links for sparse-format layers, every entry for nn.Linear
    dense_flops: int  # every linear layer counted dense
    latency_s: float  # median wall time of one forward (inference mode)


@dataclass
class ExportReport:
    original: ModelStats
    exported: ModelStats
    max_abs_diff: float  # largest |original(x) - exported(x)| on the example input
    threads: int

    def ratios(self) -> dict[str, float]:
        """original / exported for each measure (> 1 means the export is smaller or faster)."""
        o, e = self.original, self.exported
        return {
            "params_stored": o.params_stored / max(1, e.params_stored),
            "params_effective": o.params_effective / max(1, e.params_effective),
            "dense_flops": o.dense_flops / max(1, e.dense_flops),
            "executed_flops": o.executed_flops / max(1, e.executed_flops),
            "flops": o.flops / max(1, e.flops),
            "latency": o.latency_s / e.latency_s if e.latency_s > 0 else float("inf"),
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "ratios": self.ratios()}

    def to_markdown(self) -> str:
        o, e, r = self.original, self.exported, self.ratios()
        rows = [
            ("parameters stored", f"{o.params_stored:,}", f"{e.params_stored:,}", r["params_stored"]),
            ("parameters (links + dense)", f"{o.params_effective:,}", f"{e.params_effective:,}", r["params_effective"]),
            ("FLOPs / forward, dense execution", f"{o.dense_flops:,}", f"{e.dense_flops:,}", r["dense_flops"]),
            ("FLOPs / forward, as executed", f"{o.executed_flops:,}", f"{e.executed_flops:,}", r["executed_flops"]),
            ("FLOPs / forward, links only", f"{o.flops:,}", f"{e.flops:,}", r["flops"]),
            ("latency (median)", f"{o.latency_s * 1e3:.3f} ms", f"{e.latency_s * 1e3:.3f} ms", r["latency"]),
        ]
        lines = ["| | original | exported | original / exported |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {a} | {b} | {ratio:.2f}x |" for name, a, b, ratio in rows]
        return (
            "\n".join(lines)
            + f"\n\nmax |difference| of outputs: {self.max_abs_diff:.3g}; torch threads: {self.threads}\n"
        )


def _count_params(model: nn.Module) -> tuple[int, int]:
    stored = effective = 0
    linear_weights: set[int] = set()
    for module in model.modules():
        found = layer_links(module)
        if found is None:
            continue
        _, mask, bias = found
        n_bias = 0 if bias is None else bias.numel()
        if isinstance(module, SparseInferenceLinear):
            stored += module.nnz + n_bias
        elif isinstance(module, SparseLinear):
            linear_weights.add(id(module.values))
            stored += module.nnz  # bias counted with the other parameters
        else:
            assert isinstance(module, nn.Linear), "layer_links reads only linear-like modules"
            linear_weights.add(id(module.weight))
            stored += module.weight.numel()
        effective += int(mask.sum()) if has_topology(module) else mask.numel()
        if isinstance(module, SparseInferenceLinear):
            effective += n_bias
    for param in model.parameters():
        if id(param) not in linear_weights:
            stored += param.numel()
            effective += param.numel()
    return stored, effective


def _count_flops(model: nn.Module, example_input) -> tuple[int, int, int]:
    totals = [0, 0, 0]  # links only, as executed, dense

    def hook(module, inputs, output):
        weight, mask, bias = layer_links(module)
        rows = inputs[0].numel() // max(1, weight.shape[1])
        links = int(mask.sum()) if has_topology(module) else weight.numel()
        executed = links if isinstance(module, (SparseLinear, SparseInferenceLinear)) else weight.numel()
        extra = rows * weight.shape[0] if bias is not None else 0
        totals[0] += 2 * rows * links + extra
        totals[1] += 2 * rows * executed + extra
        totals[2] += 2 * rows * weight.numel() + extra

    handles = [m.register_forward_hook(hook) for m in model.modules() if layer_links(m) is not None]
    try:
        with torch.inference_mode():
            _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1], totals[2]


def _call(model: nn.Module, example_input):
    if isinstance(example_input, tuple):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


def export_report(
    original: nn.Module,
    exported: nn.Module,
    example_input,
    *,
    repeats: int = 30,
    warmup: int = 3,
) -> ExportReport:
    """Parameters, FLOPs (per forward on ``example_input``; sparse layers count only their links)
    and median latency of ``original`` and ``exported``, measured alternately in inference mode
    (both models are put in eval mode during the measurement and restored afterwards).

    ``example_input``: a tensor, a tuple of positional arguments or a dict of keyword arguments.
    FLOPs cover linear layers only (activations, attention products and norms are not counted).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    modes = (original.training, exported.training)
    original.eval()
    exported.eval()
    try:
        with torch.inference_mode():
            out_o, out_e = _call(original, example_input), _call(exported, example_input)
            diff = float((out_o.float() - out_e.float()).abs().max()) if out_o.numel() else 0.0
            times: dict[int, list[float]] = {0: [], 1: []}
            for _ in range(warmup):
                _call(original, example_input)
                _call(exported, example_input)
            for _ in range(repeats):  # alternate, so that drifting machine load hits both alike
                for key, model in ((0, original), (1, exported)):
                    start = time.perf_counter()
                    _call(model, example_input)
                    times[key].append(time.perf_counter() - start)
        stats = []
        for key, model in ((0, original), (1, exported)):
            stored, effective = _count_params(model)
            flops, executed, dense_flops = _count_flops(model, example_input)
            stats.append(ModelStats(stored, effective, flops, executed, dense_flops, statistics.median(times[key])))
    finally:
        original.train(modes[0])
        exported.train(modes[1])
    return ExportReport(stats[0], stats[1], diff, torch.get_num_threads())
