"""TrainConfig: every option of the engine, declared once.

The sweep file embeds these names under `train:`; the CLI exposes them as flags.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, fields
from typing import Any, Callable

DTYPES = ("float64", "float32")
DEVICES = ("cpu", "gpu", "auto")


@dataclass(frozen=True)
class TrainConfig:
    hidden_size: int = 100  # H, units in the single tanh layer
    seq_length: int = 25  # T, characters per truncated-BPTT window
    learning_rate: float = 0.1  # Adagrad step size (the seed's 1e-1)
    batch_size: int = 1  # B, parallel streams at equally spaced offsets; 1 = the seed's schedule
    dtype: str = "float64"  # "float64" (the seed) or "float32" (about 2x faster at B > 1)
    iterations: int = 10_000  # parameter updates to make
    eval_every: int = 1000  # iterations between validation evaluations (and reports)
    sample_every: int = 1000  # iterations between samples; 0 = only at the end
    sample_length: int = 200  # characters per sample (the seed's 200)
    temperature: float = 1.0  # softmax temperature of training-time samples
    seed: int = 0  # seeds the np.random.Generator for the initial weights and samples
    clip: float = 5.0  # element-wise gradient clip to [-clip, clip]
    init_scale: float = 0.01  # weights start as randn * init_scale, biases at zero
    adagrad_eps: float = 1e-8  # Adagrad's epsilon inside the square root
    eval_streams: int = 32  # validation split is cut into this many contiguous segments run in parallel
    device: str = "cpu"  # "cpu" (numpy), "gpu" (CuPy), "auto" (GPU when one is assigned/visible); use float32 on GPUs

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = [k for k in d if k not in FIELD_NAMES]
        if unknown:
            raise ValueError("; ".join(unknown_key_message(k) for k in unknown))
        return cls(**{k: coerce(k, v) for k, v in d.items()})

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}

# name -> (predicate, rule as a sentence fragment, fix)
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "hidden_size": (lambda v: v > 0, "must be > 0", "use a positive number of hidden units"),
    "seq_length": (lambda v: v > 0, "must be > 0", "use a positive window length"),
    "learning_rate": (lambda v: v > 0, "must be > 0", "try 0.1 (the seed's value) or 0.01"),
    "batch_size": (lambda v: v > 0, "must be > 0", "use 1 for the seed's schedule"),
    "dtype": (lambda v: v in DTYPES, f"must be one of {', '.join(DTYPES)}", "pick float64 or float32"),
    "iterations": (lambda v: v > 0, "must be > 0", "train for at least one iteration"),
    "eval_every": (lambda v: v > 0, "must be > 0", "evaluate every few hundred iterations"),
    "sample_every": (lambda v: v >= 0, "must be >= 0", "use 0 to sample only at the end"),
    "sample_length": (lambda v: v > 0, "must be > 0", "the seed samples 200 characters"),
    "temperature": (lambda v: v > 0, "must be > 0", "1.0 samples the model's own distribution"),
    "seed": (lambda v: v >= 0, "must be >= 0", "use any non-negative integer"),
    "clip": (lambda v: v > 0, "must be > 0", "the seed clips at 5"),
    "init_scale": (lambda v: v > 0, "must be > 0", "the seed uses 0.01"),
    "adagrad_eps": (lambda v: v > 0, "must be > 0", "the seed uses 1e-8"),
    "eval_streams": (lambda v: v > 0, "must be > 0", "use 1 to evaluate as one stream"),
    "device": (lambda v: v in DEVICES, f"must be one of {', '.join(DEVICES)}", "pick cpu, gpu or auto"),
}


def coerce(name: str, value: Any) -> Any:
    """Convert `value` to the declared type of `name`, or raise a ValueError that names both."""
    if name not in FIELD_TYPES:
        raise ValueError(unknown_key_message(name))
    t = FIELD_TYPES[name]
    if t is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"{name} must be an integer, but got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, but got {value!r}")
        return float(value)
    if t is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, but got {value!r}")
    return value


def check_value(name: str, value: Any) -> None:
    """Raise ValueError('<name> must ..., but got ...; fix') if `value` breaks the rule for `name`."""
    value = coerce(name, value)
    ok, rule, fix = _RULES[name]
    if not ok(value):
        raise ValueError(f"{name} {rule}, but got {name}={value!r}; {fix}")


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(FIELD_NAMES)}"
    return f"unknown option {key!r}; {hint}"
