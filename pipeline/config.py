"""The sweep file: ``load_sweep`` reads and validates it into a ``SweepConfig``.

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

One mechanism checks the file: pydantic models, one concern per module:

- ``pipeline.options``: ``TrainSection``, built from the engine's own option declarations
  (``rnncore.config.TrainConfig``): each option is a fixed value or a search domain
  (``pipeline.space.Domain``), checked by the engine's rules (``check_value``);
- ``pipeline.sections``: the other sections (data, scheduler, search_alg, resources, mlflow, ray, packing);
- ``pipeline.rules``: the rules that tie keys together, and the disk (corpus, output folders);
- ``pipeline.plan``: the trial plan as text (``SweepConfig.plan_text``);
- ``pipeline.sweepfile``: reading the file (UTF-8, safe YAML with bounded aliases, no key twice) and ``ConfigError``.

This module holds ``SweepConfig`` and the checking itself: each key of the file, and each train option,
is validated on its own, so one broken value hides no other's problems; then the rules across keys run
on the valid ones; one formatter turns pydantic's errors into the messages.

Importing this module imports neither Ray nor MLflow.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, create_model
from pydantic_core import ErrorDetails

from rnncore.config import FIELD_NAMES, TrainConfig
from rnncore.data import Corpus, load_corpus

from . import plan
from .options import Section, TrainOptions, TrainSection, value_range
from .rules import Problem, across_keys
from .sections import (TAGGED, AshaScheduler, DataConfig, EmptyAsDefault, FifoScheduler, LocalFolder, MlflowConfig,
                       OptunaSearch, PackingConfig, PbtScheduler, RandomSearch, RayConfig, Resources, Scheduler,
                       SearchAlg, Storage, SweepName, resolve_data_path)
from .sweepfile import ConfigError, parse_yaml, read_text
from .space import SEARCH_KINDS, Domain, SearchKind, number_hint, show, unknown
from .vocab import METRICS, MetricName

__all__ = [
    "AshaScheduler", "ConfigError", "DataConfig", "Domain", "FILE_KEYS", "FifoScheduler", "METRICS", "MlflowConfig",
    "OptunaSearch", "PackingConfig", "PbtScheduler", "RandomSearch", "RayConfig", "Resources", "SEARCH_KINDS",
    "Scheduler", "SearchAlg", "SearchKind", "SweepConfig", "TrainSection", "load_sweep", "resolve_data_path",
]


class SweepConfig(Section):
    """A validated sweep file. Build it with ``load_sweep``; paths are absolute."""

    name: SweepName
    data: DataConfig
    train: TrainOptions = Field(default_factory=dict)  # set options, in order
    num_samples: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    metric: MetricName = "val_loss"
    mode: Literal["min", "max"] = "min"
    scheduler: Scheduler = Field(default_factory=FifoScheduler)
    search_alg: SearchAlg = Field(default_factory=RandomSearch)
    max_concurrent_trials: int | None = Field(None, ge=1)
    resources: EmptyAsDefault[Resources] = Field(default_factory=Resources)
    mlflow: MlflowConfig
    output: LocalFolder
    time_budget_s: float | None = Field(None, gt=0)
    max_failures: int = Field(2, ge=0)
    ray: EmptyAsDefault[RayConfig] = Field(default_factory=RayConfig)
    storage: Storage = None
    packing: PackingConfig | None = None
    source_path: Path | None = None
    source_text: str = Field("", repr=False)
    _corpus: Corpus | None = PrivateAttr(None)

    @classmethod
    def model_validate(cls, obj: Any, *, context: dict[str, Any] | None = None, **_: Any) -> SweepConfig:
        """A SweepConfig from a sweep file's mapping, each key checked on its own (what load_sweep does, less the
        rules across keys and the disk). Raises ConfigError listing every problem."""
        cfg, errors = _validate_each(obj, context or {})
        if errors:
            raise ConfigError([f"{key}: {text}" for key, text in map(_describe, errors)])
        return cfg

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
            raise KeyError(f"{option!r} is not an rnncore option; {unknown(option, FIELD_NAMES)}")
        return value_range(self.train, option)

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

    # ---- the plan (pipeline.plan)

    def plan_text(self) -> str:
        """A human-readable plan: trials, fixed and searched values, scheduler, resources, outputs."""
        return plan.plan_text(self)

    def notes(self) -> list[str]:
        """Advice on a valid sweep that will likely not do what its author wants (shown, not enforced)."""
        return plan.notes(self)


# --------------------------------------------------------------------------- each key on its own


FILE_KEYS: tuple[str, ...] = tuple(k for k in SweepConfig.model_fields if not k.startswith("source_"))
# SweepConfig's fields, one model each, so that each key of a file validates on its own (_validate_each)
_KEY_MODELS: dict[str, type[Section]] = {
    key: create_model(f"SweepConfig_{key}", __base__=Section, **{key: (field.annotation, field)})
    for key, field in SweepConfig.model_fields.items()}


def _validate_each(data: Mapping[str, Any], context: dict[str, Any]) -> tuple[SweepConfig, list[ErrorDetails]]:
    """Validate each key of ``data``, and each train option, on its own: one broken value hides no other's
    problems, and the rules across keys can still read every valid value. Returns a SweepConfig of the valid
    values (a key that failed is left unset) and pydantic's errors."""
    values: dict[str, Any] = {}
    errors: list[ErrorDetails] = []
    for key, model in _KEY_MODELS.items():
        for given in _inputs(key, data, values):
            try:
                valid = getattr(model.model_validate(given, context=context), key)
            except ValidationError as e:
                errors += e.errors()
                continue
            values[key] = {**values.get(key, {}), **valid} if key == "train" else valid
    return SweepConfig.model_construct(**values), errors


def _inputs(key: str, data: Mapping[str, Any], valid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What validates ``key``: ``{key: value}``, or ``{}`` for its default; train gives one input per option.
    Fills in the defaults that derive from other keys (output and mlflow.experiment from name, ASHA's max_t
    from the largest valid train.iterations) and reads a bare scheduler or search_alg as its type."""
    name = data["name"] if isinstance(data.get("name"), str) else "sweep"  # a broken name is reported on its own
    value = data.get(key)
    if key == "train" and isinstance(value, Mapping) and value:
        return [{key: {option: v}} for option, v in value.items()]
    if key == "output" and key not in data:
        value = f"results/{name}"
    elif key == "mlflow" and (value is None or isinstance(value, dict)):
        value = {"experiment": name, **(value or {})}
    elif key in ("scheduler", "search_alg") and (value is None or isinstance(value, str)):
        value = {"type": value or ("fifo" if key == "scheduler" else "random")}
    if key == "scheduler" and isinstance(value, dict) and value.get("type") == "asha" and value.get("max_t") is None:
        value = {**value, "max_t": value_range(valid.get("train", {}), "iterations")[1]}
    return [{key: value}] if key in data or value is not None else [{}]


# --------------------------------------------------------------------------- one formatter for every problem


_SECTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): FILE_KEYS, ("train",): FIELD_NAMES,
    **{(k,): tuple(m.model_fields) for k, m in (("data", DataConfig), ("resources", Resources),
                                                ("mlflow", MlflowConfig), ("ray", RayConfig), ("packing", PackingConfig))},
    **{(section, t): tuple(m.model_fields) for section, models in TAGGED.items() for t, m in models.items()},
}
# pydantic's error type -> the rule, worded with its context
_RULES = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "must be an integer"),
    **dict.fromkeys(("float_type", "float_parsing"), "must be a number"),
    "finite_number": "must be a finite number", "string_type": "must be a string",
    **dict.fromkeys(("bool_type", "bool_parsing"), "must be true or false"),
    **dict.fromkeys(("model_type", "model_attributes_type", "dict_type"), "must be a mapping"),
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}", "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}", "string_too_short": "must not be empty",
}
# dotted key -> the fix for a missing or wrong value
_FIXES = {
    "name": "write e.g. name: my_sweep (it names the MLflow experiment and the output folder)",
    "data": "write e.g. data: {path: data/tinyshakespeare.txt, val_fraction: 0.1}",
    "data.path": "write e.g. path: data/tinyshakespeare.txt",
    "data.val_fraction": "0.1 holds out the last tenth; 0 trains on everything",
    "num_samples": "use 1 to run each grid point once",
    "seed": "use any non-negative integer",
    "metric": "val_loss is nats/char on the validation split, val_bpc the same in bits",
    "mode": "use min for a loss",
    "scheduler": "write e.g. scheduler: {type: asha, grace_period: 500}, or scheduler: fifo",
    "scheduler.type": "write type: fifo, type: asha for early stopping, or type: pbt for Population Based Training",
    "scheduler.grace_period": "use a number of iterations such as 500",
    "scheduler.reduction_factor": "3 is the usual choice",
    "scheduler.max_t": "leave it out to use the largest iterations",
    "scheduler.perturbation_interval": "use a multiple of train.eval_every, such as 2 x eval_every",
    "scheduler.quantile_fraction": "0.25 replaces the bottom quarter with copies of the top quarter",
    "scheduler.resample_probability": "0.25 redraws a quarter of the mutated values instead of scaling them",
    "scheduler.burn_in_period": "use 0, or a number of iterations before the first perturbation",
    "search_alg": "write e.g. search_alg: {type: optuna}, or leave it out for random/grid search",
    "search_alg.type": "write type: random (grid and random search), or type: optuna for Bayesian search (TPE)",
    "search_alg.seed": "use any non-negative integer, or leave it out to use the sweep's seed",
    "search_alg.startup_trials": "use about a third of num_samples; Optuna's default is 10",
    "max_concurrent_trials": "use 1 or more, or leave it out to let the resources decide",
    "resources": "write e.g. resources: {cpu: 1, gpu: 0}",
    "resources.cpu": "use 1 CPU per trial",
    "resources.gpu": "use 0 for CPU-only trials, or a fraction such as 0.5 to share a GPU",
    "mlflow": "write e.g. mlflow: {experiment: my_sweep, tracking_uri: http://host:5000}",
    "mlflow.experiment": "leave it out to use the sweep's name",
    "mlflow.tracking_uri": "write e.g. http://host:5000, or leave it out for the local store",
    "time_budget_s": "use seconds such as 3600, or leave it out for no limit",
    "max_failures": "use 0 to fail fast, or 2 (the default)",
    "ray": "write e.g. ray: {address: auto}",
    "ray.address": "write e.g. auto or ray://host:10001, or leave it out to start Ray locally",
}


def _describe(error: ErrorDetails) -> Problem:
    """One pydantic error as ``(dotted key, "rule, but got value; fix")``."""
    loc = [str(part) for part in error["loc"]]
    tagged = TAGGED.get(loc[0], {}) if loc else {}
    tag = loc.pop(1) if len(loc) > 1 and loc[1] in tagged else None
    key, kind, value, ctx = ".".join(loc), error["type"], error.get("input"), error.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key, value = f"{key}.type", ctx.get("tag")
    fix = _FIXES.get(key, "add it" if kind == "missing" else "see sweeps/basic.yaml for a working example")
    if kind == "sweep":
        return key, ctx["text"]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return key, str(ctx["error"])
    if kind == "extra_forbidden":
        for other, model in tagged.items():
            if tag and other != tag and loc[-1] in model.model_fields:
                return key, f"unknown key for type {tag}; {loc[-1]} needs type: {other}"
        return key, unknown(loc[-1], _SECTIONS.get((*loc[:-1], *([tag] if tag else [])), ()))
    if kind in ("missing", "union_tag_not_found"):
        return key, f"required key is missing; {fix}"
    if kind in ("union_tag_invalid", "literal_error"):
        allowed = list(tagged) if tagged and kind == "union_tag_invalid" else \
            re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else fix
        return key, f"must be one of {', '.join(map(repr, allowed))}, but got {show(value)}; {hint}"
    bounds = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}  # > 0, not > 0.0
    rule = _RULES[kind].format(**bounds) if kind in _RULES else error["msg"][0].lower() + error["msg"][1:]
    return key, f"{rule}, but got {show(value)}; {number_hint(value) or fix}"


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
    text = read_text(source)
    raw = parse_yaml(text, source)
    problems = [(str(k), unknown(k, FILE_KEYS) if k not in SweepConfig.model_fields else
                 "unknown key; load_sweep fills it in, so remove it from the file") for k in raw if k not in FILE_KEYS]
    data = {**{k: v for k, v in raw.items() if k in FILE_KEYS}, "source_path": source, "source_text": text}
    cfg, errors = _validate_each(data, {"base_dir": source.parent})
    problems += [_describe(e) for e in errors] + across_keys(cfg, _broken(errors, data), check_corpus)
    if problems:
        raise ConfigError([f"{key}: {text}" for key, text in _in_file_order(problems, [str(k) for k in raw])], source)
    return cfg


def _broken(errors: list[ErrorDetails], data: Mapping[str, Any]) -> set[str]:
    """The values that failed, named as the rules across keys name their inputs: a key, or train.<option>."""
    broken: set[str] = set()
    for loc in ([str(p) for p in e["loc"]] for e in errors):
        if loc[:1] == ["train"]:
            broken |= {f"train.{loc[1]}"} if len(loc) > 1 else {f"train.{n}" for n in FIELD_NAMES}
        elif loc:
            broken.add(loc[0])
    if "name" in broken and "output" not in data:
        broken.add("output")  # its default derives from the broken name
    return broken


def _in_file_order(problems: list[Problem], keys: Sequence[str]) -> list[Problem]:
    """Sort problems by where their top-level key appears in the file (stable; keys not in it first)."""
    position = {k: i for i, k in enumerate(keys)}
    return sorted(problems, key=lambda p: position.get(p[0].split(".")[0], -1))
