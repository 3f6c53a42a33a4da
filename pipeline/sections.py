"""The sweep file's sections other than ``train:``: data, scheduler, search_alg, resources, mlflow, ray, packing.

Each section is a frozen pydantic model (``options.Section``); a key whose value needs more than a type and
bounds (a name, a folder, the data path, PBT's mutations) has a validator here, exposed to ``SweepConfig``
as an annotated type. ``scheduler:`` and ``search_alg:`` are tagged by their ``type``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator

from rnncore.config import FIELD_NAMES, KINDS, MUTABLE_KEYS, SHAPE
from rnncore.data import not_a_file

from .options import Inner, Section, invalid, option
from .space import Domain, show, unknown

__all__ = [
    "AshaScheduler", "DataConfig", "FifoScheduler", "MlflowConfig", "OptunaSearch", "PackingConfig", "PbtScheduler",
    "RandomSearch", "RayConfig", "Resources", "Scheduler", "SearchAlg", "resolve_data_path",
]


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


def _identifier(value: str, *, names: str, sep: str, example: str) -> str:
    """A name made of letters, digits, '.', '_' and '-' (``names`` says what it names, for the message)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        fix = re.sub(r"[^A-Za-z0-9._-]+", sep, value).strip("._-") or example
        raise ValueError(f"must be letters, digits, '.', '_' or '-' (it names {names}), but got {show(value)}; "
                         f"try {show(fix)}")
    return value


def _name(value: str) -> str:
    return _identifier(value, names="a folder and an MLflow experiment", sep="_", example="my_sweep")


def _model_name(value: str) -> str:
    return _identifier(value, names="a registered MLflow model, loaded as models:/NAME/VERSION", sep="-",
                       example="my-model")


def _empty_as_default(value: Any) -> Any:
    return {} if value is None else value


_T = TypeVar("_T")
# SweepConfig's keys that need more than a type: each a type with its validator
SweepName = Annotated[str, AfterValidator(_name)]  # names a folder and an MLflow experiment
ModelName = Annotated[str, AfterValidator(_model_name)]  # a registered model: models:/NAME/VERSION
LocalFolder = Annotated[Path, BeforeValidator(_local_path)]  # absolute, relative to the working directory
Storage = Annotated[str | None, BeforeValidator(_storage)]  # a URI, or a local folder made absolute
EmptyAsDefault = Annotated[_T, BeforeValidator(_empty_as_default)]  # `key:` with no value = the section's defaults


def resolve_data_path(path: Path, base_dir: Path | None) -> Path:
    """``path`` if absolute, else the first existing of ``base_dir/path`` and ``cwd/path``; else ValueError."""
    path = path.expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys(d / path for d in (base_dir, Path.cwd()) if d is not None))
    for candidate in candidates:
        if candidate.exists():
            kind = not_a_file(candidate)
            if kind:
                fix = "point it at the UTF-8 text file inside" if kind == "a folder" else "save the text to a file"
                raise ValueError(f"must name a file, but got {str(path)!r}, which is {kind} ({candidate}); {fix}")
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise ValueError(f"must name an existing file, but got {str(path)!r}, which was not found (looked for {tried}); "
                     "fix the path, relative to the sweep file's folder or the working directory")


class DataConfig(Section):
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


class FifoScheduler(Section):
    """``scheduler: {type: fifo}``: every trial runs to its last iteration."""

    type: Literal["fifo"] = "fifo"


class AshaScheduler(Section):
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
        checked, option_problems = option(name, spec) if name in MUTABLE_KEYS else (None, [((), _not_mutable(key))])
        if option_problems:
            problems += [((key, *place), text) for place, text in option_problems]
        elif not isinstance(checked, Domain) or checked.is_grid:
            problems.append(((key,), f"must be a search domain to draw new values from, but got {show(spec)}; "
                                     f"write e.g. {name}: {{loguniform: [low, high]}} or {{choice: [...]}}"))
        else:
            out[name] = checked
    if problems:
        raise invalid(problems, value)
    return out


class PbtScheduler(Section):
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


class RandomSearch(Section):
    """``search_alg: {type: random}`` (the default): every grid point ``num_samples`` times, ranges drawn at random."""

    type: Literal["random"] = "random"


class OptunaSearch(Section):
    """``search_alg: {type: optuna}``: Optuna's TPE proposes each trial from the results so far.

    ``seed`` seeds the sampler (default: the sweep's ``seed``); the first ``startup_trials`` are drawn at
    random (TPE needs results to model); ``max_concurrent_trials`` bounds how many trials it proposes before
    their results are in."""

    type: Literal["optuna"]
    seed: int | None = Field(None, ge=0)
    startup_trials: int = Field(10, ge=1)


Scheduler = Annotated[Union[FifoScheduler, AshaScheduler, PbtScheduler], Field(discriminator="type")]
SearchAlg = Annotated[Union[RandomSearch, OptunaSearch], Field(discriminator="type")]
# the sections tagged by their `type`: key -> type -> model
TAGGED: dict[str, dict[str, type[Section]]] = {
    "scheduler": {"fifo": FifoScheduler, "asha": AshaScheduler, "pbt": PbtScheduler},
    "search_alg": {"random": RandomSearch, "optuna": OptunaSearch},
}


class Resources(Section):
    """``resources:`` per trial."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class MlflowConfig(Section):
    """``mlflow:`` where runs are logged. ``tracking_uri`` None = the driver's default local store."""

    experiment: str = Field(min_length=1)
    tracking_uri: str | None = Field(None, min_length=1)
    register_model: ModelName | None = None  # also register the best model under this name (a version per sweep)


class RayConfig(Section):
    """``ray:`` the cluster. ``address`` None = start a local Ray instance."""

    address: str | None = Field(None, min_length=1)


class PackingConfig(Section):
    """``packing:`` train up to ``max_trials`` trials whose shapes agree as one batched computation."""

    max_trials: int = Field(ge=1)
