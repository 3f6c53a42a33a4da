"""The vocabulary of a sweep, defined once: trial statuses and what they mean, the metrics and their
direction, the ranking rule ("best trial"), and how trials and their runs are named.

The driver's callback, the tables, MLflow, the report and ``pipeline.sample`` all import these; none of
them spells a status, a ranking or a name format of its own. Imports neither Ray nor MLflow.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

__all__ = [
    "CLOSED", "METRICS", "MetricName", "RANKED", "SHORT_NAMES", "STATUSES", "Status",
    "best", "finite", "is_ranked", "parse_trial_key", "ranked", "run_name", "short", "trial_key",
]

# --------------------------------------------------------------------------- statuses

Status = Literal["finished", "stopped", "diverged", "failed", "interrupted", "running", "pending"]
# status -> what it means, in the order the report lists them. "pending" is never stored: it is a trial of
# the plan that has no row yet.
STATUSES: dict[str, str] = {
    "finished": "ran all their iterations",
    "stopped": "stopped early by the scheduler (ASHA) or the time budget",
    "diverged": "loss became non-finite",
    "failed": "raised an error",
    "interrupted": "the sweep was interrupted; finish with --resume",
    "running": "still training",
    "pending": "waiting for resources",
}
CLOSED: tuple[str, ...] = ("finished", "stopped", "diverged", "failed")  # trials that will not change any more
RANKED: tuple[str, ...] = ("finished", "stopped")  # the statuses that compete for "best trial"

# --------------------------------------------------------------------------- metrics

MetricName = Literal["val_loss", "val_bpc", "train_loss"]
# metric -> (the direction that is better, what it measures). All of them are losses today.
METRICS: dict[str, tuple[str, str]] = {
    "val_loss": ("min", "nats/char on the validation split"),
    "val_bpc": ("min", "bits/char on the validation split"),
    "train_loss": ("min", "nats/char on the training batches"),
}

# --------------------------------------------------------------------------- the ranking rule

Row = TypeVar("Row")


def finite(x: Any) -> bool:
    """A real number that is neither NaN nor infinite (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_ranked(row: Mapping[str, Any], metric: str) -> bool:
    """A trial competes for "best" when it ended normally (finished, or stopped early by the scheduler) and its
    metric is a finite number. Diverged, failed, interrupted and running trials never do."""
    return row.get("status") in RANKED and finite(_plain(row.get(metric)))


def ranked(trials: Any, *, metric: str, mode: str) -> Any:
    """The trials that compete for "best", best first; ties go to the lower trial id.

    ``trials`` is an iterable of row mappings (returns a list of them) or a pandas DataFrame with
    ``status``, ``trial_id`` and the metric as columns (returns the DataFrame's rows in that order)."""
    if hasattr(trials, "iloc"):  # a DataFrame: rank its records, keep its rows
        records = trials.to_dict("records")
        return trials.iloc[_order(records, metric, mode)]
    rows = list(trials)
    return [rows[i] for i in _order(rows, metric, mode)]


def best(trials: Iterable[Row], *, metric: str, mode: str) -> Row | None:
    """The best trial by :func:`ranked`, or None when no trial competes yet."""
    order = ranked(list(trials), metric=metric, mode=mode)
    return order[0] if order else None


def _order(rows: list[Mapping[str, Any]], metric: str, mode: str) -> list[int]:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', but got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    keep = [i for i, r in enumerate(rows) if is_ranked(r, metric)]
    return sorted(keep, key=lambda i: (sign * float(_plain(rows[i][metric])), str(rows[i].get("trial_id", ""))))


def _plain(x: Any) -> Any:
    """numpy scalars (rows read back from Parquet) as Python numbers."""
    return x.item() if hasattr(x, "item") and not isinstance(x, (int, float, str)) else x


# --------------------------------------------------------------------------- names

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
    """The id of the sweep's trial at position ``index`` (from 0): ``t0003``. MLflow runs, checkpoints and
    table rows are keyed by it."""
    return f"t{index:04d}"


def parse_trial_key(text: str) -> str:
    """What a user types for a trial, as its key: ``t0003`` as is; ``3``, ``0003`` and ``t3`` become ``t0003``.
    Anything else is returned stripped, unchanged."""
    m = re.fullmatch(r"[tT]?(\d+)", text.strip())
    return trial_key(int(m.group(1))) if m else text.strip()


def short(name: str, value: str, sep: str = "") -> str:
    """One searched value in short: short("hidden_size", "128") -> "h128"; with sep="=", "h=128"; "lstm" alone."""
    prefix = SHORT_NAMES.get(name, name)
    return f"{prefix}{sep}{value}" if prefix else value


def run_name(config: Mapping[str, Any]) -> str:
    """h128-s32-lr0.031: the searched values of a trial, short enough for the MLflow UI."""
    return "-".join(short(k, f"{v:.2g}" if isinstance(v, float) else str(v)) for k, v in config.items()) or "trial"
