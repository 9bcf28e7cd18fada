"""Named, registered parts: a function plus what it declares about itself.

Every choosable part of chtorch (an initial topology, a removal score, a regrowth score, a selection
rule, a density or temperature schedule, a weight initialisation) is one function registered where it
is defined, with a decorator::

    @REMOVALS.register("magnitude", summary="|W|")
    def magnitude(weight, mask, *, grad=None): ...

A part declares what it ``needs`` (``"dense_gradient"``, ``"weight_history"``, ``"live_neurons"``,
...), the options it reads (``params``: function keyword → option name) and free-form ``flags``. The
engine's rules (which backend can serve a method, which buffers to keep) and the options' validation
(the lists of valid names) are derived from these declarations, so a part a user registers is valid
everywhere at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chtorch._checks import closest

__all__ = ["Part", "Registry"]

Needs = frozenset[str] | Callable[[Any], "frozenset[str] | set[str] | tuple[str, ...]"]
# What ``register`` accepts: a fixed collection is frozen when the part is registered.
NeedsArg = Needs | set[str] | tuple[str, ...]


@dataclass(frozen=True)
class Part:
    """A registered function and its declarations.

    ``needs``: capabilities the part requires from the engine, either fixed or a function of the
    options (MEST's score needs the dense gradient only when its λ > 0). ``params``: keyword argument
    → :class:`~chtorch.dst.options.SparsityOptions` field, passed when the engine calls the part.
    ``flags``: other declarations a rule may ask about (e.g. ``"rule"``: the part decides the kept set
    itself instead of scoring; ``"uniform"``: every candidate scores the same).
    """

    kind: str
    name: str
    fn: Callable[..., Any]
    summary: str = ""
    needs: Needs = frozenset()
    params: Mapping[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    aliases: tuple[str, ...] = ()

    def needs_for(self, options: Any = None) -> frozenset[str]:
        """What this part needs under ``options`` (a :class:`SparsityOptions`)."""
        needs = self.needs(options) if callable(self.needs) else self.needs
        return frozenset(needs)

    def kwargs(self, options: Any) -> dict[str, Any]:
        """The keyword arguments this part reads from ``options``."""
        return {key: getattr(options, field_name) for key, field_name in self.params.items()}


def _key(name: Any) -> Any:
    return name.strip().lower().replace("-", "_") if isinstance(name, str) else name


class Registry(Mapping[str, Callable[..., Any]]):
    """Name → function of one kind of part (case-insensitive; ``-`` reads as ``_``; aliases allowed).

    A Mapping of every registered name and alias to its function; :meth:`names` lists the canonical
    names only, :meth:`part` returns the declarations.
    """

    def __init__(self, kind: str, noun: str | None = None) -> None:
        self.kind = kind
        self.noun = noun or kind.replace("_", " ")
        self._parts: dict[str, Part] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *aliases: str,
        summary: str = "",
        needs: NeedsArg = frozenset(),
        params: Mapping[str, str] | None = None,
        flags: tuple[str, ...] | frozenset[str] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the function as ``name`` (and ``aliases``). Registering a name again
        replaces the old part, with a warning."""
        key = _key(name)
        if not isinstance(key, str) or not key:
            raise ValueError(f"a {self.noun} name must be a non-empty string, got {name!r}")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise TypeError(f"only a function can be registered as a {self.noun}, got {type(fn).__name__}")
            fixed_needs = needs if callable(needs) else frozenset(needs)
            part = Part(
                self.kind,
                key,
                fn,
                summary,
                fixed_needs,
                dict(params or {}),
                frozenset(flags),
                tuple(_key(a) for a in aliases),
            )
            if key in self._parts or key in self._aliases:
                warnings.warn(
                    f"chtorch: {self.noun} {key!r} is registered again; the new one replaces the old one", stacklevel=3
                )
                self._aliases.pop(key, None)
            self._parts[key] = part
            for alias in part.aliases:
                self._aliases[alias] = key
            return fn

        return decorate

    def part(self, name: Any) -> Part:
        """The declarations of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
        key = _key(name)
        key = self._aliases.get(key, key) if isinstance(key, str) else key
        if not isinstance(key, str) or key not in self._parts:
            raise ValueError(
                f"unknown {self.noun} {name!r}{closest(name, self)}; known names: {', '.join(sorted(self))}"
            )
        return self._parts[key]

    def get(self, name: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self.part(name).fn
        except ValueError:
            return default

    def names(self) -> tuple[str, ...]:
        """Canonical names in registration order (no aliases)."""
        return tuple(self._parts)

    def parts(self) -> tuple[Part, ...]:
        return tuple(self._parts.values())

    def __contains__(self, name: object) -> bool:
        key = _key(name)
        return isinstance(key, str) and (key in self._parts or key in self._aliases)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self.part(name).fn
        except ValueError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        yield from self._parts
        yield from self._aliases

    def __len__(self) -> int:
        return len(self._parts) + len(self._aliases)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._parts)})"
