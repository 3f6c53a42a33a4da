"""TrainConfig: every option of the engine, declared once — type, default, kind, rule and meaning.

The sweep file embeds these names under `train:`; the CLI exposes them as flags. Each option has one kind,
which everything that combines trials reads from here:
    SHAPE   fixes the arrays or the loop's schedule: packed trials must share it, PBT may not change it
    MEMBER  per trial and fixed for the run: packed trials may differ
    MUTABLE per trial, and may change mid-run: packed trials may differ, PBT may mutate it
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

DTYPES = ("float64", "float32")
DEVICES = ("cpu", "gpu", "auto")
CELLS = ("rnn", "lstm", "gru")
OPTIMIZERS = ("adagrad", "adam", "rmsprop")
SCHEDULES = ("constant", "cosine")

SHAPE, MEMBER, MUTABLE = "shape", "member", "mutable"


def _opt(default: Any, kind: str):
    return field(default=default, metadata={"kind": kind})


@dataclass(frozen=True)
class TrainConfig:
    cell: str = _opt("rnn", SHAPE)  # "rnn" (the seed's tanh cell), "lstm" or "gru"
    num_layers: int = _opt(1, SHAPE)  # L, stacked layers; layer l > 0 reads layer l-1's hidden state
    hidden_size: int = _opt(100, SHAPE)  # H, units in each layer
    seq_length: int = _opt(25, SHAPE)  # T, characters per truncated-BPTT window
    dropout: float = _opt(0.0, MUTABLE)  # inverted dropout on each layer's output while training; 0 = off
    optimizer: str = _opt("adagrad", SHAPE)  # "adagrad" (the seed's), "adam" or "rmsprop"
    learning_rate: float = _opt(0.1, MUTABLE)  # peak step size (the seed's Adagrad 1e-1)
    lr_schedule: str = _opt("constant", SHAPE)  # "constant", or "cosine" down to learning_rate / 10 at the end
    warmup: int = _opt(0, SHAPE)  # iterations of linear warm-up from learning_rate / warmup (any schedule)
    batch_size: int = _opt(1, SHAPE)  # B, parallel streams at equally spaced offsets; 1 = the seed's schedule
    dtype: str = _opt("float64", SHAPE)  # "float64" (the seed) or "float32" (about 2x faster at B > 1)
    iterations: int = _opt(10_000, SHAPE)  # parameter updates to make
    eval_every: int = _opt(1000, SHAPE)  # iterations between validation evaluations (and reports)
    sample_every: int = _opt(1000, SHAPE)  # iterations between samples; 0 = only at the end
    sample_length: int = _opt(200, SHAPE)  # characters per sample (the seed's 200)
    temperature: float = _opt(1.0, MUTABLE)  # softmax temperature of training-time samples
    seed: int = _opt(0, MEMBER)  # seeds the np.random.Generator for the initial weights, dropout and samples
    clip: float = _opt(5.0, MUTABLE)  # element-wise gradient clip to [-clip, clip]
    init_scale: float = _opt(0.01, MEMBER)  # weights start as randn * init_scale, biases at zero (LSTM forget: 1)
    adagrad_eps: float = _opt(1e-8, MUTABLE)  # Adagrad's epsilon inside the square root
    eval_streams: int = _opt(32, SHAPE)  # validation split is cut into this many contiguous segments run in parallel
    device: str = _opt("cpu", SHAPE)  # "cpu" (numpy), "gpu" (CuPy), "auto" (GPU when one is assigned/visible)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        problem = check_together(self.to_dict())
        if problem:
            raise ValueError(problem)

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

    @property
    def state_size(self) -> int:
        """Width of the carried state: every layer's h, and for an LSTM every layer's c too."""
        return self.hidden_size * self.num_layers * (2 if self.cell == "lstm" else 1)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}
KINDS: dict[str, str] = {f.name: f.metadata["kind"] for f in fields(TrainConfig)}
SHAPE_KEYS = tuple(k for k in FIELD_NAMES if KINDS[k] == SHAPE)  # packed trials share these; PBT keeps them
MUTABLE_KEYS = tuple(k for k in FIELD_NAMES if KINDS[k] == MUTABLE)  # PBT may change these mid-run


def _one_of(values: tuple[str, ...]) -> tuple[Callable[[Any], bool], str, str]:
    return (lambda v: v in values, f"must be one of {', '.join(values)}", f"pick {' or '.join(values)}")


# name -> (predicate, rule as a sentence fragment, fix)
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "cell": _one_of(CELLS),
    "num_layers": (lambda v: v >= 1, "must be >= 1", "use 1 for a single layer, 2 or 3 to stack"),
    "hidden_size": (lambda v: v > 0, "must be > 0", "use a positive number of hidden units"),
    "seq_length": (lambda v: v > 0, "must be > 0", "use a positive window length"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", "use 0 for none, 0.1-0.5 against overfitting"),
    "optimizer": _one_of(OPTIMIZERS),
    "learning_rate": (lambda v: v > 0, "must be > 0", "try 0.1 for adagrad (the seed's) or 0.002 for adam"),
    "lr_schedule": _one_of(SCHEDULES),
    "warmup": (lambda v: v >= 0, "must be >= 0", "use 0 for no warm-up"),
    "batch_size": (lambda v: v > 0, "must be > 0", "use 1 for the seed's schedule"),
    "dtype": _one_of(DTYPES),
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
    "device": _one_of(DEVICES),
}


def show(value: Any, limit: int = 60) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters. Lists, tuples and dicts are
    written item by item up to the limit, so a huge value costs what a short one does (a YAML alias bomb is one
    list shared millions of times: its full repr runs to hundreds of megabytes)."""
    out: list[str] = []

    def write(v: Any, budget: int) -> int:  # characters written, stopping past `budget`
        if type(v) not in (list, tuple, dict):
            out.append(repr(v[: max(budget, 0) + 1]) if type(v) is str else repr(v))
            return len(out[-1])
        brackets = {list: "[]", tuple: "()", dict: "{}"}[type(v)]
        out.append(brackets[0])
        n = 1
        for i, item in enumerate(v.items() if type(v) is dict else v):
            if n > budget:
                return n
            out.append(", " * (i > 0))
            n += len(out[-1])
            if type(v) is dict:
                n += write(item[0], budget - n)
                out.append(": ")
                n += 2 + write(item[1], budget - n - 2)
            else:
                n += write(item, budget - n)
        out.append("," * (type(v) is tuple and len(v) == 1) + brackets[1])
        return n + len(out[-1])

    write(value, limit)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OptionError(ValueError):
    """A value that breaks option `name`'s rule. str() is "<name> <rule>"; `rule` is the text after the name."""

    def __init__(self, name: str, rule: str) -> None:
        self.name, self.rule = name, rule
        super().__init__(f"{name} {rule}")

    def __reduce__(self):  # pickles with both parts (errors cross process boundaries)
        return (type(self), (self.name, self.rule))


def coerce(name: str, value: Any) -> Any:
    """Convert `value` to the declared type of `name`, or raise an OptionError that names both."""
    if name not in FIELD_TYPES:
        raise ValueError(unknown_key_message(name))
    t = FIELD_TYPES[name]
    if t is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise OptionError(name, f"must be an integer, but got {show(value)}")
        return int(value)
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(name, f"must be a number, but got {show(value)}")
        return float(value)
    if t is str and not isinstance(value, str):
        raise OptionError(name, f"must be a string, but got {show(value)}")
    return value


INT64 = (-(2**63), 2**63 - 1)  # integers are stored as int64 (checkpoints, the sweep's tables)


def check_value(name: str, value: Any) -> None:
    """Raise OptionError('<name> must ..., but got ...; fix') if `value` breaks the rule for `name`."""
    value = coerce(name, value)
    if FIELD_TYPES[name] is int and not INT64[0] <= value <= INT64[1]:
        raise OptionError(name, f"must fit in 64 bits (at most {INT64[1]}), but got {name}={value}; use a smaller value")
    if FIELD_TYPES[name] is float and not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, but got {name}={value!r}; write a finite value")
    ok, rule, fix = _RULES[name]
    if not ok(value):
        if FIELD_TYPES[name] is str:
            close = difflib.get_close_matches(value, rule.removeprefix("must be one of ").split(", "), n=1)
            fix = f"did you mean {close[0]!r}?" if close else fix
        raise OptionError(name, f"{rule}, but got {name}={show(value)}; {fix}")


def check_together(values: dict[str, Any]) -> str | None:
    """The rules that tie options together, for a full set of values; the first one broken, or None."""
    warmup, iterations = values.get("warmup", 0), values.get("iterations", TrainConfig.iterations)
    if warmup > iterations:
        return (f"warmup must be <= iterations, but got warmup={warmup} with iterations={iterations}; "
                f"lower warmup (a few percent of the run is usual) or raise iterations")
    return None


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(FIELD_NAMES)}"
    return f"unknown option {key!r}; {hint}"
