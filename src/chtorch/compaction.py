"""Compaction and sparse export of a trained sparse network.

Dynamic sparse training with percolation leaves many hidden neurons *dead*: no incoming or no
outgoing links (the paper's "active neuron percentage", ANP; Zhang et al., NeurIPS 2025,
arXiv:2501.19107, Fig. 1 c and App. F). Such neurons can be cut out of the network without changing
what it computes:

* a neuron with no outgoing links influences nothing: drop it (and its incoming links);
* a neuron with no incoming links outputs the constant ``act(bias)``: fold
  ``W_next[:, j] * act(bias_j)`` into the next layer's bias, then drop it.

Removing one neuron can kill others (its neighbours lose links), so both rules run to a fixed point
along each *chain* of consecutive linear layers (layer ``i``'s outputs feed layer ``i+1``'s inputs
through an elementwise activation; an MLP's chain ends with its dense classifier, whose input columns
of dead neurons are dropped too). The chain's first inputs and last outputs are never removed.

* :func:`compact` returns a model with smaller dense ``nn.Linear`` layers and identical outputs.
* :func:`to_sparse_inference` stores linear layers as CSR (:class:`~chtorch.sparse.SparseInferenceLinear`).
* :func:`export_report` counts parameters and FLOPs (only links for sparse layers) and measures latency.

Links are the topology: a layer's ``weight_mask`` buffer (masked backend), a
:class:`~chtorch.sparse.SparseLinear`'s links, or ``weight != 0`` for a plain dense layer.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from chtorch.sparse import SparseInferenceLinear, SparseLinear

__all__ = [
    "compact",
    "find_dead_neurons",
    "to_sparse_inference",
    "export_report",
    "ExportReport",
    "ModelStats",
    "layer_links",
]

Activation = Callable[[torch.Tensor], torch.Tensor]


# --- reading layers -------------------------------------------------------------------------


def layer_links(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(weight, mask, bias)`` of a linear-like module, weight dense ``(out, in)`` and zero off the
    bool mask; ``None`` for other modules. Handles ``nn.Linear`` (with or without ``weight_mask``),
    ``SparseLinear`` and ``SparseInferenceLinear``."""
    if isinstance(module, SparseLinear):
        return module.dense_weight().detach(), module.weight_mask, _maybe(module.bias)
    if isinstance(module, SparseInferenceLinear):
        weight = module.dense_weight()
        mask = torch.zeros_like(weight, dtype=torch.bool).index_put_(
            (module.row_indices, module.col_indices), torch.tensor(True)
        )
        return weight, mask, _maybe(module.bias)
    if isinstance(module, nn.Linear):
        weight = module.weight.detach()
        buffer = getattr(module, "weight_mask", None)
        if buffer is None:
            return weight, weight != 0, _maybe(module.bias)
        mask = buffer.to(device=weight.device, dtype=torch.bool)
        return weight * mask, mask, _maybe(module.bias)
    return None


def _maybe(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _links(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`layer_links` of the layer ``name`` of ``model``, which must be linear-like."""
    module = model.get_submodule(name)
    found = layer_links(module)
    if found is None:
        raise TypeError(f"layer {name!r} is a {type(module).__name__}, not a linear layer")
    return found


def _has_topology(module: nn.Module) -> bool:
    return isinstance(module, (SparseLinear, SparseInferenceLinear)) or hasattr(module, "weight_mask")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


# --- compaction -----------------------------------------------------------------------------


@dataclass
class _ChainState:
    names: list[str]
    weights: list[torch.Tensor]  # (out_i, in_i), zero off the mask
    masks: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    alive: list[torch.Tensor]  # per hidden boundary b (output of layer b): bool (out_b,)
    bias_created: list[bool]


def _check_chains(model: nn.Module, chains: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(chains, str) or (chains and isinstance(chains[0], str)):
        raise TypeError("chains must be a list of chains, each a list of module names, e.g. [['fc1', 'fc2', 'out']]")
    seen: set[str] = set()
    checked = []
    for chain in chains:
        chain = list(chain)
        if len(chain) < 2:
            raise ValueError(f"a chain needs at least two consecutive linear layers, got {chain}")
        for name in chain:
            if name in seen:
                raise ValueError(f"layer {name!r} appears in more than one chain (or twice in one)")
            seen.add(name)
            if layer_links(model.get_submodule(name)) is None:
                raise TypeError(f"layer {name!r} is a {type(model.get_submodule(name)).__name__}, not a linear layer")
        for a, b in zip(chain, chain[1:]):
            wa, wb = _links(model, a)[0], _links(model, b)[0]
            if wa.shape[0] != wb.shape[1]:
                raise ValueError(
                    f"chain break: {a!r} has {wa.shape[0]} outputs but {b!r} has {wb.shape[1]} inputs; "
                    "a chain lists layers whose outputs feed the next layer through an elementwise activation"
                )
        checked.append(chain)
    return checked


def _solve_chain(model: nn.Module, names: list[str], activation: Activation | None) -> _ChainState:
    """Remove dead hidden neurons of one chain to a fixed point (see the module docstring)."""
    weights, masks, biases = [], [], []
    for name in names:
        weight, mask, bias = _links(model, name)
        weights.append(weight.clone())
        masks.append(mask.clone())
        biases.append(None if bias is None else bias.clone())
    alive = [torch.ones(w.shape[0], dtype=torch.bool, device=w.device) for w in weights[:-1]]
    bias_created = [False] * len(names)
    changed = True
    while changed:
        changed = False
        for b in range(len(names) - 1):
            nxt = b + 1
            no_out = alive[b] & ~masks[nxt].any(dim=0)
            no_in = alive[b] & ~masks[b].any(dim=1) & ~no_out
            if no_in.any():
                feeds = weights[nxt][:, no_in]  # (out_next, n_dead) outgoing weights of the dead neurons
                if (feeds != 0).any():
                    if activation is None:
                        raise ValueError(
                            f"{int(no_in.sum())} neuron(s) between {names[b]!r} and {names[nxt]!r} have outgoing "
                            "but no incoming links: they output the constant act(bias), which must be folded into "
                            f"{names[nxt]!r}'s bias. Pass activation=... (the chain's elementwise activation, "
                            "e.g. torch.relu)."
                        )
                    own_bias = biases[b]
                    pre = own_bias[no_in] if own_bias is not None else weights[b].new_zeros(int(no_in.sum()))
                    constant = activation(pre)
                    next_bias = biases[nxt]
                    if next_bias is None:
                        next_bias = weights[nxt].new_zeros(weights[nxt].shape[0])
                        bias_created[nxt] = True
                    biases[nxt] = next_bias + feeds @ constant
            dead = no_in | no_out
            if dead.any():
                changed = True
                alive[b] &= ~dead
                for tensor in (weights[b], masks[b]):
                    tensor[dead, :] = 0
                for tensor in (weights[nxt], masks[nxt]):
                    tensor[:, dead] = 0
    return _ChainState(names, weights, masks, biases, alive, bias_created)


def _empty_linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    # Built on the meta device (no memory, no init work); its Parameters are replaced right after.
    # Silences torch's "zero-element tensor" warning when every hidden neuron of a layer died.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(n_in, n_out, bias=bias, device="meta", dtype=dtype)


def find_dead_neurons(
    model: nn.Module, chains: Sequence[Sequence[str]], activation: Activation | None = None
) -> dict[str, torch.Tensor]:
    """``{layer name: bool (out_features,)}`` - which output neurons of each non-final chain layer
    stay alive after dead-neuron removal to a fixed point. ``activation`` is only needed when a
    neuron with outgoing but no incoming links must be folded (see :func:`compact`)."""
    result = {}
    for names in _check_chains(model, chains):
        state = _solve_chain(model, names, activation)
        result.update({name: alive.clone() for name, alive in zip(names, state.alive)})
    return result


def compact(
    model: nn.Module,
    chains: Sequence[Sequence[str]],
    activation: Activation | None = None,
    *,
    inplace: bool = False,
    keep_masks: bool = True,
) -> nn.Module:
    """A copy of ``model`` whose chain layers are smaller dense ``nn.Linear`` layers without the
    dead hidden neurons; it computes the same outputs (up to float rounding of folded biases).

    Args:
        chains: e.g. ``[["fc1", "fc2", "fc3", "classifier"]]`` - module names of consecutive linear
            layers joined by elementwise activations (no normalisation or residual in between).
        activation: the chains' elementwise activation (e.g. ``torch.relu``); needed only to fold the
            constant output of neurons that have outgoing but no incoming links (a clear error says
            so when it is needed and missing).
        inplace: modify ``model`` itself instead of a deep copy.
        keep_masks: give compacted layers that had a topology a sliced ``weight_mask`` buffer
            (so :func:`to_sparse_inference` and :func:`export_report` still see the links).

    Input features of a chain's first layer and outputs of its last layer are never removed, so
    the model's interface is unchanged. Shapes: layer ``i`` becomes
    ``(alive_i, alive_{i-1})`` where ``alive_{-1} = in_features`` and ``alive_last = out_features``.
    """
    chains = _check_chains(model, chains)
    states = [_solve_chain(model, names, activation) for names in chains]
    target = model if inplace else copy.deepcopy(model)
    for state in states:
        for i, name in enumerate(state.names):
            old = model.get_submodule(name)
            weight, mask, bias = state.weights[i], state.masks[i], state.biases[i]
            rows = state.alive[i] if i < len(state.names) - 1 else slice(None)
            cols = state.alive[i - 1] if i > 0 else slice(None)
            weight, mask = weight[rows][:, cols], mask[rows][:, cols]
            bias = None if bias is None else bias[rows]
            requires_grad = next(iter(old.parameters()), torch.empty(0)).requires_grad
            layer = _empty_linear(weight.shape[1], weight.shape[0], bias is not None, weight.dtype)
            layer.weight = nn.Parameter(weight.contiguous(), requires_grad=requires_grad)
            if bias is not None:
                layer.bias = nn.Parameter(bias.contiguous(), requires_grad=requires_grad)
            if keep_masks and _has_topology(old):
                layer.register_buffer("weight_mask", mask.contiguous(), persistent=True)
            layer.train(old.training)
            _set_submodule(target, name, layer)
    return target


# --- sparse storage for inference -------------------------------------------------------------


def to_sparse_inference(
    model: nn.Module,
    names: Sequence[str] | None = None,
    *,
    max_density: float = 0.2,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse linear layers are stored as CSR
    :class:`~chtorch.sparse.SparseInferenceLinear` modules.

    Args:
        names: layers to convert; default every layer with a topology (a ``weight_mask`` buffer or a
            ``SparseLinear``) whose density is at most ``max_density``.
        max_density: above it a CSR product is slower than a dense one (``benchmarks/inference.py``
            measures the cross-over), so such layers stay dense unless named explicitly.
    """
    target = model if inplace else copy.deepcopy(model)
    if names is None:
        names = []
        for name, module in target.named_modules():
            if not _has_topology(module) or isinstance(module, SparseInferenceLinear):
                continue
            found = layer_links(module)
            if found is None:
                continue
            _, mask, _ = found
            if float(mask.float().mean()) <= max_density:
                names.append(name)
    for name in names:
        module = target.get_submodule(name)
        found = layer_links(module)
        if found is None:
            raise TypeError(f"layer {name!r} is a {type(module).__name__}, not a linear layer")
        weight, mask, bias = found
        _set_submodule(target, name, SparseInferenceLinear(weight, bias, mask))
    return target.eval()


# --- report ------------------------------------------------------------------------------------


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
        effective += int(mask.sum()) if _has_topology(module) else mask.numel()
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
        links = int(mask.sum()) if _has_topology(module) else weight.numel()
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
