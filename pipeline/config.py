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

One mechanism checks the file: pydantic models. ``TrainSection`` is built from the engine's own
option declarations (``rnncore.config.TrainConfig``): each option is a fixed value or a search
domain (``pipeline.space.Domain``), checked by the engine's rules (``check_value``). Each key of
the file, and each train option, is validated on its own, so one broken value hides no other's
problems; then the rules that tie keys together run on the valid ones. One formatter turns
pydantic's errors into the messages.

Importing this module imports neither Ray nor MLflow.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, InstanceOf, PrivateAttr,
                      ValidationError, ValidationInfo, create_model, field_validator)
from pydantic_core import ErrorDetails, PydanticCustomError

from rnncore.config import (FIELD_NAMES, FIELD_TYPES, KINDS, MUTABLE_KEYS, SHAPE, OptionError, TrainConfig,
                            check_together, check_value, coerce)
from rnncore.data import Corpus, CorpusError, check_fits, load_corpus

from .space import FLOAT_KINDS, INT_COUNTERPART, SEARCH_KINDS, Domain, DomainError, SearchKind, number_hint, show, unknown
from .vocab import METRICS, MetricName

__all__ = [
    "AshaScheduler", "ConfigError", "DataConfig", "Domain", "FILE_KEYS", "FifoScheduler", "METRICS", "MlflowConfig",
    "OptunaSearch", "PackingConfig", "PbtScheduler", "RandomSearch", "RayConfig", "Resources", "SEARCH_KINDS",
    "Scheduler", "SearchAlg", "SearchKind", "SweepConfig", "TrainSection", "load_sweep", "resolve_data_path",
]

Problem = tuple[str, str]  # (dotted key, "rule, but got value; fix")
Inner = tuple[tuple[str, ...], str]  # (place inside the value checked, "rule, but got value; fix")


class ConfigError(Exception):
    """A sweep file that cannot run. ``problems`` holds one ``key: rule, but got value; fix`` line each."""

    def __init__(self, problems: Sequence[str], source: str | os.PathLike | None = None) -> None:
        self.problems: list[str] = list(problems)
        self.source: str | None = os.fspath(source) if source is not None else None
        n, where = len(self.problems), f" in {self.source}" if self.source else ""
        super().__init__("\n".join([f"{n} problem{'s' if n != 1 else ''}{where}:", *(f"  - {p}" for p in self.problems)]))

    def __reduce__(self):  # keeps `problems` intact through pickling (Ray, multiprocessing)
        return (type(self), (self.problems, self.source))


def _invalid(problems: Sequence[Inner], value: Any) -> ValidationError:
    """Problems found inside one value, as pydantic's error; each ``(place, text)`` extends the value's own key."""
    return ValidationError.from_exception_data("sweep", [
        {"type": PydanticCustomError("sweep", "{text}", {"text": text}), "loc": place, "input": value}
        for place, text in problems])


# --------------------------------------------------------------------------- the train: section


def _value_problem(name: str, value: Any) -> str | None:
    """The engine's verdict on one value of option ``name``: its rule, without the option's name in front."""
    try:
        value = coerce(name, value)
    except OptionError as e:
        kind = {int: "a whole number", float: "a number", str: "a string"}[FIELD_TYPES[name]]
        return f"{e.rule}; {number_hint(value) or f'write {kind} such as {getattr(TrainConfig, name)!r} (the default)'}"
    try:
        check_value(name, value)
    except OptionError as e:
        return e.rule
    return None


def _option(name: str, value: Any) -> tuple[Any, list[Inner]]:
    """Option ``name`` as the engine takes it: a fixed value (coerced to its type) or a Domain whose every value
    the engine accepts; else the problems, each under its place in the value (a domain's search key)."""
    if not isinstance(value, (Mapping, Domain)):
        problem = _value_problem(name, value)
        return (None, [((), problem)]) if problem else (coerce(name, value), [])
    try:
        domain = value if isinstance(value, Domain) else Domain.parse(value)
    except DomainError as e:
        return None, [((str(e.key),) if e.key else (), p) for p in e.problems]
    where, ftype = (domain.kind,), FIELD_TYPES[name]
    if ftype is str and not domain.is_categorical:
        return None, [(where, f"{name} is a text option, so it can only be fixed or searched with grid_search or "
                              f"choice, but got {domain.kind}; list the values, e.g. {{choice: [...]}}")]
    if ftype is int and domain.kind in FLOAT_KINDS:
        return None, [(where, f"{name} is an integer option, but {domain.kind} draws floats; "
                              f"use {INT_COUNTERPART[domain.kind]} instead")]
    labelled = ([(f"value {i}", v) for i, v in enumerate(domain.args)] if domain.is_categorical
                else list(zip(("smallest value", "largest value"), domain.extremes())))
    problems = [(where, f"{label} {p}") for label, v in labelled if (p := _value_problem(name, v))]
    if problems:
        return None, problems
    if domain.is_categorical:
        domain = Domain(domain.kind, tuple(coerce(name, v) for v in domain.args))
    return domain, []


def _option_type(name: str) -> Any:
    """The type of option ``name`` under train: its declared type, fixed, or a search domain over it."""

    def check(value: Any) -> Any:
        checked, problems = _option(name, value)
        if problems:
            raise _invalid(problems, value)
        return checked

    return Annotated[Union[FIELD_TYPES[name], InstanceOf[Domain]], BeforeValidator(check)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


TrainSection: type[_Section] = create_model(
    "TrainSection", __base__=_Section, __doc__="``train:`` every rnncore option, each fixed or searched.",
    **{name: (_option_type(name), getattr(TrainConfig, name)) for name in FIELD_NAMES})


def _train(value: Any) -> dict[str, Any]:
    """The options ``train:`` sets, in the file's order, each checked by TrainSection."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of rnncore options, but got {show(value)}; "
                         "write one option per line, e.g. hidden_size: 128")
    section = TrainSection.model_validate(value)
    return {name: getattr(section, name) for name in value}


def _value_range(train: Mapping[str, Any], name: str) -> tuple[Any, Any]:
    value = train.get(name, getattr(TrainConfig, name))
    return value.extremes() if isinstance(value, Domain) else (value, value)


# --------------------------------------------------------------------------- sections


def _local_path(value: Any) -> Path:
    if isinstance(value, Path):
        return Path(os.path.abspath(value.expanduser()))
    if isinstance(value, str) and value.strip():
        return Path(os.path.abspath(os.path.expanduser(value)))
    raise ValueError(f"must be a folder path, but got {show(value)}; write e.g. results/my_sweep")


def _storage(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a folder path or URI, but got {show(value)}; write e.g. s3://bucket/sweeps, "
                         "or leave it out for Ray Tune's default")
    return value if "://" in value else str(_local_path(value))


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        fix = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._-") or "my_sweep"
        raise ValueError(f"must be letters, digits, '.', '_' or '-' (it names a folder and an MLflow "
                         f"experiment), but got {value!r}; try {fix!r}")
    return value


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


class DataConfig(_Section):
    """``data:`` the corpus. ``path`` is absolute and names an existing file once validated."""

    path: Path
    val_fraction: float = Field(0.1, ge=0, lt=1)

    @field_validator("path", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"must be a file path, but got {show(value)}; write e.g. path: data/tinyshakespeare.txt")
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
    max_t: int | None = Field(None, ge=1)  # None on its own; the sweep fills in the largest `iterations`


def _not_mutable(name: str) -> str:
    """Why PBT cannot mutate option ``name``, and what to do instead (rnncore.config declares each option's kind)."""
    if name not in FIELD_NAMES:
        return unknown(name, MUTABLE_KEYS, "option")
    if KINDS[name] == SHAPE:
        return (f"cannot change while a trial trains, because {name} shapes the model or its training schedule "
                f"and a PBT copy continues another trial's checkpoint; search it under train: instead (each trial "
                f"keeps its value), and mutate one of {', '.join(MUTABLE_KEYS)}")
    return (f"cannot change while a trial trains, because {name} only takes effect when a trial starts; search it "
            f"under train: instead, and mutate one of {', '.join(MUTABLE_KEYS)}")


def _mutations(value: Any) -> dict[str, Domain]:
    """PBT's ``mutations:``: option -> the search domain new values are drawn from (any kind but grid_search)."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"must map options to search domains, but got {show(value)}; "
                         "write e.g. mutations: {learning_rate: {loguniform: [0.001, 0.3]}}")
    out: dict[str, Domain] = {}
    problems: list[Inner] = []
    for name, spec in value.items():
        key = str(name)
        checked, option_problems = _option(name, spec) if name in MUTABLE_KEYS else (None, [((), _not_mutable(key))])
        if option_problems:
            problems += [((key, *place), text) for place, text in option_problems]
        elif not isinstance(checked, Domain) or checked.is_grid:
            problems.append(((key,), f"must be a search domain to draw new values from, but got {show(spec)}; "
                                     f"write e.g. {name}: {{loguniform: [low, high]}} or {{choice: [...]}}"))
        else:
            out[name] = checked
    if problems:
        raise _invalid(problems, value)
    return out


class PbtScheduler(_Section):
    """``scheduler: {type: pbt}``: Population Based Training; times are engine iterations.

    Every ``perturbation_interval`` iterations a trial in the bottom ``quantile_fraction`` of the population
    continues from the checkpoint of one in the top (weights, Adagrad memory, hidden state, data position,
    RNG) with its ``mutations`` perturbed (x1.2 or x0.8, or redrawn with ``resample_probability``)."""

    type: Literal["pbt"]
    perturbation_interval: int = Field(ge=1)
    mutations: Annotated[dict[str, Any], BeforeValidator(_mutations)]
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    burn_in_period: int = Field(0, ge=0)


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


Scheduler = Annotated[Union[FifoScheduler, AshaScheduler, PbtScheduler], Field(discriminator="type")]
SearchAlg = Annotated[Union[RandomSearch, OptunaSearch], Field(discriminator="type")]
_TAGGED: dict[str, dict[str, type[_Section]]] = {
    "scheduler": {"fifo": FifoScheduler, "asha": AshaScheduler, "pbt": PbtScheduler},
    "search_alg": {"random": RandomSearch, "optuna": OptunaSearch},
}


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

    name: Annotated[str, AfterValidator(_name)]
    data: DataConfig
    train: Annotated[dict[str, Any], BeforeValidator(_train)] = Field(default_factory=dict)  # set options, in order
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
# SweepConfig's fields, one model each, so that each key of a file validates on its own (_validate_each)
_KEY_MODELS: dict[str, type[_Section]] = {
    key: create_model(f"SweepConfig_{key}", __base__=_Section, **{key: (field.annotation, field)})
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
        value = {**value, "max_t": _value_range(valid.get("train", {}), "iterations")[1]}
    return [{key: value}] if key in data or value is not None else [{}]


# --------------------------------------------------------------------------- one formatter for every problem


_SECTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): FILE_KEYS, ("train",): FIELD_NAMES,
    **{(k,): tuple(m.model_fields) for k, m in (("data", DataConfig), ("resources", Resources),
                                                ("mlflow", MlflowConfig), ("ray", RayConfig), ("packing", PackingConfig))},
    **{(section, t): tuple(m.model_fields) for section, models in _TAGGED.items() for t, m in models.items()},
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
    tagged = _TAGGED.get(loc[0], {}) if loc else {}
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
    text = _read(source)
    raw = _parse_yaml(text, source)
    problems = [(str(k), unknown(k, FILE_KEYS) if k not in SweepConfig.model_fields else
                 "unknown key; load_sweep fills it in, so remove it from the file") for k in raw if k not in FILE_KEYS]
    data = {**{k: v for k, v in raw.items() if k in FILE_KEYS}, "source_path": source, "source_text": text}
    cfg, errors = _validate_each(data, {"base_dir": source.parent})
    problems += [_describe(e) for e in errors] + _across_keys(cfg, _broken(errors, data), check_corpus)
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
        got = "an empty file" if raw is None else f"a {type(raw).__name__} ({show(raw)})"
        raise ConfigError([f"(top level): must be a mapping of sweep keys (name:, data:, train:, ...), but got {got}; "
                           "start from sweeps/basic.yaml"], path)
    return raw


# --------------------------------------------------------------------------- the rules across keys


def _across_keys(cfg: SweepConfig, broken: set[str], check_corpus: bool) -> list[Problem]:
    """The rules that tie keys together, and the disk; each runs only when its inputs are valid."""
    problems: list[Problem | None] = []
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
    if isinstance(cfg.search_alg, OptunaSearch) and "search_alg" not in broken:
        problems += [(f"train.{name}.grid_search", "search_alg optuna draws every searched value itself and cannot "
                      f"run a grid, but got grid_search {list(d.values())}; write choice: {list(d.values())} "
                      "instead, or use search_alg: random")
                     for name, d in cfg.searched.items() if d.is_grid and f"train.{name}" not in broken]
        if isinstance(cfg.scheduler, PbtScheduler) and "scheduler" not in broken:
            problems.append(("search_alg", "PBT makes its own trials from the population, so it cannot take search "
                                           "alg optuna; use search_alg: random with scheduler pbt, or another scheduler"))
    if "scheduler" not in broken:
        problems += _scheduler_problems(cfg, broken)
    if cfg.packing is not None and not {"packing", "scheduler"} & broken and \
            not isinstance(cfg.scheduler, FifoScheduler):
        problems.append(("packing", "packed trials run with scheduler fifo (a pack trains its members together), "
                                    f"but got scheduler {cfg.scheduler.type}; set scheduler: fifo or remove packing"))
    elif cfg.packing is not None and not {"packing", "search_alg"} & broken and \
            isinstance(cfg.search_alg, OptunaSearch):
        problems.append(("packing", "packed trials are drawn up front, but search_alg optuna proposes each trial "
                                    "from the results so far; remove packing, or use search_alg: random"))
    if not {"train.warmup", "train.iterations"} & broken:
        problems.append(_together_problem(cfg))
    if check_corpus and "data" not in broken:
        problems.append(_corpus_problem(cfg, broken))
    if "output" not in broken:
        problems.append(_folder_problem("output", cfg.output))
    if "storage" not in broken and cfg.storage and "://" not in cfg.storage:
        problems.append(_folder_problem("storage", Path(cfg.storage)))
    return [p for p in problems if p is not None]


def _scheduler_problems(cfg: SweepConfig, broken: set[str]) -> list[Problem]:
    """ASHA stops trials at iterations the sweep reaches; PBT perturbs at reports, in a population of trials."""
    s, fewest = cfg.scheduler, cfg.value_range("iterations")[0]
    if isinstance(s, AshaScheduler) and "train.iterations" not in broken:
        if s.grace_period > fewest:
            return [("scheduler.grace_period", f"must be <= the smallest possible iterations, but got grace_period="
                                               f"{s.grace_period} > iterations={fewest}; lower grace_period or raise "
                                               "iterations")]
        if s.max_t is not None and s.grace_period > s.max_t:
            return [("scheduler.max_t", f"must be >= grace_period, but got max_t={s.max_t} < grace_period="
                                        f"{s.grace_period}; raise max_t or leave it out")]
    if not isinstance(s, PbtScheduler):
        return []
    problems: list[Problem] = []
    if cfg.num_trials < 2 and "num_samples" not in broken:
        problems.append(("num_samples", f"PBT needs a population of at least 2 trials, but the sweep has "
                                        f"{cfg.num_trials}; raise num_samples (4 or more is usual)"))
    eval_every = cfg.train.get("eval_every", TrainConfig.eval_every)
    if isinstance(eval_every, Domain):
        problems.append(("train.eval_every", "must be fixed with scheduler pbt (trials are compared at the same "
                                             f"iterations), but got {eval_every}; write one value"))
    elif "train.eval_every" not in broken and s.perturbation_interval % eval_every:
        problems.append(("scheduler.perturbation_interval",
                         f"must be a multiple of train.eval_every={eval_every} (trials report and checkpoint "
                         f"there), but got {s.perturbation_interval}; use e.g. {2 * eval_every}"))
    if "train.iterations" not in broken and s.perturbation_interval + s.burn_in_period >= fewest:
        problems.append(("scheduler.perturbation_interval",
                         f"must leave room to perturb before the last iteration, but got perturbation_interval="
                         f"{s.perturbation_interval} (+ burn_in_period {s.burn_in_period}) >= iterations="
                         f"{fewest}; lower it or raise train.iterations"))
    problems += [(f"train.{name}.grid_search", f"{name} is mutated by PBT, so its starting values are drawn, not a "
                                               "grid; use choice or a range instead")
                 for name in s.mutations if name in cfg.searched and cfg.searched[name].is_grid]
    return problems


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


def _corpus_problem(cfg: SweepConfig, broken: set[str]) -> Problem | None:
    """The corpus must read as UTF-8 text, and the largest window must fit its training split."""
    try:
        corpus = cfg.corpus()
    except CorpusError as e:
        return "data.path", str(e)
    if {"train.seq_length", "train.batch_size"} & broken:
        return None
    seq_length, batch_size = cfg.value_range("seq_length")[1], cfg.value_range("batch_size")[1]
    try:
        check_fits(corpus, seq_length, batch_size)
    except CorpusError as e:
        return "train.seq_length", (f"the largest seq_length={seq_length} with the largest batch_size={batch_size} "
                                    f"does not fit: {e}")
    return None


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
