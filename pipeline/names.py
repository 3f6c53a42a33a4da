"""How a sweep names its trials: the trial key (``t0003``) and the short form of searched values, used by the
MLflow run names (``t0003-lstm-L2-h256-lr0.002``) and the report's labels (``lstm L=2 h=256 lr=0.002``).

Imports neither Ray nor MLflow: the driver's callback and the report both read it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SHORT_NAMES", "run_name", "short", "trial_key"]

# option -> its short name; "" for a text option whose values name themselves (lstm, adam, cosine).
# An option without an entry is shown under its full name.
SHORT_NAMES: dict[str, str] = {
    "cell": "",
    "num_layers": "L",
    "hidden_size": "h",
    "seq_length": "s",
    "dropout": "drop",
    "optimizer": "",
    "learning_rate": "lr",
    "lr_schedule": "",
    "warmup": "warm",
    "batch_size": "b",
}


def trial_key(index: int) -> str:
    return f"t{index:04d}"


def short(name: str, value: str, sep: str = "") -> str:
    """One searched value in short: short("hidden_size", "128") -> "h128"; with sep="=", "h=128"; "lstm" alone."""
    prefix = SHORT_NAMES.get(name, name)
    return f"{prefix}{sep}{value}" if prefix else value


def run_name(config: dict[str, Any]) -> str:
    """h128-s32-lr0.031: the searched values of a trial, short enough for the MLflow UI."""
    return "-".join(short(k, f"{v:.2g}" if isinstance(v, float) else str(v)) for k, v in config.items()) or "trial"
