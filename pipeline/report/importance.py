"""Hyperparameter importance by PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator``).

The ranked trials become an in-memory Optuna study: one ``optuna.trial.create_trial`` per trial, its searched
values as params (distributions from the sweep file's ``config.Domain``s), its metric as the value. PED-ANOVA
then measures, for each option, how far the option's values among the top trials are from its values over
all ranked trials (a Pearson divergence between two Parzen estimates); the scores are shown as shares of
their sum. It needs no dependency beyond Optuna, is deterministic, and is what optuna-dashboard uses because
it is fast. Optuna is imported when ``importance`` is called, not with the report.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rnncore.config import FIELD_TYPES

from ..config import Domain
from .data import SweepResults, fmt_value, is_log, plain

__all__ = ["METHOD", "MIN_TRIALS", "Importance", "Importances", "importance"]

METHOD = "PED-ANOVA"
MIN_TRIALS = 4  # fewer ranked trials leave no "top" that differs from "all"
TOP_QUANTILE = 0.1  # PED-ANOVA's default: which options it takes to reach the best 10 % ...
MIN_TOP = 3  # ... but at least this many trials in the top,
MAX_QUANTILE = 0.5  # and at most the better half


@dataclass(frozen=True)
class Importance:
    """One searched option's importance."""

    name: str
    domain: Domain
    distribution: str  # how the study saw the option, e.g. "float in [0.003, 0.3], log scale"
    score: float | None  # PED-ANOVA's divergence (None: not computed, see note)
    share: float | None  # score / the sum over the options, 0..1
    note: str = ""


@dataclass(frozen=True)
class Importances:
    """The importance of every searched option, most important first, and what it rests on."""

    method: str  # "PED-ANOVA"
    version: str  # optuna's version ("" when not computed)
    trials: int  # the ranked trials the study holds
    top: int  # how many of them count as "top" (0 when not computed)
    quantile: float  # the top fraction asked for
    rows: list[Importance] = field(default_factory=list)
    note: str = ""  # why nothing was computed ("" when something was)


def importance(res: SweepResults) -> Importances:
    """PED-ANOVA over the ranked trials (finished or stopped early, finite metric); see the module docstring."""
    ranked = res.ranked()
    y = ranked[res.metric].to_numpy(float)
    n = len(y)
    quantile = _quantile(n)
    empty = Importances(METHOD, "", n, 0, quantile)
    if not res.searched:
        return _with(empty, note="No hyperparameters were searched.")
    if n < MIN_TRIALS:
        return _with(empty, rows=_unscored(res, "too few trials"),
                     note=f"PED-ANOVA needs at least {MIN_TRIALS} ranked trials to compare the top ones with the "
                          f"rest, but there {'is' if n == 1 else 'are'} {n}; run more trials.")
    if np.ptp(y) == 0:
        return _with(empty, rows=_unscored(res, "the metric does not vary"),
                     note=f"{res.metric} is the same for every ranked trial, so no option can explain it.")
    varied = {name: d for name, d in res.searched.items() if ranked[res.column(name)].nunique(dropna=True) > 1}
    scores, version = _ped_anova(res, ranked, varied, quantile) if varied else ({}, "")
    top = _top_count(y if res.mode == "min" else -y, quantile)
    return Importances(METHOD, version, n, top, quantile, rows=_rows(res, ranked, scores))


def _quantile(n: int) -> float:
    """The top fraction: PED-ANOVA's 10 %, raised so that the top holds at least MIN_TOP trials."""
    return min(MAX_QUANTILE, max(TOP_QUANTILE, MIN_TOP / n)) if n else TOP_QUANTILE


def _top_count(loss: np.ndarray, quantile: float) -> int:
    """How many trials PED-ANOVA's quantile filter keeps (ties with the cut-off included)."""
    cut = np.partition(loss, math.ceil(quantile * loss.size) - 1)[math.ceil(quantile * loss.size) - 1]
    return int((loss <= cut).sum())


def _with(base: Importances, **changes: Any) -> Importances:
    return Importances(**{**base.__dict__, **changes})


def _unscored(res: SweepResults, note: str) -> list[Importance]:
    return [Importance(n, d, "", None, None, note) for n, d in res.searched.items()]


def _rows(res: SweepResults, ranked: pd.DataFrame, scores: dict[str, tuple[float, str]]) -> list[Importance]:
    total = sum(s for s, _ in scores.values())
    rows = []
    for name, domain in res.searched.items():
        if name not in scores:
            rows.append(Importance(name, domain, "", None, None, "one value tried"))
            continue
        score, dist = scores[name]
        note = "the only option that varied: its share is 100 % by construction" if len(scores) == 1 else ""
        if total <= 0:
            rows.append(Importance(name, domain, dist, score, None, "no option sets the top trials apart"))
        else:
            rows.append(Importance(name, domain, dist, score, score / total, note))
    return sorted(rows, key=lambda r: -1.0 if r.score is None else r.score, reverse=True)


# ------------------------------------------------------------------------------------------- optuna


def _ped_anova(res: SweepResults, ranked: pd.DataFrame, searched: dict[str, Domain],
               quantile: float) -> tuple[dict[str, tuple[float, str]], str]:
    """{option: (PED-ANOVA score, its distribution described)} and optuna's version."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    dists = {name: _distribution(name, d, ranked[res.column(name)]) for name, d in searched.items()}
    trials = []
    for _, row in ranked.iterrows():
        params = {name: plain(row[res.column(name)]) for name in searched}
        params = {k: v for k, v in params.items() if v is not None and v == v}  # a missing value: not set
        trials.append(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                value=float(row[res.metric])))
    with _quiet():
        study = optuna.create_study(direction="minimize" if res.mode == "min" else "maximize")
        study.add_trials(trials)
        evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
        scores = get_param_importances(study, evaluator=evaluator, normalize=False)
    return {name: (float(scores.get(name, 0.0)), _describe(dists[name])) for name in searched}, optuna.__version__


def _distribution(name: str, domain: Domain, values: pd.Series):
    """The Optuna distribution of a searched option: its domain, widened to hold every value a trial had
    (PBT may mutate a value past the range it was drawn from)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    seen = [plain(v) for v in values.dropna().unique()]
    if domain.is_categorical or FIELD_TYPES.get(name) is str:
        listed = domain.values() if domain.is_categorical else ()
        choices = sorted(set(listed) | set(seen), key=lambda v: (isinstance(v, str), v))
        return CategoricalDistribution(choices)
    low, high = domain.extremes()
    low, high = min(low, *seen), max(high, *seen)
    log = is_log(domain) and low > 0
    if FIELD_TYPES.get(name) is int:
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return f"categorical [{', '.join(fmt_value(c) for c in dist.choices)}]"
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return f"{kind} in [{fmt_value(dist.low)}, {fmt_value(dist.high)}]{', log scale' if dist.log else ''}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's study-created log line and its warnings about few trials (the report states the count) and
    the experimental ``normalize`` argument, silenced for this call only."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)
