"""The parts a dynamic sparse training method is made of, as one typed, validated record.

A method (SET, RigL, CHTs, ...) is nothing but a named set of overrides of :class:`SparsityOptions`
(see :mod:`chtorch.dst.methods`); every field can be overridden again by the user. Field meanings follow
Zhang et al., "Brain network science modelling of sparse neural networks enables Transformers and
LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107), §3 and App. K.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SparsityOptions", "OptionError", "closest"]

REMOVALS = ("magnitude", "set", "ri", "mest")
SELECTIONS = ("topk", "soft")
REGROWTHS = ("random", "gradient", "ch", "none")
PREDICTORS = ("l3n", "l3p")
CH_VARIANTS = ("CH2", "CH3", "CH3.1", "RA")
REGROWN_INITS = ("zero", "history")
WEIGHT_INITS = ("keep", "swi")
DISTRIBUTIONS = ("uniform", "erk")
DENSITY_SCHEDULES = ("constant", "linear", "cubic", "sigmoid")
ZETA_ANNEALS = ("constant", "cosine")
PRUNE_SCORES = ("magnitude", "ri", "mest")


class OptionError(ValueError):
    """A sparsity option has a wrong name, type or value."""


def closest(name: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` when a candidate is close to ``name``, else ``""``."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass
class SparsityOptions:
    """Every part of a dynamic sparse training method.

    Schedule
        ``update_interval``: optimizer steps between topology updates (ΔT).
        ``t_end_fraction``: topology updates stop after ``t_end_fraction * total_steps`` (T_end);
        ``t_end`` (absolute step) overrides it. ``zeta``: fraction of active links removed at an
        update; ``zeta_anneal``: "constant" or "cosine" (ζ_t = ζ/2·(1+cos(πt/T_end))).
    Density
        ``distribution``: "uniform" (every layer the same sparsity, as in the paper) or "erk".
        ``density_schedule``: "constant", or a gradual decay ("linear", "cubic" = GMP/GraNet,
        "sigmoid" = CHTss) from ``initial_sparsity`` to the target, ending at
        ``decay_end_fraction * total_steps``, with curvature ``sigmoid_k``; ``prune_score`` ranks links
        for that decay (top-k); ``prune_with_history`` lets previously pruned weights compete with
        their last value (GMP's moving threshold). ``ems``: MEST's elastic mutation & soft memory
        bound (extra density 5% then 2.5% before the target).
    Initial topology
        ``init``: "erdos_renyi", "bsw", "brf", "bsf" or "csti"; ``init_options`` go to the
        initializer (``beta``, ``r``, ``degree``, ``correlation``); ``weight_init``: "keep" (mask the
        model's own init) or "swi" (sparse weight init, σ = sqrt(2/(density·fan_in))).
    Removal
        ``removal``: "magnitude", "set" (smallest positive and largest negative separately), "ri"
        (relative importance) or "mest" (|W| + λ|∇W|, λ = ``mest_lambda``); ``removal_selection``:
        "topk" or "soft" (sample the kept links with p ∝ score^T, T = δ/(1−δ), δ linear from
        ``delta_start`` to ``delta_end`` until T_end).
    Regrowth
        ``regrowth``: "random", "gradient" (|dense gradient| accumulated over the last
        ``grad_accumulation`` steps before an update), "ch" (Cannistraci-Hebb link prediction with
        ``ch_predictor`` "l3n"/"l3p" and ``ch_variant``) or "none"; ``regrowth_selection``: "topk" or
        "soft" (p ∝ score, with ``soft_floor`` added to every candidate when too few scores are
        positive); ``regrown_init``: "zero" or "history" (last value before removal).
    Attention heads
        ``head_groups``: glob pattern → number of heads, e.g. ``{"*.q_proj": 8, "*.k_proj": 8,
        "*.v_proj": 8}``: the rows of a matching layer are split into that many equal blocks (one per
        head) that each get their own exact budget, removal, and regrowth on the head's own bipartite
        graph (the official code's ``--attn_qkv_per_head_dst``).
    Percolation and early stop
        ``percolation``: remove the links of neurons left without links on one side, along
        ``couplings`` (None = consecutive selected layers form one chain); ``early_stop``: freeze a
        layer's topology once |removed ∩ regrown| / |regrown| ≥ this threshold (None = never).
    """

    update_interval: int = 100
    t_end_fraction: float = 0.75
    t_end: int | None = None
    zeta: float = 0.3
    zeta_anneal: str = "constant"

    distribution: str = "uniform"
    density_schedule: str = "constant"
    initial_sparsity: float = 0.5
    decay_end_fraction: float = 0.75
    sigmoid_k: float = 6.0
    prune_score: str = "magnitude"
    prune_with_history: bool = False
    ems: bool = False

    init: str = "erdos_renyi"
    init_options: dict = field(default_factory=dict)
    weight_init: str = "keep"

    removal: str = "magnitude"
    removal_selection: str = "topk"
    delta_start: float = 0.5
    delta_end: float = 0.9
    mest_lambda: float = 0.01

    regrowth: str = "random"
    regrowth_selection: str = "topk"
    ch_predictor: str = "l3n"
    ch_variant: str = "CH2"
    soft_floor: float = 1e-5
    grad_accumulation: int = 1
    regrown_init: str = "zero"

    percolation: bool = False
    couplings: Any = None
    early_stop: float | None = None
    head_groups: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> SparsityOptions:
        """A copy with ``overrides`` applied; an unknown name raises :class:`OptionError` naming the
        closest valid one."""
        names = self.field_names()
        for key in overrides:
            if key not in names:
                raise OptionError(f"unknown sparsity option {key!r}{closest(key, names)}; valid options: {', '.join(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # Tensors (a CSTI correlation matrix) and coupling objects are not plain config values.
        out["init_options"] = {k: v for k, v in self.init_options.items() if isinstance(v, (int, float, str, bool))}
        out["couplings"] = None if self.couplings is None else repr(self.couplings)
        return out

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise OptionError(f"{name}={value!r} is not one of {allowed}{closest(value, allowed)}")

        def number(name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f"{name} must be a number, got {type(value).__name__} {value!r}")
            bad_low = value <= low if low_open else value < low
            bad_high = value >= high if high_open else value > high
            if bad_low or bad_high:
                lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
                raise OptionError(f"{name}={value} is outside {lo}{low}, {high}{hi}")

        for name in ("update_interval", "grad_accumulation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a positive integer, got {value!r}")
        if self.t_end is not None and (isinstance(self.t_end, bool) or not isinstance(self.t_end, int) or self.t_end < 0):
            raise OptionError(f"t_end must be a non-negative integer step or None, got {self.t_end!r}")
        number("t_end_fraction", 0.0, 1.0)
        number("zeta", 0.0, 1.0)
        number("initial_sparsity", 0.0, 1.0, high_open=True)
        number("decay_end_fraction", 0.0, 1.0, low_open=True)
        number("sigmoid_k", 0.0, float("inf"), low_open=True)
        number("delta_start", 0.0, 1.0, high_open=True)
        number("delta_end", 0.0, 1.0, high_open=True)
        number("mest_lambda", 0.0, float("inf"))
        number("soft_floor", 0.0, float("inf"))
        choice("zeta_anneal", ZETA_ANNEALS)
        choice("distribution", DISTRIBUTIONS)
        choice("density_schedule", DENSITY_SCHEDULES)
        choice("prune_score", PRUNE_SCORES)
        choice("weight_init", WEIGHT_INITS)
        choice("removal", REMOVALS)
        choice("removal_selection", SELECTIONS)
        choice("regrowth", REGROWTHS)
        choice("regrowth_selection", SELECTIONS)
        choice("ch_predictor", PREDICTORS)
        choice("regrown_init", REGROWN_INITS)
        if self.ch_variant.upper() not in CH_VARIANTS:
            raise OptionError(f"ch_variant={self.ch_variant!r} is not one of {CH_VARIANTS}{closest(self.ch_variant, CH_VARIANTS)}")
        if self.ch_variant.upper() == "RA" and self.ch_predictor != "l3p":
            raise OptionError("ch_variant='RA' exists only for the path-based predictor: set ch_predictor='l3p'")
        if self.removal == "set" and self.removal_selection != "topk":
            raise OptionError(
                "removal='set' removes the smallest positive and largest negative weights deterministically; use removal_selection='topk'"
            )
        if self.early_stop is not None:
            number("early_stop", 0.0, 1.0)
        if not isinstance(self.head_groups, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in self.head_groups.items()
        ):
            raise OptionError(f"head_groups must map layer patterns to positive head counts, got {self.head_groups!r}")
        if not isinstance(self.init_options, Mapping):
            raise OptionError(f"init_options must be a mapping, got {type(self.init_options).__name__}")

    @property
    def needs_dense_gradient(self) -> bool:
        """True when a part reads the dense gradient (gradient regrowth, MEST's |∇W| term)."""
        uses_mest = self.removal == "mest" or (self.density_schedule != "constant" and self.prune_score == "mest")
        return self.regrowth == "gradient" or (uses_mest and self.mest_lambda > 0)
