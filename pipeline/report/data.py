"""The report's inputs: a sweep's Parquet tables, the sweep file stored in their metadata, and the values the
plots and the Markdown both show (searched domains, the ranked trials, hyperparameter labels)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from rnncore.config import FIELD_NAMES

from .. import vocab
from ..config import Domain
from ..results import EXPLOITS_SCHEMA, HISTORY_SCHEMA, HPARAMS, TRIALS_SCHEMA

__all__ = ["FEW_VALUES", "SWEEP_YAML_KEY", "ReportError", "SweepResults", "fmt_value", "is_grouped", "is_log",
           "is_number", "is_text", "load_results", "plain", "short_config"]

SWEEP_YAML_KEY = b"rnnsweep.sweep_yaml"
FEW_VALUES = 5  # numeric options with at most this many distinct values are treated as groups
_TRIAL_NUMBERS = ("train_loss", "val_loss", "val_bpc", "min_val_loss", "mean_chars_per_sec", "wall_s")
_RENAMED = {"best_val_loss": "min_val_loss", "chars_per_sec": "mean_chars_per_sec"}  # trials columns: old -> new
_HISTORY_NUMBERS = ("iteration", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s", "lr")


class ReportError(Exception):
    """The folder holds no sweep results to report on (exit code 2)."""


@dataclass
class SweepResults:
    """The two tables of a sweep and what its sweep file says about them."""

    output: Path
    trials: pd.DataFrame  # TRIALS_SCHEMA columns, one row per trial
    history: pd.DataFrame  # HISTORY_SCHEMA columns, one row per report
    sweep_text: str  # the sweep file as written ("" if the metadata lacks it)
    sweep: dict[str, Any]  # the sweep file parsed ({} if unreadable)
    searched: dict[str, Domain]  # option -> its search domain, in file order
    metric: str
    mode: str
    planned: int | None  # trials the sweep file asks for (None if unknown)
    notes: list[str]  # caveats found while reading (shown in the report)
    exploits: pd.DataFrame | None = None  # EXPLOITS_SCHEMA columns (PBT), None without exploits.parquet

    @property
    def name(self) -> str:
        return str(self.sweep.get("name") or self.output.name)

    @property
    def tracking_uri(self) -> str | None:
        m = self.sweep.get("mlflow")
        return m.get("tracking_uri") if isinstance(m, Mapping) else None

    def column(self, option: str) -> str:
        """The trials column of an engine option (`iterations` holds iterations trained; the option is the target)."""
        return "target_iterations" if option == "iterations" else option

    def ranked(self) -> pd.DataFrame:
        """The trials that compete for "best" (``vocab.ranked``), best first."""
        return vocab.ranked(self.trials, metric=self.metric, mode=self.mode)

    def best(self) -> pd.Series | None:
        r = self.ranked()
        return None if r.empty else r.iloc[0]


# ------------------------------------------------------------------------------------------ loading


def load_results(output_dir: str | os.PathLike) -> SweepResults:
    """Read trials.parquet, history.parquet (and exploits.parquet) and the sweep file stored in their metadata."""
    output = Path(output_dir)
    if not output.is_dir():
        raise ReportError(f"{output} is not a folder; pass a sweep's output folder, e.g. results/basic")
    if not (output / "trials.parquet").exists():
        raise ReportError(f"{output} holds no trials.parquet; pass the output folder of a sweep "
                          "(the `output:` of its sweep file, e.g. results/basic)")
    notes: list[str] = []
    trials, meta = _read_trials(output / "trials.parquet")
    history = _read_history(output / "history.parquet", notes)
    exploits = _read_optional(output / "exploits.parquet", EXPLOITS_SCHEMA, notes, "no PBT section")
    text = meta.get(SWEEP_YAML_KEY, b"").decode("utf-8", errors="replace")
    sweep = _parse_sweep(text, notes)
    searched = _searched(sweep, trials, notes)
    metric = sweep.get("metric") if sweep.get("metric") in vocab.METRICS else "val_loss"
    mode = sweep.get("mode") if sweep.get("mode") in ("min", "max") else "min"
    return SweepResults(output=output, trials=trials, history=history, sweep_text=text, sweep=sweep,
                        searched=searched, metric=metric, mode=mode, planned=_planned(sweep, searched), notes=notes,
                        exploits=exploits)


def _read_table(path: Path, schema) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    table = pq.read_table(path)
    df = table.to_pandas()
    for f in schema:  # a file written by an older version may lack a column
        if f.name not in df.columns:
            df[f.name] = None
    return df, dict(table.schema.metadata or {})


def _read_trials(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    try:
        trials, meta = _read_table(path, TRIALS_SCHEMA)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise ReportError(f"{path} is not a readable Parquet table: {e}") from None
    for old, new in _RENAMED.items():  # a table written before the column got its name
        if old in trials.columns and trials[new].isna().all():
            trials[new] = trials[old]
    for col in _TRIAL_NUMBERS:
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype(float)
    for col in [f.name for f in TRIALS_SCHEMA if str(f.type) == "string"]:
        # pandas >= 3 reads text as its `str` dtype with NaN for nulls: keep plain objects and None instead
        trials[col] = pd.Series([v if isinstance(v, str) else None for v in trials[col]], index=trials.index,
                                dtype=object)
    trials = trials[trials["trial_id"].notna()]
    return trials.sort_values("trial_id", kind="stable").reset_index(drop=True), meta


def _read_history(path: Path, notes: list[str]) -> pd.DataFrame:
    history = None
    if path.exists():
        history = _read_optional(path, HISTORY_SCHEMA, notes, "no learning curves")
    else:
        notes.append("history.parquet is missing; no learning curves")
    if history is None:
        history = pd.DataFrame({f.name: pd.Series(dtype=object) for f in HISTORY_SCHEMA})
    for col in _HISTORY_NUMBERS:
        history[col] = pd.to_numeric(history[col], errors="coerce").astype(float)
    history["trial_id"] = history["trial_id"].astype(object)
    return history


def _read_optional(path: Path, schema, notes: list[str], without: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return _read_table(path, schema)[0]
    except Exception as e:  # noqa: BLE001
        notes.append(f"{path.name} could not be read ({e}); {without}")
        return None


def _parse_sweep(text: str, notes: list[str]) -> dict[str, Any]:
    if not text:
        notes.append("trials.parquet carries no sweep file in its metadata")
        return {}
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        notes.append(f"the sweep file in the table metadata is not valid YAML ({e})")
        return {}
    return loaded if isinstance(loaded, dict) else {}


# ------------------------------------------------------------------------------------ search domains


def _searched(sweep: Mapping[str, Any], trials: pd.DataFrame, notes: list[str]) -> dict[str, Domain]:
    """The searched options of the stored ``train:`` mapping, each as a ``config.Domain``.

    Read leniently, option by option rather than through ``load_sweep``: a report must still work when the
    sweep file no longer validates as a whole (its corpus moved, a rule was tightened). Without a sweep file
    the options that vary across trials are taken as the searched ones."""
    if not sweep:
        guessed = {n: _guess(trials[n]) for n in HPARAMS if n != "seed" and trials[n].nunique(dropna=True) > 1}
        if guessed:
            notes.append(f"searched hyperparameters guessed from the table: {', '.join(guessed)}")
        return guessed
    train = sweep.get("train")
    out: dict[str, Domain] = {}
    for name, value in (train.items() if isinstance(train, Mapping) else ()):
        if name not in FIELD_NAMES or not isinstance(value, Mapping):
            continue  # a fixed value
        try:
            out[str(name)] = Domain.parse(value)
        except ValueError as e:  # DomainError
            notes.append(f"train.{name} is not a valid search domain ({e}); its values are taken from the table")
            if trials[name].nunique(dropna=True) > 1:
                out[str(name)] = _guess(trials[name])
    return out


def _guess(values: pd.Series) -> Domain:
    """The domain an option's values across trials suggest: the values listed, or the range they span."""
    vals = [plain(v) for v in values.dropna().unique()]
    if len(vals) <= FEW_VALUES or is_text(values):
        return Domain("choice", tuple(sorted(vals, key=lambda v: (isinstance(v, str), v))))
    return Domain("uniform", (float(min(vals)), float(max(vals))))


def _planned(sweep: Mapping[str, Any], searched: Mapping[str, Domain]) -> int | None:
    samples = sweep.get("num_samples", 1)
    if not isinstance(samples, int) or samples < 1:
        return None
    return samples * math.prod(len(d.values()) for d in searched.values() if d.is_grid)


def is_log(domain: Domain) -> bool:
    """A log-scale range: Ray Tune's log kinds (loguniform, qloguniform, lograndint) carry it in their names."""
    return "log" in domain.kind


def is_text(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def is_grouped(values: pd.Series, domain: Domain) -> bool:
    """Listed values, text, or a few numbers that repeat (e.g. a coarse qrandint): compared as groups."""
    if domain.is_categorical or is_text(values):
        return True
    distinct = values.nunique()
    return distinct <= FEW_VALUES and distinct < values.notna().sum()


# --------------------------------------------------------------------------------------------- labels


def plain(v: Any) -> Any:
    """numpy scalars (values read back from Parquet) as Python values."""
    return v.item() if isinstance(v, np.generic) else v


def is_number(v: Any) -> bool:
    """A finite int or float (numpy's too), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


def fmt_value(v: Any) -> str:
    """A hyperparameter value for tables and labels: ints as is, floats to 4 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"
    return str(v)


def short_config(row: Mapping[str, Any], res: SweepResults) -> str:
    """The searched values of a trial in short (``lstm L=2 h=256``), as the run names spell them."""
    return " ".join(vocab.short(n, fmt_value(row.get(res.column(n))), "=") for n in res.searched)
