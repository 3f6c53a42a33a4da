"""The sweep file: its schema, its validation and the trial plan it describes.

A sweep file is YAML (see ``sweeps/basic.yaml``)::

    name: basic
    data: {path: data/tinyshakespeare.txt, val_fraction: 0.1}
    train:                                    # every rnncore option
      hidden_size: {grid_search: [64, 128]}   # a one-key mapping is searched
      learning_rate: {loguniform: [0.01, 0.3]}
      batch_size: 8                           # a plain value is fixed
    num_samples: 3
    scheduler: {type: asha, grace_period: 500}

``load_sweep(path)`` reads and checks all of it without side effects and returns a
``SweepConfig``, or raises one ``ConfigError`` that lists every problem as
``dotted.key: rule, but got value; fix``.

The ``train:`` section accepts exactly the engine's options (``rnncore.config.FIELD_NAMES``)
and checks each value with the engine's own rules (``rnncore.config.check_value``); nothing
about them is declared twice. A searched option is a ``Domain`` named after Ray Tune's
sampling functions, with their argument order (``randint``'s high is exclusive).

Importing this module imports neither Ray nor MLflow; ``Domain.to_tune`` imports
``ray.tune`` when it is called.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rnncore.config import (
    FIELD_NAMES,
    FIELD_TYPES,
    KINDS,
    MUTABLE_KEYS,
    SHAPE,
    TrainConfig,
    check_together,
    check_value,
    coerce,
)
from rnncore.data import Corpus, CorpusError, check_fits, load_corpus

__all__ = [
    "AshaScheduler",
    "ConfigError",
    "DataConfig",
    "Domain",
    "FILE_KEYS",
    "FifoScheduler",
    "METRICS",
    "MlflowConfig",
    "OptunaSearch",
    "PbtScheduler",
    "RandomSearch",
    "RayConfig",
    "Resources",
    "SEARCH_KINDS",
    "Scheduler",
    "SearchAlg",
    "SearchKind",
    "SweepConfig",
    "load_sweep",
    "resolve_data_path",
]

SearchKind = Literal[
    "grid_search", "choice", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint",
    "lograndint",
]
SEARCH_KINDS: tuple[str, ...] = get_args(SearchKind)

# Metric -> (the direction that is better, what it measures). All of them are losses today.
METRICS: dict[str, tuple[str, str]] = {
    "val_loss": ("min", "nats/char on the validation split"),
    "val_bpc": ("min", "bits/char on the validation split"),
    "train_loss": ("min", "nats/char on the training batches"),
}
MetricName = Literal["val_loss", "val_bpc", "train_loss"]

_CATEGORICAL = ("grid_search", "choice")
# Range kinds -> (required argument names, optional argument names), in Ray Tune's order.
_RANGE_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uniform": (("low", "high"), ()),
    "quniform": (("low", "high", "q"), ()),
    "loguniform": (("low", "high"), ("base",)),
    "qloguniform": (("low", "high", "q"), ("base",)),
    "randint": (("low", "high"), ()),
    "qrandint": (("low", "high", "q"), ()),
    "lograndint": (("low", "high"), ("base",)),
}
_FLOAT_KINDS = ("uniform", "quniform", "loguniform", "qloguniform")
_INT_KINDS = ("randint", "qrandint", "lograndint")
_LOG_KINDS = ("loguniform", "qloguniform", "lograndint")
_INT_COUNTERPART = {"uniform": "randint", "quniform": "qrandint", "loguniform": "lograndint",
                    "qloguniform": "lograndint or qrandint"}

Problem = tuple[str, str]  # (dotted key, "rule, but got value; fix")


class _Problems(ValueError):
    """Several problems inside one key's value, each under its own sub-key (``mutations`` -> ``.num_layers``)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {text}" for key, text in self.problems))


# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """A sweep file that cannot run. ``problems`` holds one ``key: rule, but got value; fix`` line each."""

    def __init__(self, problems: Sequence[str], source: str | os.PathLike | None = None) -> None:
        self.problems: list[str] = list(problems)
        self.source: str | None = os.fspath(source) if source is not None else None
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.problems)
        where = f" in {self.source}" if self.source else ""
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):  # keeps `problems` intact through pickling (Ray, multiprocessing)
        return (type(self), (self.problems, self.source))


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown(key: Any, valid: Iterable[str], what: str = "key") -> str:
    valid, key = list(valid), str(key)
    close = difflib.get_close_matches(key, valid, n=1) or [  # else a prefix: grace -> grace_period
        v for v in valid if len(key) >= 3 and (v.startswith(key) or key.startswith(v))][:1]
    hint = f"did you mean {close[0]!r}?" if close else f"valid {what}s: {', '.join(valid)}"
    return f"unknown {what}; {hint}"


def _number_hint(value: Any) -> str | None:
    """The fix for a number that YAML read as text, e.g. ``1e-3`` (YAML 1.1 needs ``1.0e-3``)."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if re.fullmatch(r"\s*[-+]?\d+[eE][-+]?\d+\s*", value):
        return f"YAML reads {value} as text because it has no decimal point; write {number!r} instead"
    return "remove the quotes so YAML reads it as a number"


# --------------------------------------------------------------------------- search domains


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_integral(x: Any) -> bool:
    return _is_number(x) and float(x).is_integer()


def _multiple_of(x: float, q: float) -> bool:
    return math.isclose(x / q, round(x / q))  # Ray Tune's own test for quantized float bounds


def _arg_spec(kind: str) -> str:
    required, optional = _RANGE_ARGS[kind]
    return ", ".join([*required, *(f"{o} (optional)" for o in optional)])


def _domain_problems(kind: str, args: tuple) -> list[str]:
    """What is wrong with ``{kind: args}`` regardless of the option it searches (empty = fine)."""
    if kind not in SEARCH_KINDS:
        return [_unknown(kind, SEARCH_KINDS, "search key")]
    if kind in _CATEGORICAL:
        if not args:
            return ["must list at least one value, but got []; add values, or write the option as a plain value"]
        return []
    required, optional = _RANGE_ARGS[kind]
    if not len(required) <= len(args) <= len(required) + len(optional):
        return [f"takes [{_arg_spec(kind)}], but got {len(args)} value(s) {list(args)!r}; "
                f"write {kind}: [{', '.join(required)}]"]
    named = dict(zip((*required, *optional), args))
    problems = []
    for arg, x in named.items():
        if not _is_number(x):
            fix = _number_hint(x) or "write a finite number"
            problems.append(f"{arg} must be a number, but got {_show(x)}; {fix}")
        elif kind in _INT_KINDS and not _is_integral(x):
            problems.append(f"{arg} must be an integer for {kind}, but got {arg}={x!r}; use whole numbers, "
                            f"or {_FLOAT_KINDS[0]}/{_FLOAT_KINDS[2]} for a float option")
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


@dataclass(frozen=True)
class Domain:
    """One searched option: a Ray Tune sampling function (``kind``) and its arguments, in Ray's order.

    ``grid_search`` and ``choice`` take the list of values; ranges take ``[low, high]`` plus ``q``
    for the quantized kinds and an optional ``base`` for the log kinds (accepted for Ray Tune's
    signatures; it does not change the distribution and is not passed on).
    """

    kind: SearchKind
    args: tuple

    def __post_init__(self) -> None:
        args = tuple(self.args)
        problems = _domain_problems(self.kind, args)
        if problems:
            raise ValueError(f"{self.kind}: " + "; ".join(problems))
        if self.kind in _INT_KINDS:
            args = tuple(int(a) for a in args)
        object.__setattr__(self, "args", args)

    @property
    def is_grid(self) -> bool:
        """True for ``grid_search``: every value runs (times ``num_samples``) instead of being drawn."""
        return self.kind == "grid_search"

    @property
    def is_categorical(self) -> bool:
        return self.kind in _CATEGORICAL

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
        from ray import tune  # lazy: importing pipeline.config must not import Ray

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

    def __str__(self) -> str:
        return f"{{{self.kind}: {list(self.args)}}}"


# --------------------------------------------------------------------------- the train: section


def _strip_name(name: str, message: str) -> str:
    return message[len(name) + 1:] if message.startswith(name + " ") else message


def _value_problem(name: str, value: Any) -> str | None:
    """The engine's verdict on one value of option ``name``, without the option's name in front."""
    try:
        coerce(name, value)
    except ValueError as e:
        kind = {int: "a whole number", float: "a number", str: "a string"}.get(FIELD_TYPES[name], "a value")
        fix = _number_hint(value) or f"write {kind} such as {getattr(TrainConfig, name)!r} (the default)"
        return f"{_strip_name(name, str(e))}; {fix}"
    try:
        check_value(name, value)
    except ValueError as e:
        return _strip_name(name, str(e))
    return None


def _option_problems(name: str, domain: Domain) -> tuple[Domain | None, list[str]]:
    """Check a domain against option ``name``; return it with its values coerced to the option's type."""
    ftype = FIELD_TYPES[name]
    if ftype is str and not domain.is_categorical:
        return None, [f"{name} is a text option, so it can only be fixed or searched with grid_search or choice, "
                      f"but got {domain.kind}; list the values, e.g. {{choice: [...]}}"]
    if ftype is int and domain.kind in _FLOAT_KINDS:
        return None, [f"{name} is an integer option, but {domain.kind} draws floats; "
                      f"use {_INT_COUNTERPART[domain.kind]} instead"]
    if domain.is_categorical:
        problems = []
        for i, v in enumerate(domain.args):
            p = _value_problem(name, v)
            if p:
                problems.append(f"value {i} {p}")
        if problems:
            return None, problems
        return Domain(domain.kind, tuple(coerce(name, v) for v in domain.args)), []
    problems = []
    for label, v in zip(("smallest value", "largest value"), domain.extremes()):
        p = _value_problem(name, v)
        if p:
            problems.append(f"{label} {p}")
    return (None, problems) if problems else (domain, [])


def _parse_option(name: str, value: Any, key: str) -> tuple[Any, list[Problem]]:
    """A fixed value (coerced) or a Domain for option ``name``, or (None, problems)."""
    if isinstance(value, Domain):
        domain = value
    elif isinstance(value, Mapping):
        if len(value) != 1:
            return None, [(key, f"a searched option is a one-key mapping such as {{choice: [...]}}, but got "
                                f"{len(value)} keys {list(value)!r}; keep exactly one of {', '.join(SEARCH_KINDS)}")]
        kind, args = next(iter(value.items()))
        where = f"{key}.{kind}"
        if kind not in SEARCH_KINDS:
            return None, [(where, _unknown(kind, SEARCH_KINDS, "search key"))]
        if not isinstance(args, list):
            spec = "values" if kind in _CATEGORICAL else _arg_spec(kind)
            return None, [(where, f"takes a list [{spec}], but got {_show(args)}; write {kind}: [{spec}]")]
        structural = _domain_problems(kind, tuple(args))
        if structural:
            return None, [(where, p) for p in structural]
        domain = Domain(kind, tuple(args))
    else:
        p = _value_problem(name, value)
        return (None, [(key, p)]) if p else (coerce(name, value), [])
    checked, problems = _option_problems(name, domain)
    return checked, [(f"{key}.{domain.kind}", p) for p in problems]


def _parse_train(raw: Any) -> tuple[dict[str, Any], list[Problem]]:
    """The valid entries of a ``train:`` mapping, and a problem for each invalid one."""
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [("train", f"must be a mapping of rnncore options, but got {_show(raw)}; "
                              "write one option per line, e.g. hidden_size: 128")]
    train: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in raw.items():
        key = f"train.{name}"
        if name not in FIELD_NAMES:
            problems.append((key, _unknown(name, FIELD_NAMES)))
            continue
        parsed, option_problems = _parse_option(name, value, key)
        problems += option_problems
        if not option_problems:
            train[name] = parsed
    return train, problems


def _value_range(train: Mapping[str, Any], name: str) -> tuple[Any, Any]:
    value = train.get(name, getattr(TrainConfig, name))
    return value.extremes() if isinstance(value, Domain) else (value, value)


# --------------------------------------------------------------------------- sections


def _local_path(value: Any) -> Path:
    if isinstance(value, Path):
        return Path(os.path.abspath(value.expanduser()))
    if isinstance(value, str) and value.strip():
        return Path(os.path.abspath(os.path.expanduser(value)))
    raise ValueError(f"must be a folder path, but got {_show(value)}; write e.g. results/my_sweep")


def _storage(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a folder path or URI, but got {_show(value)}; write e.g. s3://bucket/sweeps, "
                         "or leave it out for Ray Tune's default")
    return value if "://" in value else str(_local_path(value))


def _empty_as_default(value: Any) -> Any:
    return {} if value is None else value


def resolve_data_path(path: Path, base_dir: Path | None) -> Path:
    """``path`` if absolute, else the first existing of ``base_dir/path`` and ``cwd/path``; else ValueError."""
    path = path.expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys(d / path for d in (base_dir, Path.cwd()) if d is not None))
    for candidate in candidates:
        if candidate.exists():
            if not candidate.is_file():
                raise ValueError(f"must name a file, but got {str(path)!r}, which is a folder ({candidate}); "
                                 "point it at the UTF-8 text file inside")
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise ValueError(f"must name an existing file, but got {str(path)!r}, which was not found (looked for {tried}); "
                     "fix the path, relative to the sweep file's folder or the working directory")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataConfig(_Section):
    """``data:`` the corpus. ``path`` is absolute and names an existing file once validated."""

    path: Path
    val_fraction: float = Field(0.1, ge=0, lt=1)

    @field_validator("path", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"must be a file path, but got {_show(value)}; write e.g. path: data/tinyshakespeare.txt")
        base_dir = (info.context or {}).get("base_dir")
        return resolve_data_path(Path(value), Path(base_dir) if base_dir is not None else None)


class FifoScheduler(_Section):
    """``scheduler: {type: fifo}``: every trial runs to its last iteration."""

    type: Literal["fifo"] = "fifo"


class AshaScheduler(_Section):
    """``scheduler: {type: asha}``: asynchronous successive halving; times are engine iterations."""

    type: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)
    max_t: int | None = Field(None, ge=1)  # None on its own; SweepConfig fills in the largest `iterations`


def _not_mutable(name: str) -> str:
    """Why PBT cannot mutate option ``name``, and what to do instead (rnncore.config declares each option's kind)."""
    if name not in FIELD_NAMES:
        close = difflib.get_close_matches(name, FIELD_NAMES, n=1)
        return f"unknown option; did you mean {close[0]!r}?" if close else \
            f"unknown option; PBT can mutate {', '.join(MUTABLE_KEYS)}"
    if KINDS[name] == SHAPE:
        return (f"cannot change while a trial trains, because {name} shapes the model or its training schedule "
                f"and a PBT copy continues another trial's checkpoint; search it under train: instead (each trial "
                f"keeps its value), and mutate one of {', '.join(MUTABLE_KEYS)}")
    return (f"cannot change while a trial trains, because {name} only takes effect when a trial starts; search it "
            f"under train: instead, and mutate one of {', '.join(MUTABLE_KEYS)}")


def _parse_mutations(value: Any) -> dict[str, Domain]:
    """``mutations:`` of PBT: option -> how to draw a new value (a search domain other than grid_search)."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"must map options to search domains, but got {_show(value)}; "
                         "write e.g. mutations: {learning_rate: {loguniform: [0.001, 0.3]}}")
    out: dict[str, Domain] = {}
    problems: list[Problem] = []
    for name, spec in value.items():
        key = str(name)
        if name not in MUTABLE_KEYS:
            problems.append((key, _not_mutable(key)))
            continue
        parsed, option_problems = _parse_option(name, spec, key)
        if option_problems:
            problems += option_problems
        elif not isinstance(parsed, Domain) or parsed.is_grid:
            problems.append((key, f"must be a search domain to draw new values from, but got {_show(spec)}; "
                                  f"write e.g. {name}: {{loguniform: [low, high]}} or {{choice: [...]}}"))
        else:
            out[name] = parsed
    if problems:
        raise _Problems(problems)
    return out


class PbtScheduler(_Section):
    """``scheduler: {type: pbt}``: Population Based Training; times are engine iterations.

    Every ``perturbation_interval`` iterations a trial in the bottom ``quantile_fraction`` of the population
    continues from the checkpoint of one in the top (weights, Adagrad memory, hidden state, data position,
    RNG) with its ``mutations`` perturbed (x1.2 or x0.8, or redrawn with ``resample_probability``)."""

    type: Literal["pbt"]
    perturbation_interval: int = Field(ge=1)
    mutations: Annotated[dict[str, Any], BeforeValidator(_parse_mutations)]
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    burn_in_period: int = Field(0, ge=0)


Scheduler = Annotated[Union[FifoScheduler, AshaScheduler, PbtScheduler], Field(discriminator="type")]
_SCHEDULERS: dict[str, type[_Section]] = {"fifo": FifoScheduler, "asha": AshaScheduler, "pbt": PbtScheduler}


class RandomSearch(_Section):
    """``search_alg: {type: random}`` (the default): every grid point ``num_samples`` times, ranges drawn at random."""

    type: Literal["random"] = "random"


class OptunaSearch(_Section):
    """``search_alg: {type: optuna}``: Optuna's TPE proposes each trial from the results so far.

    ``seed`` seeds the sampler (default: the sweep's ``seed``); the first ``startup_trials`` are drawn at
    random (TPE needs results to model); ``max_concurrent_trials`` bounds how many trials it proposes before
    their results are in."""

    type: Literal["optuna"]
    seed: int | None = Field(None, ge=0)
    startup_trials: int = Field(10, ge=1)


SearchAlg = Annotated[Union[RandomSearch, OptunaSearch], Field(discriminator="type")]
_SEARCHERS: dict[str, type[_Section]] = {"random": RandomSearch, "optuna": OptunaSearch}
_TAGGED: dict[str, dict[str, type[_Section]]] = {"scheduler": _SCHEDULERS, "search_alg": _SEARCHERS}


class Resources(_Section):
    """``resources:`` per trial."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class MlflowConfig(_Section):
    """``mlflow:`` where runs are logged. ``tracking_uri`` None = the driver's default local store."""

    experiment: str = Field(min_length=1)
    tracking_uri: str | None = Field(None, min_length=1)


class RayConfig(_Section):
    """``ray:`` the cluster. ``address`` None = start a local Ray instance."""

    address: str | None = Field(None, min_length=1)


class PackingConfig(_Section):
    """``packing:`` train up to ``max_trials`` trials whose shapes agree as one batched computation."""

    max_trials: int = Field(ge=1)


# --------------------------------------------------------------------------- the sweep


class SweepConfig(_Section):
    """A validated sweep file. Build it with ``load_sweep``; paths are absolute."""

    name: str
    data: DataConfig
    train: dict[str, Union[Any, Domain]] = Field(default_factory=dict)
    num_samples: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    metric: MetricName = "val_loss"
    mode: Literal["min", "max"] = "min"
    scheduler: Scheduler = Field(default_factory=FifoScheduler)
    search_alg: SearchAlg = Field(default_factory=RandomSearch)
    max_concurrent_trials: int | None = Field(None, ge=1)
    resources: Annotated[Resources, BeforeValidator(_empty_as_default)] = Field(default_factory=Resources)
    mlflow: MlflowConfig
    output: Annotated[Path, BeforeValidator(_local_path)]
    time_budget_s: float | None = Field(None, gt=0)
    max_failures: int = Field(2, ge=0)
    ray: Annotated[RayConfig, BeforeValidator(_empty_as_default)] = Field(default_factory=RayConfig)
    storage: Annotated[str | None, BeforeValidator(_storage)] = None
    packing: PackingConfig | None = None
    source_path: Path | None = None
    source_text: str = Field("", repr=False)
    _corpus: Corpus | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """output = results/<name>, mlflow.experiment = name, asha max_t = the largest iterations."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("name") if isinstance(data.get("name"), str) else "sweep"  # a bad name is reported
        data.setdefault("output", f"results/{name}")
        mlflow = {} if data.get("mlflow") is None else data["mlflow"]
        if isinstance(mlflow, dict):
            data["mlflow"] = {"experiment": name, **mlflow}
        scheduler = data.get("scheduler")
        if scheduler is None or isinstance(scheduler, str):
            scheduler = data["scheduler"] = {"type": scheduler or "fifo"}
        if data.get("search_alg") is None or isinstance(data.get("search_alg"), str):
            data["search_alg"] = {"type": data.get("search_alg") or "random"}
        if isinstance(scheduler, dict) and scheduler.get("type") == "asha" and scheduler.get("max_t") is None:
            train, problems = _parse_train(data.get("train"))
            if not any(key.startswith("train.iterations") for key, _ in problems):
                data["scheduler"] = {**scheduler, "max_t": _value_range(train, "iterations")[1]}
        return data

    @field_validator("packing")
    @classmethod
    def _check_packing(cls, value: PackingConfig | None, info: ValidationInfo) -> PackingConfig | None:
        scheduler, search = info.data.get("scheduler"), info.data.get("search_alg")
        if value is not None and scheduler is not None and not isinstance(scheduler, FifoScheduler):
            raise ValueError("packed trials run with scheduler fifo (a pack trains its members together), "
                             f"but got scheduler {scheduler.type}; set scheduler: fifo or remove packing")
        if value is not None and isinstance(search, OptunaSearch):
            raise ValueError("packed trials are drawn up front, but search_alg optuna proposes each trial from the "
                             "results so far; remove packing, or use search_alg: random")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            fix = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._-") or "my_sweep"
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (it names a folder and an MLflow "
                             f"experiment), but got {value!r}; try {fix!r}")
        return value

    @field_validator("train", mode="before")
    @classmethod
    def _check_train(cls, value: Any) -> dict[str, Any]:
        train, problems = _parse_train(value)
        if problems:
            raise ValueError("; ".join(f"{key}: {text}" for key, text in problems))
        return train

    # ---- views of the train section

    @property
    def fixed(self) -> dict[str, Any]:
        """The train options the file fixes, coerced to the engine's types (defaults not included)."""
        return {k: v for k, v in self.train.items() if not isinstance(v, Domain)}

    @property
    def derive_seed(self) -> bool:
        """True unless the file sets train.seed itself: then each trial's seed derives from the sweep seed."""
        return "seed" not in self.train

    @property
    def searched(self) -> dict[str, Domain]:
        """The train options the file searches, in file order."""
        return {k: v for k, v in self.train.items() if isinstance(v, Domain)}

    @property
    def grid_size(self) -> int:
        """The number of grid points: the product of the grid_search lengths (1 without one)."""
        return math.prod(len(d.values()) for d in self.searched.values() if d.is_grid)

    @property
    def num_trials(self) -> int:
        """Ray Tune's count: every grid point ``num_samples`` times (random keys redrawn each time)."""
        return self.num_samples * self.grid_size

    def value_range(self, option: str) -> tuple[Any, Any]:
        """The smallest and largest value ``option`` takes over the sweep (its default if unset)."""
        if option not in FIELD_NAMES:
            raise KeyError(f"{option!r} is not an rnncore option; {_unknown(option, FIELD_NAMES)}")
        return _value_range(self.train, option)

    def corpus(self) -> Corpus:
        """The corpus, read once: load_sweep reads it to check it, and the sweep trains on that copy."""
        if self._corpus is None:
            self._corpus = load_corpus(self.data.path, self.data.val_fraction)
        return self._corpus

    def base_values(self) -> dict[str, Any]:
        """Every engine option: the fixed values on top of the engine defaults; searched options keep their default.

        A dict, not a TrainConfig: a searched option at its default may break a rule that ties options together
        (warmup 20000 fixed, iterations searched over 30000-40000), which only each trial's own values must keep."""
        return {**TrainConfig().to_dict(), **self.fixed}

    def tune_space(self) -> dict[str, Any]:
        """What each trial's config holds: the searched options as Tune domains, and under PBT also the
        mutated options at their starting value (PBT mutates keys of the trial's config). Imports Ray."""
        space = {k: d.to_tune() for k, d in self.searched.items()}
        if isinstance(self.scheduler, PbtScheduler):
            for name in self.scheduler.mutations:
                space.setdefault(name, self.train.get(name, getattr(TrainConfig, name)))
        return space

    # ---- the plan

    def plan_text(self) -> str:
        """A human-readable plan: trials, fixed and searched values, scheduler, resources, outputs."""
        grid = [f"{k} ({len(d.values())})" for k, d in self.searched.items() if d.is_grid]
        count = f"{self.num_trials} trial{'s' if self.num_trials != 1 else ''}"
        if grid:
            count += f" = {self.grid_size} grid point(s) from {' x '.join(grid)} x num_samples {self.num_samples}"
        elif self.num_samples > 1:
            count += f" = num_samples {self.num_samples}"
        random_keys = [k for k, d in self.searched.items() if not d.is_grid]
        if random_keys:
            how = "proposed by TPE" if isinstance(self.search_alg, OptunaSearch) else "drawn anew"
            count += f"; {', '.join(random_keys)} {how} for each trial"
        width = max((len(k) for k in self.train), default=0)
        defaults = TrainConfig().to_dict()
        unset = [f"{k}={defaults[k]!r}" for k in FIELD_NAMES if k not in self.train]
        lines = [
            f"Sweep {self.name!r}" + (f" from {self.source_path}" if self.source_path else ""),
            f"  trials:     {count} (seed {self.seed})",
            f"  corpus:     {self.data.path} (val_fraction {self.data.val_fraction})",
            "  searched:" + ("" if self.searched else "   none"),
            *(f"    {k:<{width}}  {d.describe()}" for k, d in self.searched.items()),
            "  fixed:" + ("" if self.fixed else "      none"),
            *(f"    {k:<{width}}  {v!r}" for k, v in self.fixed.items()),
        ]
        if unset:
            lines.append(f"  defaults:   {', '.join(unset)}")
        lines += [
            f"  objective:  {self.mode} {self.metric} ({METRICS[self.metric][1]})",
            f"  search:     {self._search_text()}",
            f"  scheduler:  {self._scheduler_text()}",
            f"  resources:  {self.resources.cpu:g} CPU, {self.resources.gpu:g} GPU per trial; "
            + (f"at most {self.max_concurrent_trials} at once" if self.max_concurrent_trials
               else "as many at once as resources allow"),
            f"  limits:     max_failures {self.max_failures} per trial; "
            + (f"time budget {self.time_budget_s:g} s" if self.time_budget_s else "no time budget"),
            f"  ray:        {self.ray.address or 'a new local instance'}"
            + (f"; storage {self.storage}" if self.storage else ""),
            f"  output:     {self.output}",
            f"  mlflow:     experiment {self.mlflow.experiment!r} at "
            + (self.mlflow.tracking_uri or "the default local store"),
            *(f"  note:       {n}" for n in self.notes()),
        ]
        return "\n".join(lines)

    def _scheduler_text(self) -> str:
        s = self.scheduler
        if isinstance(s, AshaScheduler):
            return (f"ASHA: grace_period {s.grace_period}, reduction_factor {s.reduction_factor:g}, "
                    f"max_t {s.max_t} (iterations)")
        if isinstance(s, PbtScheduler):
            mutated = ", ".join(f"{k} {d.describe()}" for k, d in s.mutations.items())
            return (f"PBT: every {s.perturbation_interval} iterations the bottom {s.quantile_fraction:g} copy the "
                    f"top (resample_probability {s.resample_probability:g}); mutates {mutated}")
        return "FIFO: every trial runs all its iterations"

    def notes(self) -> list[str]:
        """Advice on a valid sweep that will likely not do what its author wants (shown, not enforced)."""
        out = []
        if isinstance(self.scheduler, PbtScheduler) and (self.max_concurrent_trials or self.num_trials) < self.num_trials:
            out.append(f"PBT compares the trials that run at the same time, but at most {self.max_concurrent_trials} of "
                       f"the {self.num_trials} do; set max_concurrent_trials: {self.num_trials} (with resources.cpu "
                       "below 1 to share cores) so the whole population trains together")
        return out

    def _search_text(self) -> str:
        if isinstance(self.search_alg, OptunaSearch):
            seed = self.seed if self.search_alg.seed is None else self.search_alg.seed
            return (f"Optuna TPE (seed {seed}): the first {self.search_alg.startup_trials} trials drawn at random, "
                    "then each proposed from the results so far")
        return "random: every grid point num_samples times, other searched values drawn at random"


FILE_KEYS: tuple[str, ...] = tuple(k for k in SweepConfig.model_fields if not k.startswith("source_"))
_SECTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): FILE_KEYS,
    ("data",): tuple(DataConfig.model_fields),
    ("resources",): tuple(Resources.model_fields),
    ("mlflow",): tuple(MlflowConfig.model_fields),
    ("ray",): tuple(RayConfig.model_fields),
    ("packing",): tuple(PackingConfig.model_fields),
    **{(section, t): tuple(m.model_fields) for section, models in _TAGGED.items() for t, m in models.items()},
}
_MISSING_FIX = {
    "name": "add e.g. name: my_sweep (it names the MLflow experiment and the output folder)",
    "data": "add e.g. data: {path: data/tinyshakespeare.txt}",
    "data.path": "add e.g. path: data/tinyshakespeare.txt",
}
_FIXES = {
    "name": "use a short name such as basic",
    "data": "write e.g. data: {path: data/tinyshakespeare.txt, val_fraction: 0.1}",
    "scheduler": "write e.g. scheduler: {type: asha, grace_period: 500}, or scheduler: fifo",
    "resources": "write e.g. resources: {cpu: 1, gpu: 0}",
    "mlflow": "write e.g. mlflow: {experiment: my_sweep, tracking_uri: http://host:5000}",
    "ray": "write e.g. ray: {address: auto}",
    "data.val_fraction": "0.1 holds out the last tenth; 0 trains on everything",
    "num_samples": "use 1 to run each grid point once",
    "seed": "use any non-negative integer",
    "metric": "val_loss is nats/char on the validation split, val_bpc the same in bits",
    "mode": "use min for a loss",
    "scheduler.grace_period": "use a number of iterations such as 500",
    "scheduler.reduction_factor": "3 is the usual choice",
    "scheduler.max_t": "leave it out to use the largest iterations",
    "scheduler.perturbation_interval": "use a multiple of train.eval_every, such as 2 x eval_every",
    "scheduler.quantile_fraction": "0.25 replaces the bottom quarter with copies of the top quarter",
    "scheduler.resample_probability": "0.25 redraws a quarter of the mutated values instead of scaling them",
    "scheduler.burn_in_period": "use 0, or a number of iterations before the first perturbation",
    "search_alg": "write e.g. search_alg: {type: optuna}, or leave it out for random/grid search",
    "search_alg.seed": "use any non-negative integer, or leave it out to use the sweep's seed",
    "search_alg.startup_trials": "use about a third of num_samples; Optuna's default is 10",
    "max_concurrent_trials": "use 1 or more, or leave it out to let the resources decide",
    "resources.cpu": "use 1 CPU per trial",
    "resources.gpu": "use 0 for CPU-only trials, or a fraction such as 0.5 to share a GPU",
    "mlflow.experiment": "leave it out to use the sweep's name",
    "mlflow.tracking_uri": "write e.g. http://host:5000, or leave it out for the local store",
    "time_budget_s": "use seconds such as 3600, or leave it out for no limit",
    "max_failures": "use 0 to fail fast, or 2 (the default)",
    "ray.address": "write e.g. auto or ray://host:10001, or leave it out to start Ray locally",
}
_TAG_FIXES = {
    "scheduler": "type: fifo, type: asha for early stopping, or type: pbt for Population Based Training",
    "search_alg": "type: random (grid and random search), or type: optuna for Bayesian search (TPE)",
}
_TYPES = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
}
_COMPARISONS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
                "less_than_equal": ("le", "<=")}


def _describe_all(error: Mapping[str, Any]) -> list[Problem]:
    """One pydantic error as its problems: one, or each sub-key's of a value that holds several."""
    key, text = _describe(error)
    inner = (error.get("ctx") or {}).get("error")
    if isinstance(inner, _Problems):
        return [(f"{key}.{sub}", sub_text) for sub, sub_text in inner.problems]
    return [(key, text)]


def _describe(error: Mapping[str, Any]) -> Problem:
    """One pydantic error as ``(dotted key, "rule, but got value; fix")``."""
    loc = [str(part) for part in error["loc"]]
    tagged = _TAGGED.get(loc[0], {}) if loc else {}
    tag = loc.pop(1) if len(loc) > 1 and loc[1] in tagged else None
    key, kind, value, ctx = ".".join(loc), error["type"], error.get("input"), error.get("ctx") or {}
    fix = _FIXES.get(key, "see sweeps/basic.yaml for a working example")
    if kind == "extra_forbidden":
        parent = tuple(loc[:-1]) + ((tag,) if tag else ())
        for other, model in tagged.items():
            if tag and other != tag and loc[-1] in model.model_fields:
                return key, f"unknown key for type {tag}; {loc[-1]} needs type: {other}"
        return key, _unknown(loc[-1], _SECTIONS.get(parent, ()))
    if kind == "missing":
        return key, f"required key is missing; {_MISSING_FIX.get(key, 'add it')}"
    if kind == "union_tag_invalid":
        tags = list(tagged)
        close = difflib.get_close_matches(str(ctx.get("tag")), tags, n=1)
        hint = f"did you mean {close[0]!r}?" if close else _TAG_FIXES.get(loc[0], fix)
        return f"{key}.type", f"must be one of {', '.join(map(repr, tags))}, but got {ctx.get('tag')!r}; {hint}"
    if kind == "union_tag_not_found":
        return f"{key}.type", f"required key is missing; add {_TAG_FIXES.get(loc[0], 'type')}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else fix
        return key, f"must be one of {', '.join(map(repr, allowed))}, but got {_show(value)}; {hint}"
    if kind in _TYPES:
        return key, f"must be {_TYPES[kind]}, but got {_show(value)}; {_number_hint(value) or fix}"
    if kind in _COMPARISONS:
        name, op = _COMPARISONS[kind]
        bound = ctx.get(name)
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return key, f"must be {op} {bound}, but got {_show(value)}; {fix}"
    if kind == "string_too_short":
        return key, f"must not be empty, but got {_show(value)}; {fix}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return key, str(ctx["error"])
    return key, f"{error['msg'][0].lower()}{error['msg'][1:]}, but got {_show(value)}; {fix}"


# --------------------------------------------------------------------------- load_sweep


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: sweep file not found; pass the path of a YAML file such as "
                           "sweeps/basic.yaml"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, but a sweep file is needed; pass e.g. sweeps/basic.yaml"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: sweep file is not readable; check its permissions"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: must be UTF-8 text, but got byte 0x{raw[e.start]:02x} at offset {e.start}; "
                           "re-save it as UTF-8"], path) from None


def _parse_yaml(text: str, path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown position"
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError([f"yaml: invalid YAML at {where}: {what}; fix the syntax there "
                           "(indentation, a missing ':' or an unclosed bracket or quote)"], path) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"yaml: invalid YAML: {e}; fix the syntax"], path) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__} ({_show(raw)})"
        raise ConfigError([f"(top level): must be a mapping of sweep keys (name:, data:, train:, ...), but got {got}; "
                           "start from sweeps/basic.yaml"], path)
    return raw


def _validate(data: dict[str, Any], context: dict[str, Any]) -> tuple[SweepConfig | None, list[Problem], set[str]]:
    """Validate; on failure also build a stand-in with the broken top-level keys at their defaults.

    The stand-in lets the checks that do not depend on the broken keys still run, so one pass
    reports every problem. The returned set names the broken top-level keys.
    """
    try:
        return SweepConfig.model_validate(data, context=context), [], set()
    except ValidationError as e:
        errors = e.errors()
    problems = [p for err in errors for p in _describe_all(err)]
    broken = {str(err["loc"][0]) for err in errors if err["loc"]}
    repaired = {k: v for k, v in data.items() if k not in broken}
    if "name" in broken:
        repaired["name"] = "sweep"
    if "data" in broken:
        repaired["data"] = DataConfig.model_construct(path=Path(os.devnull), val_fraction=0.1)
    try:
        return SweepConfig.model_validate(repaired, context=context), problems, broken
    except ValidationError:
        return None, problems, broken


def _folder_problem(key: str, path: Path) -> Problem | None:
    """A folder that can be used or created: if it exists, a writable folder; else under one."""
    if path.exists():
        if not path.is_dir():
            return key, f"must be a folder, but got {path}, which is an existing file; choose another path"
        if not os.access(path, os.W_OK | os.X_OK):
            return key, f"must be a writable folder, but got {path}, which is read-only; fix its permissions"
        return None
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return key, f"must be creatable, but got {path}, inside the file {ancestor}; choose another path"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return key, f"must be creatable, but got {path}, and {ancestor} is not writable; choose a folder you can write"
    return None


def _semantic_problems(cfg: SweepConfig, broken: set[str], check_corpus: bool) -> list[Problem]:
    """Checks across keys, and against the disk; each runs only when its inputs are valid."""
    problems: list[Problem] = []
    if not {"metric", "mode"} & broken and cfg.mode != METRICS[cfg.metric][0]:
        want = METRICS[cfg.metric][0]
        problems.append(("mode", f"{cfg.metric} is a loss, so mode must be {want}, but got mode={cfg.mode!r}; "
                                 f"use mode: {want}"))
    if not {"metric", "data"} & broken and cfg.metric.startswith("val_") and cfg.data.val_fraction == 0:
        problems.append(("metric", f"{cfg.metric} needs a validation split, but got data.val_fraction=0; "
                                   "set val_fraction: 0.1, or use metric: train_loss"))
    device = cfg.train.get("device", "cpu")
    devices = set(device.values()) if isinstance(device, Domain) else {device}
    if "gpu" in devices and not {"train.device", "resources"} & broken and cfg.resources.gpu == 0:
        problems.append(("train.device", "device gpu needs a GPU for each trial, but got resources.gpu=0; "
                                         "set resources: {cpu: 1, gpu: 0.25} (a share of a GPU), or device: auto"))
    asha = cfg.scheduler if isinstance(cfg.scheduler, AshaScheduler) else None
    if asha and not {"scheduler", "train.iterations"} & broken:
        fewest = cfg.value_range("iterations")[0]
        if asha.grace_period > fewest:
            problems.append(("scheduler.grace_period",
                             f"must be <= the smallest possible iterations, but got grace_period={asha.grace_period} "
                             f"> iterations={fewest}; lower grace_period or raise iterations"))
        elif asha.max_t is not None and asha.grace_period > asha.max_t:
            problems.append(("scheduler.max_t", f"must be >= grace_period, but got max_t={asha.max_t} < "
                                                f"grace_period={asha.grace_period}; raise max_t or leave it out"))
    if isinstance(cfg.search_alg, OptunaSearch) and "search_alg" not in broken:
        for name, d in cfg.searched.items():
            if d.is_grid and f"train.{name}" not in broken:
                problems.append((f"train.{name}.grid_search",
                                 "search_alg optuna draws every searched value itself and cannot run a grid, but got "
                                 f"grid_search {list(d.values())}; write choice: {list(d.values())} instead, "
                                 "or use search_alg: random"))
        if isinstance(cfg.scheduler, PbtScheduler) and "scheduler" not in broken:
            problems.append(("search_alg", "PBT makes its own trials from the population, so it cannot take search "
                                           "alg optuna; use search_alg: random with scheduler pbt, or another scheduler"))
    if isinstance(cfg.scheduler, PbtScheduler) and "scheduler" not in broken:
        problems += _pbt_problems(cfg, cfg.scheduler, broken)
    if not {"train.warmup", "train.iterations"} & broken:
        problems.append(_together_problem(cfg))
    if check_corpus and "data" not in broken:
        try:
            corpus = cfg.corpus()
        except CorpusError as e:
            problems.append(("data.path", str(e)))
        else:
            if not {"train.seq_length", "train.batch_size"} & broken:
                seq_length, batch_size = cfg.value_range("seq_length")[1], cfg.value_range("batch_size")[1]
                try:
                    check_fits(corpus, seq_length, batch_size)
                except CorpusError as e:
                    problems.append(("train.seq_length", f"the largest seq_length={seq_length} with the largest "
                                                         f"batch_size={batch_size} does not fit: {e}"))
    if "output" not in broken:
        problems.append(_folder_problem("output", cfg.output))
    if "storage" not in broken and cfg.storage and "://" not in cfg.storage:
        problems.append(_folder_problem("storage", Path(cfg.storage)))
    return [p for p in problems if p is not None]


def _together_problem(cfg: SweepConfig) -> Problem | None:
    """The engine's rules that tie options together (rnncore.config.check_together), for the worst trial the
    sweep can make: the largest warmup with the fewest iterations."""
    warmup, iterations = cfg.value_range("warmup")[1], cfg.value_range("iterations")[0]
    problem = check_together({**cfg.base_values(), "warmup": warmup, "iterations": iterations})
    if problem is None:
        return None
    searched = [f"the {end} {k}" for end, k in (("largest", "warmup"), ("fewest", "iterations")) if k in cfg.searched]
    if searched:  # "rule, but got value; fix": say where the values come from before the fix
        rule_value, _, fix = problem.partition("; ")
        problem = f"{rule_value} ({' and '.join(searched)} the search can draw); {fix}"
    return "train.warmup", problem


def _pbt_problems(cfg: SweepConfig, pbt: PbtScheduler, broken: set[str]) -> list[Problem]:
    """PBT perturbs at reports, which come every eval_every iterations, and needs a population."""
    problems: list[Problem] = []
    if cfg.num_trials < 2 and not {"num_samples", "train"} & broken:
        problems.append(("num_samples", f"PBT needs a population of at least 2 trials, but the sweep has "
                                        f"{cfg.num_trials}; raise num_samples (4 or more is usual)"))
    eval_every = cfg.train.get("eval_every", TrainConfig.eval_every)
    if isinstance(eval_every, Domain):
        problems.append(("train.eval_every", "must be fixed with scheduler pbt (trials are compared at the same "
                                             f"iterations), but got {eval_every}; write one value"))
    elif "train.eval_every" not in broken and pbt.perturbation_interval % eval_every:
        problems.append(("scheduler.perturbation_interval",
                         f"must be a multiple of train.eval_every={eval_every} (trials report and checkpoint "
                         f"there), but got {pbt.perturbation_interval}; use e.g. {2 * eval_every}"))
    fewest = cfg.value_range("iterations")[0]
    if "train.iterations" not in broken and pbt.perturbation_interval + pbt.burn_in_period >= fewest:
        problems.append(("scheduler.perturbation_interval",
                         f"must leave room to perturb before the last iteration, but got perturbation_interval="
                         f"{pbt.perturbation_interval} (+ burn_in_period {pbt.burn_in_period}) >= iterations="
                         f"{fewest}; lower it or raise train.iterations"))
    for name in pbt.mutations:
        if isinstance(cfg.train.get(name), Domain) and cfg.train[name].is_grid:
            problems.append((f"train.{name}.grid_search", f"{name} is mutated by PBT, so its starting values are "
                                                          "drawn, not a grid; use choice or a range instead"))
    return problems


def load_sweep(path: str | os.PathLike, *, check_corpus: bool = True) -> SweepConfig:
    """Read and validate a sweep file, creating and starting nothing.

    Relative ``data.path`` values are looked up next to the sweep file first, then in the
    working directory; ``output`` and ``storage`` are relative to the working directory. With
    ``check_corpus`` the corpus is read and decoded and the largest window must fit its training
    split (without it the file need only exist).

    Raises:
        ConfigError: listing every problem found, one ``dotted.key: rule, but got value; fix`` each.
    """
    source = Path(os.path.abspath(os.fspath(path)))
    text = _read(source)
    raw = _parse_yaml(text, source)
    order = [str(k) for k in raw]
    problems = [(str(k), _unknown(k, FILE_KEYS) if k not in SweepConfig.model_fields else
                 "unknown key; load_sweep fills it in, so remove it from the file") for k in raw if k not in FILE_KEYS]
    raw = {k: v for k, v in raw.items() if k in FILE_KEYS}
    train, train_problems = _parse_train(raw.get("train"))
    data = {**raw, "train": train, "source_path": source, "source_text": text}
    cfg, schema_problems, broken = _validate(data, {"base_dir": source.parent})
    if "name" in broken and "output" not in raw:
        broken.add("output")  # its default derives from the broken name
    for key, _ in train_problems:  # "train" itself, or "train.<option>[.<kind>...]"
        broken |= {f"train.{n}" for n in FIELD_NAMES} if key == "train" else {".".join(key.split(".")[:2])}
    problems += train_problems + schema_problems
    if cfg is not None:
        problems += _semantic_problems(cfg, broken, check_corpus)
    if problems:
        raise ConfigError([f"{key}: {text}" for key, text in _in_file_order(problems, order)], source)
    assert cfg is not None
    return cfg


def _in_file_order(problems: list[Problem], keys: Sequence[str]) -> list[Problem]:
    """Sort problems by where their top-level key appears in the file (stable; keys not in it first)."""
    position = {k: i for i, k in enumerate(keys)}
    return sorted(problems, key=lambda p: position.get(p[0].split(".")[0], -1))
