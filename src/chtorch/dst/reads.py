"""Which options a method reads: an option the resolved method does not read is an error.

A sweep over an option that nothing reads gives identical runs and looks like a finding (a δ sweep
under the default linear temperature schedule). So every option a user sets
(:func:`chtorch.sparsify` keywords, a config's ``sparsity.options`` / ``method_options``, the HF
callback's keywords) must be read by the method as resolved, the preset with the user's overrides;
a preset's own values and a recipe's defaults are never checked.

Who reads what comes from three sources, so that a part registered later is covered at once:

- the registered parts in use (:meth:`SparsityOptions.parts_in_use`): each reads the options of its
  ``params`` declaration (``mest_lambda`` by removal ``mest``, ``delta_start`` by the δ temperature
  schedules, ``ch_variant`` by regrowth ``ch``) and the bag of its own parameters
  (``removal_options`` only while a removal runs);
- the parts' declared ``needs``: ``grad_accumulation`` is read only when a part in use needs the dense
  gradient, ``regrowth_candidates`` only when one works on ``live_neurons``;
- the engine's own structure, the table :data:`ENGINE_READS` below (ζ's annealing only when ζ > 0, a
  decay's start only under a decay, ...); the options of :data:`ALWAYS_READ` are engine-wide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chtorch.dst.options import PART_OPTIONS, OptionError, SparsityOptions
from chtorch.dst.registry import registry

__all__ = [
    "ALWAYS_READ",
    "ENGINE_READS",
    "NEED_READS",
    "OptionRead",
    "UnreadOptionError",
    "options_read",
    "unread_options",
    "check_read",
]


class UnreadOptionError(OptionError):
    """Options were set that the resolved method does not read; ``options``: their names."""

    def __init__(self, message: str, options: tuple[str, ...]) -> None:
        super().__init__(message)
        self.options = options


#: Options every method reads (the schedule of updates, the topology and its bookkeeping).
ALWAYS_READ = frozenset(
    {
        "update_interval",
        "t_end",
        "final_update",
        "zeta",
        "distribution",
        "density_schedule",
        "ems",
        "init",
        "init_options",
        "weight_init",
        "regrowth",
        "regrowth_options",
        "regrowth_selection",
        "regrown_init",
        "readmitted",
        "percolation",
        "couplings",
        "early_stop",
        "head_groups",
        "skip_step_on_update",
    }
)

#: Capability a part declares it needs -> the options the engine reads only to serve it.
NEED_READS = {
    "dense_gradient": ("grad_accumulation", "grad_accumulation_dtype"),
    "live_neurons": ("regrowth_candidates",),
}


@dataclass(frozen=True)
class OptionRead:
    """``options`` are read by the engine only when ``reads(options)``; ``who`` completes "read only
    ..." in an error and ``fix`` says how to make the option count."""

    options: tuple[str, ...]
    reads: Callable[[SparsityOptions], bool]
    who: str
    fix: str


def _in_use(name: str) -> Callable[[SparsityOptions], bool]:
    return lambda o: name in o.parts_in_use()


_REMOVES = "while links are removed (zeta > 0, or ems=True with ems_mode='official')"
_DECAYS = "density_schedule other than 'constant'"

#: The engine's structural reads: options that matter only under another option's setting.
ENGINE_READS = (
    OptionRead(
        ("t_end_fraction",), lambda o: o.t_end is None, "when t_end is not set (t_end overrides it)", "drop t_end"
    ),
    OptionRead(("zeta_anneal",), lambda o: o.zeta > 0, "when links are removed (zeta > 0)", "set zeta > 0"),
    OptionRead(("removal", "removal_selection", "removal_options"), _in_use("removal"), _REMOVES, "set zeta > 0"),
    OptionRead(
        ("temperature_schedule",),
        _in_use("temperature_schedule"),
        "by a soft removal (removal_selection other than 'topk') " + _REMOVES,
        "set removal_selection='soft'",
    ),
    OptionRead(
        ("initial_sparsity", "decay_end_fraction"),
        lambda o: o.density_schedule != "constant",
        f"by a density decay ({_DECAYS})",
        "set density_schedule='sigmoid' (or 'cubic', 'linear')",
    ),
    OptionRead(
        ("prune_score", "prune_with_history"),
        _in_use("prune_score"),
        f"by the density pruning of a decay ({_DECAYS}) or of MEST's EM&S (ems=True)",
        "set density_schedule='sigmoid' (or 'cubic', 'linear') or ems=True",
    ),
    OptionRead(
        ("revived_init",),
        lambda o: o.prune_with_history and "prune_score" in o.parts_in_use(),
        "when pruned weights compete again (prune_with_history=True, under a density decay or EM&S)",
        "set prune_with_history=True",
    ),
    OptionRead(("ems_mode",), lambda o: o.ems, "under MEST's EM&S (ems=True)", "set ems=True"),
    OptionRead(
        ("early_stop_scope",),
        lambda o: o.early_stop is not None,
        "with an early stop (early_stop set)",
        "set early_stop",
    ),
    OptionRead(
        ("soft_floor",),
        lambda o: o.regrowth_selection != "topk",
        "by a soft regrowth (regrowth_selection other than 'topk')",
        "set regrowth_selection='soft'",
    ),
)

_ENGINE_OPTION = {name: rule for rule in ENGINE_READS for name in rule.options}


def _param_readers(option: str) -> list[tuple[str, str]]:
    """(part-naming option, part name) of every registered part whose ``params`` read ``option``."""
    out = []
    for naming, kind in PART_OPTIONS.items():
        for part in registry(kind).parts():
            if option in part.params.values():
                out.append((naming, part.name))
    return out


def _need_readers(need: str) -> list[tuple[str, str]]:
    """(part-naming option, part name) of the registered parts that declare ``need`` (a part whose
    needs depend on the options, as MEST's |∇W| term with mest_lambda > 0, under the default options)."""
    probe = SparsityOptions()
    return [
        (naming, part.name)
        for naming, kind in PART_OPTIONS.items()
        for part in registry(kind).parts()
        if need in part.needs_for(probe)
    ]


def options_read(options: SparsityOptions) -> frozenset[str]:
    """Every option that ``options`` (a resolved method) reads."""
    read = set(ALWAYS_READ)
    for kind, name in options.parts_in_use().values():
        read.update(registry(kind).part(name).params.values())
    for need, names in NEED_READS.items():
        if need in options.needs():
            read.update(names)
    for rule in ENGINE_READS:
        if rule.reads(options):
            read.update(rule.options)
    known = set(SparsityOptions.field_names())
    classified = ALWAYS_READ | set(_ENGINE_OPTION) | {n for names in NEED_READS.values() for n in names}
    # An option no rule speaks of (a field added later) counts as read: never a false error.
    read |= known - classified - {o for o in known if _param_readers(o)}
    return frozenset(read & known)


def _alternatives(pairs: Iterable[tuple[str, str]]) -> str:
    by_option: dict[str, list[str]] = {}
    for naming, name in pairs:
        by_option.setdefault(naming, []).append(repr(name))
    return " or ".join(f"{naming}={' / '.join(names)}" for naming, names in by_option.items())


def _explain(option: str, options: SparsityOptions) -> str:
    """Why ``options`` do not read ``option``, who would, and the fix."""
    rule = _ENGINE_OPTION.get(option)
    if rule is not None:
        return f"{option} is read only {rule.who}: {rule.fix}, or drop {option}"
    for need, names in NEED_READS.items():
        if option in names:
            parts = _alternatives(_need_readers(need))
            return (
                f"{option} is read only by a part that needs the {need.replace('_', ' ')} ({parts}), and this "
                f"method runs none: choose one of them, or drop {option}"
            )
    readers = _param_readers(option)
    naming, first = readers[0]
    in_use = options.parts_in_use()
    namings = list(dict.fromkeys(r[0] for r in readers))
    chosen = ", ".join(
        f"{n}={getattr(options, n)!r}" + ("" if n in in_use else " (which does not run here)") for n in namings
    )
    text = f"{option} is read only by {_alternatives(readers)}, and this method has {chosen}: set {naming}={first!r}"
    idle = _ENGINE_OPTION.get(naming)
    if naming not in in_use and idle is not None:
        text += f" ({naming} is read only {idle.who}: {idle.fix})"
    return f"{text}, or drop {option}"


def unread_options(options: SparsityOptions, given: Iterable[str]) -> dict[str, str]:
    """The options of ``given`` (names a user set) that ``options`` do not read -> why, who reads it
    and the fix (empty when every one is read)."""
    read = options_read(options)
    return {name: _explain(name, options) for name in given if name not in read}


def check_read(options: SparsityOptions, given: Iterable[str], method: str | None = None) -> None:
    """Raise :class:`OptionError` when an option of ``given`` is not read by ``options`` (the
    resolved ``method``), naming each such option, the parts that would read it and the fix."""
    unread = unread_options(options, given)
    if not unread:
        return
    what = f"method {method!r}" if method else "these options"
    lines = "; ".join(unread.values())
    raise UnreadOptionError(
        f"{what} would ignore {', '.join(unread)} (an option that is not read changes nothing): {lines}", tuple(unread)
    )
