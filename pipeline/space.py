"""Search domains: how a sweep file searches one option, ``{kind: [args]}``.

The kinds are Ray Tune's sampling functions with their argument order (``randint``'s high is exclusive).
A ``Domain`` checks its own arguments whatever option it searches; ``pipeline.options`` checks its values
against the option's rule. Importing this module does not import Ray; ``Domain.to_tune`` imports
``ray.tune`` when it is called.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rnncore.config import show  # a value as an error message quotes it, cut short

from .vocab import finite

__all__ = ["SEARCH_KINDS", "Domain", "DomainError", "SearchKind"]

SearchKind = Literal[
    "grid_search", "choice", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint",
    "lograndint",
]
SEARCH_KINDS: tuple[str, ...] = get_args(SearchKind)

CATEGORICAL = ("grid_search", "choice")
# range kind -> (required argument names, optional argument names), in Ray Tune's order
_RANGE_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uniform": (("low", "high"), ()),
    "quniform": (("low", "high", "q"), ()),
    "loguniform": (("low", "high"), ("base",)),
    "qloguniform": (("low", "high", "q"), ("base",)),
    "randint": (("low", "high"), ()),
    "qrandint": (("low", "high", "q"), ()),
    "lograndint": (("low", "high"), ("base",)),
}
FLOAT_KINDS = ("uniform", "quniform", "loguniform", "qloguniform")
INT_KINDS = ("randint", "qrandint", "lograndint")
INT_COUNTERPART = {"uniform": "randint", "quniform": "qrandint", "loguniform": "lograndint",
                   "qloguniform": "lograndint or qrandint"}  # what an integer option uses instead
_LOG_KINDS = ("loguniform", "qloguniform", "lograndint")


# --------------------------------------------------------------------------- wording shared with the config


def unknown(key: Any, valid: Iterable[str], what: str = "key") -> str:
    """``unknown key; did you mean 'x'?`` (a close match, else a prefix: grace -> grace_period), else the list."""
    valid, key = list(valid), str(key)
    close = difflib.get_close_matches(key, valid, n=1) or [
        v for v in valid if len(key) >= 3 and (v.startswith(key) or key.startswith(v))][:1]
    hint = f"did you mean {close[0]!r}?" if close else f"valid {what}s: {', '.join(valid)}"
    return f"unknown {what}; {hint}"


def number_hint(value: Any) -> str | None:
    """The fix for a number that YAML read as text, e.g. ``1e-3`` (YAML 1.1 needs ``1.0e-3``)."""
    if not isinstance(value, str) or len(value) > 40:  # a number is short; the hint quotes the text
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if re.fullmatch(r"\s*[-+]?\d+[eE][-+]?\d+\s*", value):
        return f"YAML reads {value} as text because it has no decimal point; write {number!r} instead"
    return "remove the quotes so YAML reads it as a number"


# --------------------------------------------------------------------------- the rules of the arguments


class DomainError(ValueError):
    """What is wrong with a search domain: one ``rule, but got value; fix`` per problem, all under ``key``
    (the search key, or '' for the mapping that should hold one)."""

    def __init__(self, key: str, problems: list[str]) -> None:
        self.key, self.problems = key, list(problems)
        super().__init__(f"{key}: " * bool(key) + "; ".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.key, self.problems))


def _multiple_of(x: float, q: float) -> bool:
    return math.isclose(x / q, round(x / q))  # Ray Tune's own test for quantized float bounds


def _arg_spec(kind: str) -> str:
    required, optional = _RANGE_ARGS[kind]
    return ", ".join([*required, *(f"{o} (optional)" for o in optional)])


def _problems(kind: str, args: tuple) -> list[str]:
    """What is wrong with ``{kind: args}`` whatever option it searches (empty = fine)."""
    if kind not in SEARCH_KINDS:
        return [unknown(kind, SEARCH_KINDS, "search key")]
    if kind in CATEGORICAL:
        return [] if args else ["must list at least one value, but got []; add values, or write the option as a "
                                "plain value"]
    required, optional = _RANGE_ARGS[kind]
    if not len(required) <= len(args) <= len(required) + len(optional):
        return [f"takes [{_arg_spec(kind)}], but got {len(args)} value(s) {show(list(args))}; "
                f"write {kind}: [{', '.join(required)}]"]
    named = dict(zip((*required, *optional), args))
    problems = []
    for arg, x in named.items():
        if not finite(x):
            problems.append(f"{arg} must be a number, but got {show(x)}; {number_hint(x) or 'write a finite number'}")
        elif kind in INT_KINDS and not float(x).is_integer():
            problems.append(f"{arg} must be an integer for {kind}, but got {arg}={x!r}; use whole numbers, "
                            "or uniform/loguniform for a float option")
    if problems:
        return problems
    low, high, q, base = named["low"], named["high"], named.get("q"), named.get("base")
    if not low < high:
        fix = "swap them" if low > high else "widen the range, or write the option as a plain value"
        problems.append(f"low < high must hold, but got (low={low!r}, high={high!r}); {fix}")
    if q is not None and not q > 0:
        problems.append(f"q > 0 must hold, but got q={q!r}; use a positive step")
    if kind in _LOG_KINDS and not low > 0:
        problems.append(f"low > 0 must hold on a log scale, but got low={low!r}; start the range above zero")
    if base is not None and not (base > 0 and base != 1):
        problems.append(f"base > 0 and base != 1 must hold, but got base={base!r}; use 10, or leave it out "
                        "(the base does not change a log-uniform distribution)")
    if problems or q is None:
        return problems
    if kind in ("quniform", "qloguniform") and not (_multiple_of(low, q) and _multiple_of(high, q)):
        problems.append(f"low and high must be multiples of q, but got (low={low!r}, high={high!r}, q={q!r}); "
                        "pick a q that divides both")
    if kind == "qrandint" and -(-low // q) * q > high:
        problems.append(f"a multiple of q must lie in [low, high], but got (low={low!r}, high={high!r}, q={q!r}); "
                        "lower q or widen the range")
    return problems


# --------------------------------------------------------------------------- Domain


@dataclass(frozen=True)
class Domain:
    """One searched option: a Ray Tune sampling function (``kind``) and its arguments, in Ray's order.

    ``grid_search`` and ``choice`` take the list of values; ranges take ``[low, high]`` plus ``q``
    for the quantized kinds and an optional ``base`` for the log kinds (accepted for Ray Tune's
    signatures; it does not change the distribution and is not passed on). Raises DomainError.
    """

    kind: SearchKind
    args: tuple

    def __post_init__(self) -> None:
        args = tuple(self.args)
        problems = _problems(self.kind, args)
        if problems:
            raise DomainError(str(self.kind), problems)
        object.__setattr__(self, "args", tuple(int(a) for a in args) if self.kind in INT_KINDS else args)

    @classmethod
    def parse(cls, value: Mapping[Any, Any]) -> Domain:
        """A domain as a sweep file writes it: the one-key mapping ``{kind: [args]}``."""
        if len(value) != 1:
            raise DomainError("", [f"a searched option is a one-key mapping such as {{choice: [...]}}, but got "
                                   f"{len(value)} keys {show(list(value))}; keep exactly one of "
                                   f"{', '.join(SEARCH_KINDS)}"])
        kind, args = next(iter(value.items()))
        if kind in SEARCH_KINDS and not isinstance(args, list):
            spec = "values" if kind in CATEGORICAL else _arg_spec(kind)
            raise DomainError(kind, [f"takes a list [{spec}], but got {show(args)}; write {kind}: [{spec}]"])
        return cls(kind, tuple(args) if isinstance(args, list) else ())

    @property
    def is_grid(self) -> bool:
        """True for ``grid_search``: every value runs (times ``num_samples``) instead of being drawn."""
        return self.kind == "grid_search"

    @property
    def is_categorical(self) -> bool:
        return self.kind in CATEGORICAL

    def values(self) -> tuple:
        """The listed values of a ``grid_search`` or ``choice``."""
        if not self.is_categorical:
            raise TypeError(f"values() is for grid_search and choice, but this domain is {self.kind}; use bounds()")
        return self.args

    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a range, as written (``randint``/``lograndint`` exclude ``high``)."""
        if self.is_categorical:
            raise TypeError(f"bounds() is for ranges, but this domain is {self.kind}; use values()")
        return self.args[0], self.args[1]

    @property
    def q(self) -> float | None:
        return self.args[2] if self.kind in ("quniform", "qloguniform", "qrandint") else None

    def extremes(self) -> tuple[Any, Any]:
        """The smallest and largest value a trial can actually get (numeric domains)."""
        if self.is_categorical:
            return min(self.args), max(self.args)
        low, high = self.bounds()
        if self.kind in ("randint", "lograndint") or (self.kind == "qrandint" and self.q == 1):
            return low, high - 1
        if self.kind == "qrandint":
            q = self.q
            return -(-low // q) * q, (high // q) * q
        return low, high

    def to_tune(self) -> Any:
        """The Ray Tune search-space object, e.g. ``tune.loguniform(0.01, 0.3)``."""
        from ray import tune  # lazy: importing the sweep's config must not import Ray

        if self.is_categorical:
            return getattr(tune, self.kind)(list(self.args))
        required, _ = _RANGE_ARGS[self.kind]
        return getattr(tune, self.kind)(*self.args[: len(required)])

    def describe(self) -> str:
        """One line for the trial plan, e.g. ``loguniform in [0.01, 0.3]``."""
        if self.is_grid:
            return f"grid_search over {list(self.args)} (every value is run)"
        if self.kind == "choice":
            return f"choice of {list(self.args)} (drawn per trial)"
        low, high = self.bounds()
        closing = ")" if self.kind in ("randint", "lograndint") or self.q == 1 else "]"
        step = f" in steps of {self.q}" if self.q is not None else ""
        return f"{self.kind} in [{low}, {high}{closing}{step}"

    def call_text(self) -> str:
        """The domain as the Ray Tune call it makes, compact: ``loguniform(0.01, 0.3)``, ``choice(['rnn', 'lstm'])``
        (the sweep's MLflow parent run logs its search space so)."""
        if self.is_categorical:
            return f"{self.kind}({list(self.args)!r})"
        required, _ = _RANGE_ARGS[self.kind]
        return f"{self.kind}({', '.join(repr(a) for a in self.args[: len(required)])})"

    def __str__(self) -> str:
        return f"{{{self.kind}: {list(self.args)}}}"
