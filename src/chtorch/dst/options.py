"""The parts a dynamic sparse training method is made of, as one typed, validated record.

A method (SET, RigL, CHTs, ...) is nothing but a named set of overrides of :class:`SparsityOptions`
(see :mod:`chtorch.dst.methods`); every field can be overridden again by the user. Field meanings follow
Zhang et al., "Brain network science modelling of sparse neural networks enables Transformers and
LLMs to perform as fully connected", NeurIPS 2025 (arXiv:2501.19107), §3 and App. K.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chtorch._checks import check_choice, check_number, closest
from chtorch.dst.registry import get_part, registry
from chtorch.dst.schedules import is_update_step
from chtorch.topology import get_initializer

__all__ = ["SparsityOptions", "OptionError", "PART_OPTIONS", "PART_BAGS", "check_engine_args"]

#: Part kind -> the option bag of its keyword parameters (beside ``init_options`` of the initialiser).
PART_BAGS = {"removal": "removal_options", "regrowth": "regrowth_options"}
# How many leading arguments the engine passes a part of each kind (removal: weight, mask; regrowth: keep).
_POSITIONAL_INPUTS = {"removal": 2, "regrowth": 1}

# Plain choices that are not parts (no behaviour of their own to register).
PREDICTORS = ("l3n", "l3p")
CH_VARIANTS = ("CH2", "CH3", "CH3.1", "RA")
DISTRIBUTIONS = ("uniform", "erk")
ZETA_ANNEALS = ("constant", "cosine")
REGROWTH_CANDIDATES = ("all", "live")
EMS_MODES = ("official", "schedule")
EARLY_STOP_SCOPES = ("network", "layer")
REVIVED_INITS = ("zero", "history")
READMITTED = ("keep", "reset")
FINAL_UPDATES = ("before_t_end", "at_t_end")  # chtorch.dst.schedules.FINAL_UPDATES (checked equal in the tests)

#: Option name -> kind of registered part it names (see :mod:`chtorch.dst.registry`).
PART_OPTIONS = {
    "init": "topology",
    "weight_init": "weight_init",
    "removal": "removal",
    "prune_score": "removal",
    "removal_selection": "selection",
    "regrowth_selection": "selection",
    "temperature_schedule": "temperature_schedule",
    "regrowth": "regrowth",
    "regrown_init": "regrown_init",
    "density_schedule": "density_schedule",
}


class OptionError(ValueError):
    """A sparsity option has a wrong name, type or value."""


@dataclass
class SparsityOptions:
    """Every part of a dynamic sparse training method.

    Schedule
        ``update_interval``: optimizer steps between topology updates (ΔT).
        ``t_end_fraction``: topology updates stop after ``t_end_fraction * total_steps`` (T_end);
        ``t_end`` (absolute step) overrides it. ``final_update``: "before_t_end" (updates while
        step < T_end, the official MLP and Transformer code) or "at_t_end" (while step <= T_end, the
        LLaMA code; the density-decay presets, whose only code it is). ``zeta``: fraction of active
        links removed at an update; ``zeta_anneal``: "constant" or "cosine" (ζ_t = ζ/2·(1+cos(πt/T_end))).
    Density
        ``distribution``: "uniform" (every layer the same sparsity, as in the paper) or "erk".
        ``density_schedule``: "constant", or a gradual decay ("linear", "cubic" = GMP/GraNet,
        "sigmoid" = CHTss) from ``initial_sparsity`` to the target, ending at
        ``decay_end_fraction * total_steps``, with curvature ``sigmoid_k``; ``prune_score`` ranks links
        for that decay (top-k); ``prune_with_history`` lets previously pruned weights compete with
        their last value (GMP's moving threshold), and ``revived_init`` says what value such a revived
        weight restarts from ("zero", as the official code, or "history"). ``ems``: MEST's elastic
        mutation & soft memory bound (extra density 5% then 2.5% before the target); ``ems_mode``:
        "official" (each update keeps only the target-density core by the removal score, ζ ignored,
        percolates, then regrows the extra density; the last stage keeps the core only) or
        "schedule" (the extra only raises the budget, ζ removal on top).
    Initial topology
        ``init``: "erdos_renyi", "bsw", "brf", "bsf" or "csti"; ``init_options`` go to the
        initializer (``beta``, ``r``, ``degree``, ``correlation``); ``weight_init``: "keep" (mask the
        model's own init) or "swi" (sparse weight init, σ = sqrt(2/(density·fan_in))).
    Option bags
        ``removal_options`` / ``regrowth_options``: keyword parameters of the chosen ``removal`` /
        ``regrowth`` part (a part you register reads its own parameters from here, so none of its
        settings has to become a field of this record); checked against the part's signature.
    Removal
        ``removal``: "magnitude", "set" (smallest positive and largest negative separately), "ri"
        (relative importance) or "mest" (|W| + λ|∇W|, λ = ``mest_lambda``); ``removal_selection``:
        "topk" or "soft" (sample the kept links with p ∝ score^T); ``temperature_schedule``: how T
        moves until T_end ("linear": T linear from ``temperature_start`` to ``temperature_end``, as
        both official codes; "paper": δ linear from ``delta_start`` to ``delta_end``, T = 1/(1−δ);
        "delta": the same δ, T = δ/(1−δ); "temperature": T linear between δ/(1−δ) at the two ends).
    Regrowth
        ``regrowth``: "random", "gradient" (|dense gradient| accumulated over the last
        ``grad_accumulation`` steps before an update, summed in ``grad_accumulation_dtype``: "float32",
        or "param", the weights' own dtype as the official LLaMA code in bf16: Table 10), "ch"
        (Cannistraci-Hebb link prediction with
        ``ch_predictor`` "l3n"/"l3p" and ``ch_variant``) or "none"; ``regrowth_selection``: "topk" or
        "soft" (p ∝ score, with ``soft_floor`` added to every candidate when too few scores are
        positive); ``regrowth_candidates``: "all" (every non-link, so a neuron that percolation
        disconnected can be reconnected through the floor, as the official MLP/Transformer code) or
        "live" (non-links between neurons that keep a link on each side, widening to every non-link
        only when too few); ``regrown_init``: "zero" or "history" (last value before removal);
        ``readmitted``: a link removed (or percolated) and regrown in the same update "keep"s its
        weight and optimizer state, as every official code, or is "reset" like a new link.
    Attention heads
        ``head_groups``: glob pattern → number of heads, e.g. ``{"*.q_proj": 8, "*.k_proj": 8,
        "*.v_proj": 8}``: the rows of a matching layer are split into that many equal blocks (one per
        head) that each get their own exact budget, removal, and regrowth on the head's own bipartite
        graph (the official code's ``--attn_qkv_per_head_dst``).
    Percolation and early stop
        ``percolation``: remove the links of neurons left without links on one side, along
        ``couplings`` (None = consecutive selected layers form one chain); ``early_stop``: the CHT
        overlap threshold θ on |removed ∩ regrown| / |regrown| (None = never); ``early_stop_scope``:
        "network" (every layer's overlap has once been > θ: the topology stops evolving, as the
        official code) or "layer" (each layer freezes once its overlap is ≥ θ).
    Training loop
        ``skip_step_on_update``: the optimizer step of an iteration that runs a topology update is
        skipped, as in the official MLP and LLaMA codes (their ``pruner()`` returns False there); the
        Transformer code does not skip. :meth:`DynamicSparsity.skips_optimizer_step` tells a
        training loop when (``chtorch train`` follows it; docs/decisions.md).
    """

    update_interval: int = 100
    t_end_fraction: float = 0.75
    t_end: int | None = None
    final_update: str = "before_t_end"
    zeta: float = 0.3
    zeta_anneal: str = "constant"

    distribution: str = "uniform"
    density_schedule: str = "constant"
    initial_sparsity: float = 0.5
    decay_end_fraction: float = 0.75
    sigmoid_k: float = 6.0
    prune_score: str = "magnitude"
    prune_with_history: bool = False
    revived_init: str = "zero"
    ems: bool = False
    ems_mode: str = "official"

    init: str = "erdos_renyi"
    init_options: dict = field(default_factory=dict)
    weight_init: str = "keep"

    removal: str = "magnitude"
    removal_options: dict = field(default_factory=dict)
    removal_selection: str = "topk"
    temperature_schedule: str = "linear"
    temperature_start: float = 1.0
    temperature_end: float = 3.0
    delta_start: float = 0.5
    delta_end: float = 0.9
    mest_lambda: float = 0.01

    regrowth: str = "random"
    regrowth_options: dict = field(default_factory=dict)
    regrowth_selection: str = "topk"
    ch_predictor: str = "l3n"
    ch_variant: str = "CH2"
    soft_floor: float = 1e-5
    regrowth_candidates: str = "all"
    grad_accumulation: int = 1
    grad_accumulation_dtype: str = "float32"
    regrown_init: str = "zero"
    readmitted: str = "keep"

    percolation: bool = False
    couplings: Any = None
    early_stop: float | None = None
    early_stop_scope: str = "network"
    head_groups: dict = field(default_factory=dict)
    skip_step_on_update: bool = False

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
                raise OptionError(
                    f"unknown sparsity option {key!r}{closest(key, names)}; valid options: {', '.join(names)}"
                )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # Tensors (a CSTI correlation matrix) and coupling objects are not plain config values.
        for bag in ("init_options", *PART_BAGS.values()):
            out[bag] = {k: v for k, v in getattr(self, bag).items() if isinstance(v, (int, float, str, bool))}
        out["couplings"] = None if self.couplings is None else _describe_couplings(self.couplings)
        return out

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; the valid names of a part-naming option are the registered parts
        (:mod:`chtorch.dst.registry`), so a user's registered part is valid here too."""

        def number(name: str, low: float | None, high: float | None = None, **kw: Any) -> None:
            check_number(name, getattr(self, name), low, high, error=OptionError, **kw)

        number("update_interval", 1, integer=True, hint="optimizer steps between topology updates")
        number("grad_accumulation", 1, integer=True)
        check_choice("grad_accumulation_dtype", self.grad_accumulation_dtype, ("float32", "param"), error=OptionError)
        number("t_end", 0, integer=True, allow_none=True, hint="the step after which the topology is frozen")
        number("t_end_fraction", 0, 1)
        number("zeta", 0, 1)
        number("initial_sparsity", 0, 1, high_open=True)
        number("decay_end_fraction", 0, 1, low_open=True)
        number("sigmoid_k", 0, low_open=True)
        number("delta_start", 0, 1, high_open=True)
        number("delta_end", 0, 1, high_open=True)
        number("mest_lambda", 0)
        number("temperature_start", 0, hint="the removal temperature T at step 0 (temperature_schedule='linear')")
        number("temperature_end", 0, hint="the removal temperature T at T_end (temperature_schedule='linear')")
        number("soft_floor", 0)
        number("early_stop", 0, 1, allow_none=True)
        check_choice("zeta_anneal", self.zeta_anneal, ZETA_ANNEALS, error=OptionError)
        check_choice("final_update", self.final_update, FINAL_UPDATES, error=OptionError)
        check_choice("distribution", self.distribution, DISTRIBUTIONS, error=OptionError)
        check_choice("ch_predictor", self.ch_predictor, PREDICTORS, error=OptionError)
        check_choice("regrowth_candidates", self.regrowth_candidates, REGROWTH_CANDIDATES, error=OptionError)
        check_choice("ems_mode", self.ems_mode, EMS_MODES, error=OptionError)
        check_choice("early_stop_scope", self.early_stop_scope, EARLY_STOP_SCOPES, error=OptionError)
        check_choice("revived_init", self.revived_init, REVIVED_INITS, error=OptionError)
        check_choice("readmitted", self.readmitted, READMITTED, error=OptionError)
        for name, kind in PART_OPTIONS.items():
            value = getattr(self, name)
            if value not in registry(kind):
                names = registry(kind).names()
                raise OptionError(f"{name}={value!r} is not one of {names}{closest(value, names)}")
        if self.prune_score in registry("removal") and "rule" in registry("removal").part(self.prune_score).flags:
            raise OptionError(
                f"prune_score={self.prune_score!r} is a rule, not a score: a "
                "density decay ranks links by a score (magnitude, ri, mest, ...)"
            )
        if not isinstance(self.ch_variant, str) or self.ch_variant.upper() not in CH_VARIANTS:
            raise OptionError(
                f"ch_variant={self.ch_variant!r} is not one of {CH_VARIANTS}{closest(self.ch_variant, CH_VARIANTS)}"
            )
        if self.ch_variant.upper() == "RA" and self.ch_predictor != "l3p":
            raise OptionError("ch_variant='RA' exists only for the path-based predictor: set ch_predictor='l3p'")
        removal = registry("removal").part(self.removal)
        if "deterministic" in removal.flags and self.removal_selection != "topk":
            raise OptionError(
                f"removal={self.removal!r} is deterministic (it picks "
                "the removed links itself); use removal_selection='topk'"
            )
        if not isinstance(self.head_groups, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in self.head_groups.items()
        ):
            raise OptionError(f"head_groups must map layer patterns to positive head counts, got {self.head_groups!r}")
        for name in ("prune_with_history", "ems", "percolation", "skip_step_on_update"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(
                    f"{name} must be true or false, got {type(getattr(self, name)).__name__} {getattr(self, name)!r}"
                )
        for bag in ("init_options", *PART_BAGS.values()):
            if not isinstance(getattr(self, bag), Mapping):
                raise OptionError(f"{bag} must be a mapping, got {type(getattr(self, bag)).__name__}")
        self._check_init_options()
        self._check_part_bags()

    def _check_part_bags(self) -> None:
        """``removal_options`` / ``regrowth_options`` keys must be keyword parameters of the chosen part's
        function that the engine does not pass itself and no option already sets (``part.params``)."""
        for kind, bag in PART_BAGS.items():
            given = getattr(self, bag)
            if not given:
                continue
            part = registry(kind).part(getattr(self, kind))
            params = inspect.signature(part.fn).parameters
            engine_given = {"grad", *list(params)[: _POSITIONAL_INPUTS[kind]]}
            valid = [
                name
                for name, p in params.items()
                if name not in engine_given
                and name not in part.params
                and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            ]
            open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            for key in given:
                if key in part.params:
                    raise OptionError(
                        f"{bag} key {key!r}: {kind} {part.name!r} reads it from option {part.params[key]!r}; "
                        f"set {part.params[key]}=... instead"
                    )
                if key not in valid and not open_ended:
                    raise OptionError(
                        f"{bag} key {key!r} is not a parameter of {kind}={part.name!r}{closest(key, valid)}; "
                        f"valid keys: {', '.join(valid) if valid else 'none (this part takes no parameters)'}"
                    )

    def _check_init_options(self) -> None:
        """``init_options`` keys must be keyword arguments of the ``init`` initialiser (its values are
        checked by the initialiser itself when the engine draws the first masks)."""
        params = inspect.signature(get_initializer(self.init)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        engine_given = {"n_out", "n_in", "sparsity", "n_links", "generator"}
        valid = [
            name
            for name, p in params.items()
            if name not in engine_given and p.kind is not inspect.Parameter.VAR_POSITIONAL
        ]
        for key in self.init_options:
            if key not in valid:
                raise OptionError(
                    f"init_options key {key!r} is not an option of init={self.init!r}{closest(key, valid)}; "
                    f"valid keys: {', '.join(valid) if valid else 'none (this initialiser takes no options)'}"
                )

    def part_kwargs(self, part: Any) -> dict[str, Any]:
        """The keyword arguments of a registered ``part`` under these options: the options it maps
        (``part.params``) and, when it is the chosen part of a kind with a bag (``removal_options``,
        ``regrowth_options``), the bag's entries."""
        kwargs = part.kwargs(self)
        bag = PART_BAGS.get(part.kind)
        if bag and getattr(self, bag) and registry(part.kind).part(getattr(self, part.kind)) is part:
            kwargs.update(getattr(self, bag))
        return kwargs

    # -- what the parts need --------------------------------------------------------------------
    def parts_in_use(self) -> dict[str, tuple[str, str]]:
        """Option name -> (kind, part name) of every part these options actually run: removal only
        when ζ > 0 or under the official EM&S, the prune score only under a density decay or EM&S,
        the temperature only for a soft removal."""
        used = {"init", "weight_init", "regrowth", "regrowth_selection", "regrown_init"}
        if self.zeta > 0 or (
            self.ems and self.ems_mode == "official"
        ):  # official EM&S removes by the removal score, ζ or not
            used |= {"removal", "removal_selection"}
            if self.removal_selection != "topk":
                used.add("temperature_schedule")
        if self.density_schedule != "constant" or self.ems:
            used |= {"density_schedule", "prune_score"}
        return {name: (kind, getattr(self, name)) for name, kind in PART_OPTIONS.items() if name in used}

    def needs(self) -> dict[str, list[str]]:
        """Capability -> the options whose parts need it, e.g. ``{"dense_gradient": ["regrowth"]}``,
        from the parts' own declarations (:mod:`chtorch.dst.registry`)."""
        out: dict[str, list[str]] = {}
        for option, (kind, name) in self.parts_in_use().items():
            for need in get_part(kind, name).needs_for(self):
                out.setdefault(need, []).append(option)
        if self.prune_with_history:
            out.setdefault("weight_history", []).append("prune_with_history")
        return out

    @property
    def needs_dense_gradient(self) -> bool:
        """True when a part in use declares that it reads the dense gradient (gradient regrowth,
        MEST's |∇W| term with λ > 0, or a user's part)."""
        return "dense_gradient" in self.needs()

    @property
    def needs_weight_history(self) -> bool:
        """True when removed weights must be remembered (history regrowth, GMP's moving threshold)."""
        return "weight_history" in self.needs()


def check_engine_args(sparsity: float, total_steps: int, options: SparsityOptions) -> None:
    """The checks that need the engine's arguments beside the options (``OptionError`` or
    ``ValueError`` naming the value and the fix)."""
    check_number("sparsity", sparsity, 0, 1, high_open=True, hint="the fraction of zeros; 0.99 keeps 1% of links")
    check_number("total_steps", total_steps, 1, integer=True, hint="optimizer steps of the whole run")
    if options.density_schedule != "constant" and options.initial_sparsity > sparsity:
        raise OptionError(
            f"initial_sparsity={options.initial_sparsity} is above the target sparsity {sparsity}: "
            "a density decay must start denser than it ends"
        )
    if "restores_nothing" in get_part("regrowth", options.regrowth).flags and (options.zeta > 0 or options.percolation):
        raise OptionError(
            f"regrowth={options.regrowth!r} cannot restore links "
            "taken by removal or percolation, so budgets would drift: "
            "set zeta=0 and percolation=False (as GMP does), or choose a regrowth"
        )
    _check_decay_reaches_target(total_steps, options)


def _check_decay_reaches_target(total_steps: int, options: SparsityOptions) -> None:
    """A density decay that ends within T_end must end on an update that runs: under
    ``final_update="before_t_end"`` the event at T_end itself never runs, so the target would never be
    reached. (A decay that outlasts T_end, as the LLaMA script's 8000 of 10 000 steps with T_end 7500,
    stops short of the target in the official code too, and is allowed.)"""
    if options.density_schedule == "constant":
        return
    t_end = options.t_end if options.t_end is not None else int(options.t_end_fraction * total_steps)
    interval = options.update_interval
    last_event = (int(options.decay_end_fraction * total_steps) // interval) * interval
    if 0 < last_event <= t_end and not is_update_step(last_event, interval, t_end, final_update=options.final_update):
        raise OptionError(
            f"the density decay's last event is at step {last_event} = T_end, where final_update="
            f"{options.final_update!r} runs no update, so the target sparsity would never be reached: set "
            "final_update='at_t_end' (as the density-decay presets) or end the decay earlier (decay_end_fraction)"
        )


def _describe_couplings(couplings: Any) -> str:
    """A stable text for the state's options: a coupling rule by its qualified name (a bound
    method's object address changes from run to run), couplings by their repr."""
    if callable(couplings):
        owner = getattr(couplings, "__self__", None)
        where = type(owner) if owner is not None else couplings
        name = getattr(couplings, "__qualname__", type(couplings).__qualname__)
        return f"rule {getattr(where, '__module__', '?')}.{name}"
    return repr(couplings)
