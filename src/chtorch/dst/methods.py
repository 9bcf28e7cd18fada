"""Named methods: each is a preset of :class:`~chtorch.dst.options.SparsityOptions` parts.

No code branches on a method's name: a preset is data, and ``chtorch.sparsify(..., **options)``
overrides any of its parts. A preset may be ``based_on`` another one and list only its differences
(``chtss`` is ``chts`` plus a density decay). The pseudo-method ``dense`` (the fully connected
baseline) is a preset that does not sparsify; ask :func:`is_dense` rather than comparing names.
Register your own with :func:`register_method`. Where the paper and its official code disagree, each
preset's ``decisions`` says what it does; docs/decisions.md holds the table (``chtorch methods -v``
prints both).

Option overrides are merged in one place, :func:`merge_overrides` / :func:`resolve_options`: later
layers win, ``init_options`` mappings merge key by key, and overriding ``init`` drops the preset's
initialiser options (BRF's ``r`` means nothing to BSW).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from chtorch._checks import closest
from chtorch.dst.options import PART_BAGS, OptionError, SparsityOptions
from chtorch.dst.reads import check_read

__all__ = [
    "MethodPreset",
    "register_method",
    "get_method",
    "methods",
    "all_methods",
    "is_dense",
    "method_table",
    "merge_overrides",
    "resolve_options",
]


def merge_overrides(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Option overrides merged in order (later wins); the option bags (``init_options``,
    ``removal_options``, ``regrowth_options``) merge key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in dict(layer or {}).items():
            if key in _BAGS.values() and isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
                value = {**merged[key], **value}
            merged[key] = value
    return merged


# The part-naming option -> its bag of the part's own parameters.
_BAGS = {"init": "init_options", **PART_BAGS}


def _apply(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over a preset's ``base`` options: overriding a part (``init``, ``removal``,
    ``regrowth``) with another one drops the base's bag of that part's parameters (BRF's r, BSW's
    beta do not apply to CSTI); a bag given in ``overrides`` merges key by key."""
    merged = dict(base)
    overrides = dict(overrides)
    bags = {}
    for part, bag in _BAGS.items():
        values = dict(merged.pop(bag, {}) or {})
        if part in overrides and overrides[part] != merged.get(part):
            values = {}
        if bag in overrides:
            given = overrides.pop(bag)
            if given is not None and not isinstance(given, Mapping):
                raise OptionError(
                    f"{bag} must be a mapping of the {part} part's arguments, e.g. {{'r': 0.5}}; got {given!r}"
                )
            values.update(given or {})
        if values or bag == "init_options" or bag in base:  # presets carry init_options always, others when set
            bags[bag] = values
    merged.update(overrides)
    merged.update(bags)
    return merged


@dataclass(frozen=True)
class MethodPreset:
    """A method: its name, a one-line summary, the paper it comes from, and its option overrides
    (complete: a preset ``based_on`` another holds the merged options)."""

    name: str
    summary: str
    reference: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Where the paper and its official code disagree, what this preset does (docs/decisions.md).
    decisions: str = ""
    #: The preset this one extends, for ``chtorch methods -v`` (None: built from the defaults).
    based_on: str | None = None
    #: False for the dense baseline: nothing is sparsified (see :func:`is_dense`).
    sparsifies: bool = True

    def build_options(self, **overrides: Any) -> SparsityOptions:
        """The preset's options with ``overrides`` applied (unknown names are errors)."""
        return SparsityOptions().replace(**_apply(self.options, overrides))

    def differences(self) -> dict[str, Any]:
        """The options this preset sets beyond the preset it is ``based_on`` (all of them when none)."""
        if self.based_on is None:
            return dict(self.options)
        base = get_method(self.based_on).options
        return {k: v for k, v in self.options.items() if k not in base or base[k] != v}


_REGISTRY: dict[str, MethodPreset] = {}


def register_method(
    name: str,
    summary: str,
    reference: str,
    decisions: str = "",
    *,
    based_on: str | None = None,
    sparsifies: bool = True,
    **options: Any,
) -> MethodPreset:
    """Register (or, with a warning, replace) a method preset; options are validated now.

    ``based_on``: another registered preset whose options this one starts from (``options`` are its
    differences). ``sparsifies=False`` registers a baseline that trains the model dense."""
    key = name.lower()
    if based_on is not None:
        options = _apply(get_method(based_on).options, options)
    preset = MethodPreset(key, summary, reference, MappingProxyType(dict(options)), decisions, based_on, sparsifies)
    preset.build_options()  # fail at registration, not at use
    if key in _REGISTRY:
        warnings.warn(f"chtorch: method {key!r} is registered again; the new preset replaces the old one", stacklevel=2)
    _REGISTRY[key] = preset
    return preset


def get_method(name: str) -> MethodPreset:
    """The preset called ``name`` (case-insensitive); an unknown name lists the known ones."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise OptionError(
            f"unknown method {name!r}{closest(key, _REGISTRY)}; known methods: {', '.join(all_methods())}"
        )
    return _REGISTRY[key]


def is_dense(name: str) -> bool:
    """True when method ``name`` trains the model without sparsification (the ``dense`` baseline)."""
    return not get_method(name).sparsifies


def methods() -> list[str]:
    """Names of the registered methods that sparsify (what :func:`chtorch.sparsify` accepts)."""
    return sorted(k for k, p in _REGISTRY.items() if p.sparsifies)


def all_methods() -> list[str]:
    """Every registered method name: the dense baselines first, then :func:`methods`."""
    return sorted(k for k, p in _REGISTRY.items() if not p.sparsifies) + methods()


def method_table(include_dense: bool = False) -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered method (``include_dense``: the baselines too, first)."""
    names = all_methods() if include_dense else methods()
    return [(name, _REGISTRY[name].summary) for name in names]


def resolve_options(
    method: str, *overrides: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
) -> SparsityOptions:
    """The one place where a method's options are merged: ``method``'s preset, then ``defaults``
    (a recipe's or an official code's values, used where the method reads them), then each mapping
    of ``overrides`` in order (:func:`merge_overrides`; e.g. a config's ``sparsity.options``, then its
    ``method_options[method]``, then what the caller adds).

    Every option of ``overrides`` must be read by the resolved method: one that is not (``delta_start``
    under the linear temperature schedule) raises :class:`OptionError` naming it, the parts that would
    read it and the fix (:mod:`chtorch.dst.reads`). ``defaults`` and the preset's own values are not
    checked."""
    preset = get_method(method)
    if not preset.sparsifies:
        raise OptionError(
            f"method {preset.name!r} trains the model dense: it has no sparsity options (do not call sparsify)"
        )
    given = merge_overrides(*overrides)
    options = preset.build_options(**merge_overrides(defaults, given))
    check_read(options, given, preset.name)
    return options


# ---------------------------------------------------------------------------------------------
# Built-in presets, with the defaults of Zhang et al., NeurIPS 2025 (arXiv:2501.19107), App. G/H,
# and of each method's own paper. Update intervals are in optimizer steps (100, as the paper's
# Transformer and LLaMA runs); the MLP recipes set one epoch. The "decisions" texts name rows of
# docs/decisions.md.

_SHARED_DECISIONS = (
    "regrown links start at zero with zero optimizer state, as "
    "the official code (regrown_init='history' gives App. J's "
    "historical weights), except a link removed and regrown in the same update, which keeps its weight and state as in "
    "every official code (readmitted='reset' restarts it); the optimizer "
    "step is not skipped on an update iteration (sp.step() runs after it); "
    "CH2-L3n clamps the external degree at >= 0 and computes in float32 with exact counts; "
    "percolation pairs only identical row indices of q/k; topology updates run while step < T_end, as the "
    "MLP/Transformer code (final_update='at_t_end': through T_end, as the LLaMA code, the LM recipe and the "
    "density-decay presets) (docs/decisions.md)"
)
_SOFT_DECISIONS = (
    "soft removal samples the KEPT links without replacement with p ∝ |W|^T, T linear in the step from 1 to 3 until "
    "T_end as the official MLP/Transformer code "
    "(temperature_schedule='linear'; the LLaMA recipe sets temperature_end=9 "
    "as the LLaMA code; 'paper' gives the paper's T = 1/(1−δ)); "
    "soft regrowth samples new links with p ∝ CH score and, "
    "when too few scores are positive, adds 1e-5 to every non-link, so a neuron that percolation disconnected can come "
    "back, as the MLP/Transformer code (regrowth_candidates='live' "
    "keeps to live neurons; the LLaMA recipe uses the LLaMA "
    "code's top-k); BRF gives each node of the smaller side its "
    "degree, as the code does; SWI with density·fan_in, as the "
    "original CHT layer (the MLP recipe: fan_out, as the MLP code) (docs/decisions.md)"
)
_EMS_DECISIONS = (
    "EM&S as the official code (ems_mode='official'): every update keeps only the target-density core by the removal "
    "score (ζ ignored), percolates, then regrows the extra density (5% of the layer, then 2.5%) without compensating "
    "percolated links; the update at T_end − ΔT cuts to the core and regrows nothing (ems_mode='schedule': the "
    "extra density only raises the budget) (docs/decisions.md, MEST EM&S)"
)

register_method(
    "dense",
    "no sparsification: the fully connected baseline (FC)",
    "the dense model every table of Zhang et al., NeurIPS 2025 (arXiv:2501.19107) compares against",
    sparsifies=False,
)

register_method(
    "static",
    "static sparse training: a fixed random (Erdős–Rényi) topology, never updated",
    "Mocanu et al., Nat. Commun. 9, 2383 (2018) — the fixed-topology baseline",
    zeta=0.0,
    t_end_fraction=0.0,
    regrowth="random",
)

register_method(
    "set",
    "SET: remove the smallest-|W| links (ζ=0.3), regrow at random, whole run",
    "Mocanu et al., 'Scalable training of artificial neural networks with adaptive sparse connectivity "
    "inspired by network science', Nat. Commun. 9, 2383 (2018)",
    decisions="removes by |W| top-k as the official MLP code that produced Table 7, not the SET paper's sign rule "
    "(removal='set': smallest positive and largest negative weights) (docs/decisions.md, SET removal)",
    init="erdos_renyi",
    removal="magnitude",
    regrowth="random",
    zeta=0.3,
    zeta_anneal="constant",
    t_end_fraction=1.0,
)

register_method(
    "rigl",
    "RigL: drop by magnitude, grow by dense-gradient magnitude, ζ cosine-annealed until 75% of training",
    "Evci et al., 'Rigging the Lottery: Making All Tickets Winners', ICML 2020",
    init="erdos_renyi",
    removal="magnitude",
    regrowth="gradient",
    zeta=0.3,
    zeta_anneal="cosine",
    t_end_fraction=0.75,
)

register_method(
    "mest",
    "MEST with EM&S: keep the target-density core by |W|+0.01|∇W|, regrow the extra density at random (5%→2.5%→0)",
    "Yuan et al., 'MEST: Accurate and Fast Memory-Economic Sparse Training Framework on the Edge', NeurIPS 2021",
    decisions=_EMS_DECISIONS,
    init="erdos_renyi",
    removal="mest",
    mest_lambda=0.01,
    regrowth="random",
    zeta=0.3,
    zeta_anneal="constant",
    t_end_fraction=0.75,
    ems=True,
)

register_method(
    "gmp",
    "GMP: gradual magnitude pruning from 50% sparsity on the cubic schedule; pruned weights may return",
    "Zhu & Gupta, 'To prune, or not to prune: exploring the efficacy of pruning for model compression', 2017",
    decisions="pruned weights compete again with their last value (prune_with_history) and a revived weight "
    "restarts at zero, as the official LLaMA code (revived_init='history': at its last value) (docs/decisions.md, "
    "GMP); updates run through T_end (final_update='at_t_end'), as the LLaMA code, so the decay's last event "
    "at T_end runs",
    init="erdos_renyi",
    density_schedule="cubic",
    initial_sparsity=0.5,
    prune_score="magnitude",
    prune_with_history=True,
    zeta=0.0,
    regrowth="none",
    t_end_fraction=0.75,
    decay_end_fraction=0.75,
    final_update="at_t_end",
)

register_method(
    "granet",
    "GraNet: cubic gradual pruning from 50% plus magnitude drop / gradient regrowth (cosine ζ)",
    "Liu et al., 'Sparse Training via Boosting Pruning Plasticity with Neuroregeneration', NeurIPS 2021",
    decisions="updates run through T_end (final_update='at_t_end'), as the LLaMA code, the only official code with a "
    "density decay, so the decay's last event at T_end runs",
    init="erdos_renyi",
    density_schedule="cubic",
    initial_sparsity=0.5,
    prune_score="magnitude",
    removal="magnitude",
    regrowth="gradient",
    zeta=0.3,
    zeta_anneal="cosine",
    t_end_fraction=0.75,
    decay_end_fraction=0.75,
    final_update="at_t_end",
)

register_method(
    "cht",
    "CHT: BSW (or CSTI) init, SWI, magnitude removal, top-k CH3-L3p regrowth, percolation, early stop at 90% overlap",
    "Zhang et al., 'Epitopological learning and Cannistraci-Hebb network shape intelligence brain-inspired theory "
    "for ultra-sparse advantage in deep learning', ICLR 2024",
    decisions="path-based CH3-L3p with the local-community bookkeeping of the official CH_scores_new_v2.cpp, top-k; "
    "early stop (Definition 1) as the official code: the whole topology stops evolving once every layer's "
    "|removed ∩ regrown| / |regrown| has been > 0.9 (early_stop_scope='layer': each layer freezes at >= 0.9); BSW by "
    "default because CSTI needs the input correlation (recipes pass it: init='csti', init_options={'correlation': C}); "
    "SWI with density·fan_in; " + _SHARED_DECISIONS,
    init="bsw",
    init_options={"beta": 0.25},
    weight_init="swi",
    removal="magnitude",
    removal_selection="topk",
    regrowth="ch",
    ch_predictor="l3p",
    ch_variant="CH3",
    regrowth_selection="topk",
    percolation=True,
    early_stop=0.9,
    zeta=0.3,
    zeta_anneal="cosine",
    t_end_fraction=0.75,
)

register_method(
    "chts",
    "CHTs: BRF init, SWI, soft magnitude removal (T 1→3), "
    "percolation, soft CH2-L3n regrowth, cosine ζ (the paper's text)",
    "Zhang et al., 'Brain network science modelling of sparse neural networks enables Transformers and LLMs to "
    "perform as fully connected', NeurIPS 2025 (arXiv:2501.19107)",
    decisions=_SOFT_DECISIONS
    + "; BRF r = 0.25 (the MLP optimum, App. H) with the code's default 'uniform' degrees; "
    + _SHARED_DECISIONS,
    init="brf",
    init_options={"r": 0.25, "degree": "uniform"},
    weight_init="swi",
    removal="magnitude",
    removal_selection="soft",
    temperature_schedule="linear",
    temperature_start=1.0,
    temperature_end=3.0,
    regrowth="ch",
    ch_predictor="l3n",
    ch_variant="CH2",
    regrowth_selection="soft",
    percolation=True,
    zeta=0.3,
    zeta_anneal="cosine",
    t_end_fraction=0.75,
)

register_method(
    "chtss",
    "CHTss: CHTs plus sigmoid density decay from 50% sparsity (k=6) with relative-importance pruning",
    "Zhang et al., 'Brain network science modelling of sparse neural networks enables Transformers and LLMs to "
    "perform as fully connected', NeurIPS 2025 (arXiv:2501.19107), §3.3",
    decisions="the sigmoid is the code's min-max normalised s(τ) "
    "= s_i + (s_f − s_i)[σ(k(2τ/n − 1)) − σ(−k)] / "
    "[σ(k) − σ(−k)] over the n = 0.75·steps / ΔT updates; "
    "pruning keeps the top relative-importance links of each "
    "layer (uniform, not a global ranking), deterministically, then the CHTs removal and regrowth restore the "
    "scheduled budget, so pruned links are not regrown; the 'half-step' FLOPs matching is not applied "
    "(decay_end_fraction sets the decay length); updates run through T_end (final_update='at_t_end'), as the LLaMA "
    "code, the only official code with a density decay, so the decay's last event at T_end runs; "
    + _SOFT_DECISIONS
    + "; "
    + _SHARED_DECISIONS,
    based_on="chts",
    density_schedule="sigmoid",
    initial_sparsity=0.5,
    sigmoid_k=6.0,
    prune_score="ri",
    decay_end_fraction=0.75,
    final_update="at_t_end",
)

register_method(
    "chts_mlp",
    "CHTs as the official MLP code runs it for Table 7: CSTI, SWI "
    "fan-out, EM&S, hard |W| removal, percolation, soft CH3-L3p",
    "Zhang et al., NeurIPS 2025 (arXiv:2501.19107), Table 7 (CHTsp), as the official MLP code's README command "
    "(biomedical-cybernetics/Cannistraci-Hebb-training, mlp_and_cnn)",
    decisions="the README 'CHTs' recipe: CSTI on every sparse layer "
    "(the MLP configs set init='csti' and the recipe passes "
    "the input correlation; the preset alone keeps chts's BRF, since CSTI needs data), SWI "
    "with density·fan_out at the 6% start density, MEST's EM&S: "
    + _EMS_DECISIONS
    + "; hard top-|W| removal (T unused), "
    "percolation, soft CH3-L3p regrowth with the 1e-5 floor on every non-link, constant ζ (unused under EM&S), one "
    "update per epoch until 0.75 of training; the classifier stays dense; " + _SHARED_DECISIONS,
    based_on="chts",
    weight_init="swi_out",
    removal="magnitude",
    removal_selection="topk",
    ch_predictor="l3p",
    ch_variant="CH3",
    regrowth_selection="soft",
    regrowth_candidates="all",
    ems=True,
    ems_mode="official",
    zeta_anneal="constant",
)

register_method(
    "chtsn_mlp",
    "chts_mlp with soft CH2-L3n regrowth (Table 7's CHTsn row)",
    "Zhang et al., NeurIPS 2025 (arXiv:2501.19107), Table 7 "
    "(CHTsn), the official MLP code with --regrow_method CH2_L3n_soft",
    decisions="as chts_mlp, with the matrix CH2-L3n predictor",
    based_on="chts_mlp",
    ch_predictor="l3n",
    ch_variant="CH2",
)
