"""The sweep report: what the sweep found, as a Markdown file and plots next to its Parquet tables.

    python -m pipeline.report results/basic [--tracking-uri URI] [--no-mlflow]

writes ``results/basic/report/``:

- ``report.md``: the sweep file, trial counts by status, the leaderboard, the best configuration as a
  ``train:`` block, the best trial's final sample and a hyperparameter-importance table;
- ``learning_curves.png``: validation loss against iteration of the top trials;
- ``bpc_vs_<param>.png``: final validation bits/char against each searched hyperparameter;
- ``heatmap_hidden_seq.png``: best bits/char per hidden_size x seq_length (when both are searched);

and logs the same files under ``report/`` on the sweep's parent MLflow run. A read-only consumer of
``trials.parquet``, ``history.parquet`` and the MLflow runs: it works on a sweep that is still running
(what finished so far), and without MLflow (a warning, the files are still written). Imports no Ray;
matplotlib draws on ``Figure`` objects with the Agg canvas (pyplot, with its global state, is not used).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from rnncore.config import FIELD_NAMES, FIELD_TYPES

from .vocab import short
from .results import EXPLOITS_SCHEMA, HISTORY_SCHEMA, HPARAMS, TRIALS_SCHEMA

__all__ = ["ReportError", "SweepResults", "load_results", "importance", "write_report", "main",
           "REPORT_DIR", "REPORT_FILE", "SWEEP_YAML_KEY"]

SWEEP_YAML_KEY = b"rnnsweep.sweep_yaml"
REPORT_DIR = "report"
REPORT_FILE = "report.md"
ARTIFACT_DIR = "report"
LN2 = math.log(2.0)
TOP_N = 10  # leaderboard rows
CURVES_N = 8  # learning curves drawn
RANKED = ("finished", "stopped")  # the statuses that compete for "best" (as the sweep driver's best())
CLOSED = ("finished", "stopped", "diverged", "failed")  # trials that will not change any more
STATUS_ORDER = ("finished", "stopped", "diverged", "failed", "interrupted", "running", "pending")
STATUS_MEANING = {
    "finished": "ran all their iterations",
    "stopped": "stopped early by the scheduler (ASHA)",
    "diverged": "loss became non-finite",
    "failed": "raised an error",
    "interrupted": "the sweep was interrupted; finish with --resume",
    "running": "still training",
    "pending": "waiting for resources",
}
METRICS = ("val_loss", "val_bpc", "train_loss")
SEARCH_KINDS = ("grid_search", "choice", "uniform", "quniform", "loguniform", "qloguniform", "randint",
                "qrandint", "lograndint")
CATEGORICAL_KINDS = ("grid_search", "choice")
LOG_KINDS = ("loguniform", "qloguniform", "lograndint")
FEW_VALUES = 5  # numeric options with at most this many distinct values are treated as groups
UNITS = {  # x-axis labels of the per-hyperparameter plots
    "cell": "recurrent cell",
    "num_layers": "stacked layers",
    "hidden_size": "hidden units",
    "seq_length": "characters per BPTT window",
    "dropout": "fraction of units dropped",
    "optimizer": "update rule",
    "learning_rate": "peak step size",
    "lr_schedule": "learning-rate schedule",
    "warmup": "iterations of warm-up",
    "batch_size": "parallel streams",
    "iterations": "parameter updates",
    "eval_every": "iterations",
    "sample_every": "iterations",
    "sample_length": "characters",
    "temperature": "softmax temperature",
    "clip": "gradient clip value",
    "init_scale": "std of initial weights",
    "adagrad_eps": "Adagrad epsilon",
    "eval_streams": "validation streams",
    "seed": "seed",
    "dtype": "floating-point type",
    "device": "array backend",
}


class ReportError(Exception):
    """The folder holds no sweep results to report on (exit code 2)."""


# ------------------------------------------------------------------------------------------ the inputs


@dataclass
class SweepResults:
    """The two tables of a sweep and what its sweep file says about them."""

    output: Path
    trials: pd.DataFrame  # TRIALS_SCHEMA columns, one row per trial
    history: pd.DataFrame  # HISTORY_SCHEMA columns, one row per report
    sweep_text: str  # the sweep file as written ("" if the metadata lacks it)
    sweep: dict[str, Any]  # the sweep file parsed ({} if unreadable)
    searched: dict[str, tuple[str, tuple]]  # option -> (search kind, its arguments), in file order
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
        """Finished and ASHA-stopped trials with a finite metric, best first (ties by trial id)."""
        t = self.trials
        ok = t["status"].isin(RANKED) & np.isfinite(t[self.metric].astype(float))
        return t[ok].sort_values([self.metric, "trial_id"], ascending=[self.mode == "min", True], kind="stable")

    def best(self) -> pd.Series | None:
        r = self.ranked()
        return None if r.empty else r.iloc[0]


def _read_table(path: Path, schema) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    table = pq.read_table(path)
    df = table.to_pandas()
    for f in schema:  # a file written by an older version may lack a column
        if f.name not in df.columns:
            df[f.name] = None
    return df, dict(table.schema.metadata or {})


def _parse_searched(train: Any) -> dict[str, tuple[str, tuple]]:
    out: dict[str, tuple[str, tuple]] = {}
    if not isinstance(train, Mapping):
        return out
    for name, value in train.items():
        if name in FIELD_NAMES and isinstance(value, Mapping) and len(value) == 1:
            kind, args = next(iter(value.items()))
            if kind in SEARCH_KINDS:
                out[str(name)] = (str(kind), tuple(args) if isinstance(args, (list, tuple)) else ())
    return out


def _planned(sweep: Mapping[str, Any], searched: Mapping[str, tuple[str, tuple]]) -> int | None:
    samples = sweep.get("num_samples", 1)
    if not isinstance(samples, int) or samples < 1:
        return None
    return samples * math.prod(len(args) for kind, args in searched.values() if kind == "grid_search")


def load_results(output_dir: str | os.PathLike) -> SweepResults:
    """Read trials.parquet, history.parquet and the sweep file stored in their metadata."""
    output = Path(output_dir)
    trials_path = output / "trials.parquet"
    if not output.is_dir():
        raise ReportError(f"{output} is not a folder; pass a sweep's output folder, e.g. results/basic")
    if not trials_path.exists():
        raise ReportError(f"{output} holds no trials.parquet; pass the output folder of a sweep "
                          "(the `output:` of its sweep file, e.g. results/basic)")
    notes: list[str] = []
    try:
        trials, meta = _read_table(trials_path, TRIALS_SCHEMA)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise ReportError(f"{trials_path} is not a readable Parquet table: {e}") from None
    history_path = output / "history.parquet"
    history = pd.DataFrame({f.name: pd.Series(dtype=object) for f in HISTORY_SCHEMA})
    if history_path.exists():
        try:
            history, _ = _read_table(history_path, HISTORY_SCHEMA)
        except Exception as e:  # noqa: BLE001
            notes.append(f"history.parquet could not be read ({e}); no learning curves")
    else:
        notes.append("history.parquet is missing; no learning curves")
    for col in ("train_loss", "val_loss", "val_bpc", "best_val_loss", "chars_per_sec", "wall_s"):
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype(float)
    for col in ("iteration", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s", "lr"):
        history[col] = pd.to_numeric(history[col], errors="coerce").astype(float)
    exploits = None
    if (output / "exploits.parquet").exists():
        try:
            exploits, _ = _read_table(output / "exploits.parquet", EXPLOITS_SCHEMA)
        except Exception as e:  # noqa: BLE001
            notes.append(f"exploits.parquet could not be read ({e}); no PBT section")
    for col in [f.name for f in TRIALS_SCHEMA if str(f.type) == "string"]:
        # pandas >= 3 reads text as its `str` dtype with NaN for nulls: keep plain objects and None instead
        trials[col] = pd.Series([v if isinstance(v, str) else None for v in trials[col]], index=trials.index,
                                dtype=object)
    history["trial_id"] = history["trial_id"].astype(object)
    trials = trials[trials["trial_id"].notna()]
    trials = trials.sort_values("trial_id", kind="stable").reset_index(drop=True)

    text = meta.get(SWEEP_YAML_KEY, b"").decode("utf-8", errors="replace")
    sweep: dict[str, Any] = {}
    if text:
        try:
            loaded = yaml.safe_load(text)
            sweep = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as e:
            notes.append(f"the sweep file in the table metadata is not valid YAML ({e})")
    else:
        notes.append("trials.parquet carries no sweep file in its metadata")
    searched = _parse_searched(sweep.get("train"))
    if not sweep:  # no sweep file: treat the options that vary across trials as the searched ones
        for name in HPARAMS:
            if name != "seed" and trials[name].nunique(dropna=True) > 1:
                vals = trials[name].dropna().unique()
                kind = "choice" if len(vals) <= FEW_VALUES or _is_text(trials[name]) else "uniform"
                searched[name] = (kind, tuple(sorted(vals)) if kind == "choice" else ())
        if searched:
            notes.append(f"searched hyperparameters guessed from the table: {', '.join(searched)}")
    metric = sweep.get("metric") if sweep.get("metric") in METRICS else "val_loss"
    mode = sweep.get("mode") if sweep.get("mode") in ("min", "max") else "min"
    return SweepResults(output=output, trials=trials, history=history, sweep_text=text, sweep=sweep,
                        searched=searched, metric=metric, mode=mode, planned=_planned(sweep, searched), notes=notes,
                        exploits=exploits)


# ------------------------------------------------------------------------------------ importance


@dataclass
class Importance:
    name: str
    kind: str
    method: str
    n: int
    score: float | None  # fraction of the metric's variance explained, 0..1 (None: cannot say)
    note: str = ""


def _is_text(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _is_grouped(values: pd.Series, kind: str) -> bool:
    """Listed values, text, or a few numbers that repeat (e.g. a coarse qrandint): compared as groups."""
    if kind in CATEGORICAL_KINDS or _is_text(values):
        return True
    distinct = values.nunique()
    return distinct <= FEW_VALUES and distinct < values.notna().sum()


def importance(res: SweepResults) -> list[Importance]:
    """One-at-a-time variance explained by each searched hyperparameter, over the ranked trials.

    Grouped values (grid_search/choice, text, or at most FEW_VALUES distinct numbers that repeat): eta^2, the
    between-group sum of squares over the total. Continuous ranges: R^2 of a least-squares quadratic in
    log10(value) for log-scale kinds (value otherwise); a straight line below 6 trials. Best first.
    """
    ranked = res.ranked()
    y_all = ranked[res.metric].to_numpy(float)
    out: list[Importance] = []
    for name, (kind, _) in res.searched.items():
        col = res.column(name)
        x = ranked[col]
        keep = x.notna().to_numpy()
        x, y = x[keep], y_all[keep]
        n = len(y)
        sst = float(((y - y.mean()) ** 2).sum()) if n else 0.0
        if _is_grouped(x, kind):
            method = "eta² (between-group variance / total)"
            groups = pd.Series(y).groupby(x.astype(str).to_numpy())
            if n < 2 or groups.ngroups < 2:
                out.append(Importance(name, kind, method, n, None, "fewer than 2 values tried"))
            elif n <= groups.ngroups:
                out.append(Importance(name, kind, method, n, None, "one trial per value: no spread within groups"))
            elif sst <= 1e-300:
                out.append(Importance(name, kind, method, n, None, "the metric does not vary"))
            else:
                ssb = float(sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in groups))
                out.append(Importance(name, kind, method, n, min(1.0, ssb / sst)))
            continue
        xs = x.to_numpy(float)
        log = kind in LOG_KINDS and bool((xs > 0).all())
        if log:
            xs = np.log10(xs)
        degree = 2 if n >= 6 else 1
        where = "log10(value)" if log else "value"
        method = f"R² of a {'quadratic' if degree == 2 else 'linear'} fit on {where}"
        if n < 3 or np.ptp(xs) == 0:
            out.append(Importance(name, kind, method, n, None, "fewer than 3 distinct trials"))
        elif sst <= 1e-300:
            out.append(Importance(name, kind, method, n, None, "the metric does not vary"))
        else:
            coef = np.polyfit(xs, y, degree)
            sse = float(((np.polyval(coef, xs) - y) ** 2).sum())
            out.append(Importance(name, kind, method, n, float(min(1.0, max(0.0, 1 - sse / sst)))))
    out.sort(key=lambda r: -1.0 if r.score is None else r.score, reverse=True)
    return out


# ---------------------------------------------------------------------------------------- formatting


def _is_num(v: Any) -> bool:
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


def _fmt_loss(v: Any) -> str:
    return f"{float(v):.4f}" if _is_num(v) else "-"


def _fmt_speed(v: Any) -> str:
    return f"{float(v):,.0f}" if _is_num(v) else "-"


def _fmt_text(v: Any) -> str:
    return v if isinstance(v, str) and v else "-"


def _fmt_int(v: Any) -> str:
    return str(int(v)) if _is_num(v) else "-"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table padded so that it also lines up as plain text."""
    right = list(right) if right is not None else [False] * len(head)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    widths = [max(3, w) for w in widths]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _fence(text: str, lang: str = "") -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _short_config(row: Mapping[str, Any], res: SweepResults) -> str:
    return " ".join(short(n, fmt_value(row.get(res.column(n))), "=") for n in res.searched)


def best_train_block(row: Mapping[str, Any]) -> str:
    """Every engine option of a trial as a ``train:`` YAML block (iterations = the trial's target)."""
    train: dict[str, Any] = {}
    for name in FIELD_NAMES:
        v = row.get("target_iterations" if name == "iterations" else name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        t = FIELD_TYPES[name]
        train[name] = int(v) if t is int else float(v) if t is float else str(v)
    return yaml.safe_dump({"train": train}, sort_keys=False, default_flow_style=False).rstrip()


# --------------------------------------------------------------------------------------------- plots


def _figure(width: float = 8.0, height: float = 5.0):
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # headless; Figure objects below never need pyplot or a GUI
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def warm_up() -> None:
    """Import matplotlib and draw a tiny figure (fonts, the Agg renderer): about a second that a sweep spends
    in a background thread while its trials start, instead of at its end, before the report."""
    import io

    fig, ax = _figure(1.0, 1.0)
    ax.plot([0, 1], [0, 1], "o-", label="x")
    ax.set_title("x")
    fig.savefig(io.BytesIO(), format="png")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; the report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.35")


def _bits_axis(ax, label: str) -> None:
    sec = ax.secondary_yaxis("right", functions=(lambda v: v / LN2, lambda v: v * LN2))
    sec.set_ylabel(label)


def plot_learning_curves(res: SweepResults, path: Path) -> None:
    fig, ax = _figure(9.0, 5.6)
    hist = res.history[np.isfinite(res.history["val_loss"])]
    ranked = res.ranked()
    if not ranked.empty:
        ids = list(ranked["trial_id"].head(CURVES_N))
        what = f"top {len(ids)} trials by {res.metric}" if len(ids) > 1 else f"best trial by {res.metric}"
    else:  # nothing finished yet: the running trials with the lowest latest validation loss
        last = hist.sort_values("iteration").groupby("trial_id")["val_loss"].last().sort_values()
        ids = list(last.index[:CURVES_N])
        what = f"{len(ids)} unfinished trial{'s' if len(ids) != 1 else ''} (none finished yet)"
    status = dict(zip(res.trials["trial_id"], res.trials["status"]))
    rows = {r["trial_id"]: r for r in res.trials.to_dict("records")}
    colors = [f"C{i}" for i in range(10)]
    drawn = 0
    for i, tid in enumerate(ids):
        h = hist[hist["trial_id"] == tid].sort_values("iteration")
        if h.empty:
            continue
        st = status.get(tid, "?")
        label = f"{tid}  {_short_config(rows.get(tid, {}), res)}"
        if st != "finished":
            label += f"  ({'stopped early' if st == 'stopped' else st})"
        ls = "-" if st == "finished" else "--"
        ax.plot(h["iteration"], h["val_loss"], ls, marker="o", markersize=3.5, linewidth=1.6,
                color=colors[i % len(colors)], label=label)
        drawn += 1
    ax.set_xlabel("iteration (parameter updates)")
    ax.set_ylabel("validation loss (nats/char)")
    _bits_axis(ax, "validation loss (bits/char)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{res.name}: validation loss of the {what}")
    if drawn:
        legend_title = "trial  searched values  (dashed: did not finish)" if any(
            status.get(t) != "finished" for t in ids) else "trial  searched values"
        fig.legend(loc="outside lower center", ncols=2 if drawn > 3 else 1, fontsize=8.5,
                   title=legend_title, title_fontsize=8.5, frameon=False)
    else:
        _placeholder(ax, "no validation results yet")
    _save(fig, path)


def _positions(values: pd.Series, kind: str) -> tuple[np.ndarray, list[str] | None, list[Any]]:
    """x positions: categories at 0..k-1 (labels returned) for grid/choice/text, else the values."""
    if kind in CATEGORICAL_KINDS or _is_text(values):
        cats = sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))
        index = {v: i for i, v in enumerate(cats)}
        return np.array([index.get(v, np.nan) for v in values], float), [fmt_value(c) for c in cats], cats
    return values.to_numpy(float), None, []


def _jitter(pos: np.ndarray, width: float = 0.28) -> np.ndarray:
    """Spread points sharing a category position side by side (deterministic)."""
    out = pos.copy()
    for p in np.unique(pos[np.isfinite(pos)]):
        idx = np.flatnonzero(pos == p)
        if len(idx) > 1:
            out[idx] = p + np.linspace(-width, width, len(idx))
    return out


def _colour_param(res: SweepResults, name: str) -> str | None:
    """The second searched hyperparameter to colour by: a grouped one if any, else the first other."""
    others = [n for n in res.searched if n != name and res.trials[res.column(n)].nunique(dropna=True) > 1]
    grouped = [n for n in others if _is_grouped(res.trials[res.column(n)].dropna(), res.searched[n][0])]
    return (grouped or others or [None])[0]


def _range(domain: tuple[str, tuple]) -> np.ndarray:
    """(low, high) of a range domain as written in the sweep file; empty for listed values."""
    kind, args = domain
    if kind in CATEGORICAL_KINDS or len(args) < 2 or not all(_is_num(a) for a in args[:2]):
        return np.array([])
    return np.array(args[:2], float)


def plot_bpc_vs(res: SweepResults, name: str, path: Path) -> None:
    import matplotlib
    from matplotlib import colors as mcolors, ticker
    from matplotlib.lines import Line2D

    kind = res.searched[name][0]
    col = res.column(name)
    t = res.trials[res.trials[col].notna()]
    fig, ax = _figure(8.0, 5.4)
    pos, cat_labels, _ = _positions(res.trials[col], kind)
    pos = pd.Series(pos, index=res.trials.index)[t.index].to_numpy()
    done = t["status"].isin(RANKED).to_numpy() & np.isfinite(t["val_bpc"].to_numpy(float))
    bad = t["status"].isin(("diverged", "failed")).to_numpy() & ~np.isfinite(t["val_bpc"].to_numpy(float))
    xs = _jitter(pos) if cat_labels is not None else pos

    cname = _colour_param(res, name) if done.any() else None
    colour_legend = None
    if cname is not None:
        ccol, ckind = res.column(cname), res.searched[cname][0]
        cvals = t[ccol]
        if _is_grouped(res.trials[ccol].dropna(), ckind):
            cats = sorted(res.trials[ccol].dropna().unique(), key=lambda v: (isinstance(v, str), v))
            palette = {c: f"C{i % 10}" for i, c in enumerate(cats)}
            colours = [palette.get(v, "0.5") for v in cvals]
            colour_legend = [Line2D([], [], ls="", marker="o", markersize=8, color=palette[c], label=fmt_value(c))
                             for c in cats]
        else:
            cv = cvals.to_numpy(float)
            finite = np.concatenate([cv[done & np.isfinite(cv)], _range(res.searched[cname])])
            clog = res.searched[cname][0] in LOG_KINDS and finite.size and (finite > 0).all()
            lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            if hi <= lo:
                hi = lo * 1.01 + 1e-12
            norm = mcolors.LogNorm(lo, hi) if clog else mcolors.Normalize(lo, hi)
            cmap = matplotlib.colormaps["viridis"]
            colours = [cmap(norm(v)) if np.isfinite(v) else "0.5" for v in cv]
            from matplotlib.cm import ScalarMappable

            cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
            cb.set_label(f"colour: {cname} ({UNITS.get(cname, 'value')}{', log scale' if clog else ''})")
            if clog:  # 0.005, 0.01, 0.02 instead of powers of ten
                cb.ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                cb.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                cb.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        colours = ["C0"] * len(t)
    colours = np.array(colours, dtype=object)

    fin = done & (t["status"] == "finished").to_numpy()
    stp = done & (t["status"] == "stopped").to_numpy()
    y = t["val_bpc"].to_numpy(float)
    if fin.any():
        ax.scatter(xs[fin], y[fin], s=55, c=list(colours[fin]), edgecolors="black", linewidths=0.6, zorder=3)
    if stp.any():
        ax.scatter(xs[stp], y[stp], s=55, facecolors="none", edgecolors=list(colours[stp]), linewidths=1.8,
                   zorder=3)
    if bad.any():
        import matplotlib.transforms as mtransforms

        trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(xs[bad], np.full(bad.sum(), 0.96), s=60, marker="x", c="#c0392b", linewidths=2,
                   transform=trans, zorder=3)
    if done.any():
        lo, hi = float(np.nanmin(y[done])), float(np.nanmax(y[done]))
        pad = max((hi - lo) * 0.08, 0.02)
        ax.set_ylim(lo - pad, hi + pad * (3.0 if bad.any() else 1.0))
    else:
        _placeholder(ax, "no trial has a result yet" if not bad.any() else
                     "no trial has a result: every closed trial diverged or failed")
        ax.set_yticks([])
    status_handles = [
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="0.55", markeredgecolor="black",
               label="finished"),
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="none", markeredgecolor="0.3",
               markeredgewidth=1.8, label="stopped early by ASHA"),
    ]
    if bad.any():
        status_handles.append(Line2D([], [], ls="", marker="x", markersize=8, color="#c0392b", markeredgewidth=2,
                                     label="diverged / failed (no result)"))
    fig.legend(handles=status_handles, loc="outside lower center", ncols=len(status_handles), fontsize=9,
               frameon=False)
    if colour_legend:
        ax.legend(handles=colour_legend, title=f"colour:\n{cname}", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=9, title_fontsize=9, frameon=False, borderaxespad=0.0)

    unit = UNITS.get(name, "value")
    if cat_labels is not None:
        ax.set_xticks(range(len(cat_labels)), cat_labels)
        ax.set_xlim(-0.6, len(cat_labels) - 0.4)
        ax.set_xlabel(f"{name} ({unit})")
    elif kind in LOG_KINDS and np.nanmin(pos) > 0:
        ax.set_xscale("log")
        shown = np.concatenate([pos[(done | bad) & np.isfinite(pos)], _range(res.searched[name])])
        shown = shown[shown > 0]
        if shown.size:  # the searched range, and the diverged trials (drawn in axes coordinates)
            ax.set_xlim(shown.min() / 1.25, shown.max() * 1.25)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"{name} ({unit}, log scale)")
    else:
        shown = np.concatenate([pos[(done | bad) & np.isfinite(pos)], _range(res.searched[name])])
        if shown.size:
            span = (shown.max() - shown.min()) or max(abs(shown.max()), 1.0)
            ax.set_xlim(shown.min() - 0.06 * span, shown.max() + 0.06 * span)
        ax.set_xlabel(f"{name} ({unit})")
    ax.set_ylabel("final validation loss (bits/char)")
    ax.grid(True, alpha=0.3)
    n_done = int(done.sum())
    ax.set_title(f"{res.name}: final validation bits/char vs {name}\n"
                 f"{n_done} trial{'s' if n_done != 1 else ''} with a result; lower is better", fontsize=11)
    _save(fig, path)


def _bins(values: pd.Series, kind: str, max_bins: int = 6) -> tuple[pd.Series, list[str]]:
    """Labels per trial and their order: the values themselves, or quantile ranges when there are many."""
    v = values.dropna()
    if kind in CATEGORICAL_KINDS or _is_text(v) or v.nunique() <= 8:
        cats = sorted(v.unique(), key=lambda c: (isinstance(c, str), c))
        labels = [fmt_value(c) for c in cats]
        return values.map(lambda c: fmt_value(c) if c is not None and c == c else None), labels
    edges = np.unique(np.quantile(v.to_numpy(float), np.linspace(0, 1, max_bins + 1)))
    x = values.to_numpy(float)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    labels: dict[int, str] = {}
    for b in sorted(set(idx[np.isfinite(x)].tolist())):  # each bin named by the values actually in it
        members = x[(idx == b) & np.isfinite(x)]
        lo, hi = fmt_value(float(members.min())), fmt_value(float(members.max()))
        labels[b] = lo if lo == hi else f"{lo}–{hi}"
    return (pd.Series([labels[b] if np.isfinite(xi) else None for b, xi in zip(idx, x)], index=values.index),
            [labels[b] for b in sorted(labels)])


def plot_heatmap(res: SweepResults, path: Path) -> None:
    import matplotlib

    ranked = res.ranked()
    ranked = ranked[np.isfinite(ranked["val_bpc"])]
    h_lab, h_order = _bins(res.trials["hidden_size"], res.searched["hidden_size"][0])
    s_lab, s_order = _bins(res.trials["seq_length"], res.searched["seq_length"][0])
    grid = np.full((len(h_order), len(s_order)), np.nan)
    count = np.zeros_like(grid, dtype=int)
    for i, r in ranked.iterrows():
        a, b = h_order.index(h_lab[i]), s_order.index(s_lab[i])
        count[a, b] += 1
        grid[a, b] = np.nanmin([grid[a, b], r["val_bpc"]])
    w = max(6.0, 1.2 * len(s_order) + 3.0)
    h = max(4.0, 0.8 * len(h_order) + 2.2)
    fig, ax = _figure(w, h)
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.9")
    if np.isfinite(grid).any():
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
        cb = fig.colorbar(im, ax=ax, pad=0.02)
        cb.set_label("best final validation loss (bits/char)")
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for a in range(grid.shape[0]):
            for b in range(grid.shape[1]):
                if np.isfinite(grid[a, b]):
                    frac = 0.5 if hi == lo else (grid[a, b] - lo) / (hi - lo)
                    colour = "black" if frac < 0.55 else "white"  # viridis_r: low values are bright
                    ax.text(b, a, f"{grid[a, b]:.3f}\n(n={count[a, b]})", ha="center", va="center",
                            fontsize=9, color=colour)
                else:
                    ax.text(b, a, "no result", ha="center", va="center", fontsize=8, color="0.4")
    else:
        ax.imshow(np.zeros_like(grid), cmap=matplotlib.colormaps["Greys"], vmin=0, vmax=10, aspect="auto",
                  origin="lower")
        _placeholder(ax, "no trial has a result yet")
    ax.set_xticks(range(len(s_order)), s_order)
    ax.set_yticks(range(len(h_order)), h_order)
    ax.set_xlabel("seq_length (characters per BPTT window)")
    ax.set_ylabel("hidden_size (hidden units)")
    ax.set_title(f"{res.name}: best validation bits/char per cell (lower is better)", fontsize=11)
    _save(fig, path)


def plot_files(res: SweepResults) -> list[str]:
    """The plot file names the report writes for this sweep."""
    names = ["learning_curves.png", *(f"bpc_vs_{_safe(n)}.png" for n in res.searched)]
    if "hidden_size" in res.searched and "seq_length" in res.searched:
        names.append("heatmap_hidden_seq.png")
    if _has_schedules(res):
        names.append("lr_schedules.png")
    return names


def _has_schedules(res: SweepResults) -> bool:
    """True when some trial's learning rate changed while it trained (PBT)."""
    lr = res.history.dropna(subset=["lr"])
    return bool(len(lr)) and bool((lr.groupby("trial_id")["lr"].nunique() > 1).any())


def plot_lr_schedules(res: SweepResults, path: Path) -> None:
    """The learning rate in force against iteration, one line per trial (the top ones coloured by rank);
    a dot where PBT copied another trial into it."""
    fig, ax = _figure()
    order = list(res.ranked()["trial_id"])
    ids = order + sorted(set(res.history["trial_id"].dropna()) - set(order))
    for rank, tid in enumerate(ids):
        h = res.history[(res.history["trial_id"] == tid) & res.history["lr"].notna()].sort_values("iteration")
        if h.empty:
            continue
        top = rank < 5 and tid in order
        line, = ax.step(h["iteration"], h["lr"], where="pre", lw=2 if top else 1, alpha=1 if top else 0.5,
                        label=f"{tid} (#{rank + 1})" if top else None, color=None if top else "0.6")
        if res.exploits is not None:  # at the iteration of the copy, at the learning rate it set
            for at in res.exploits.loc[res.exploits["trial_id"] == tid, "iteration"]:
                after = h[h["iteration"] > at]
                if len(after):
                    ax.plot([at], [after["lr"].iloc[0]], "o", color=line.get_color(), ms=5)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate in force")
    ax.set_title(f"{res.name}: learning-rate schedules found by PBT (dots: copied a better trial)", fontsize=11)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title="ranked trials", title_fontsize=8)
    _save(fig, path)


def _exploits_md(res: SweepResults) -> str:
    e = res.exploits
    lines = [f"PBT copied a better trial into a worse one {len(e)} times: the worse one went on from the better "
             "one's checkpoint with mutated hyperparameters. The history table's `lr` column holds every trial's "
             "learning rate by iteration, `exploited_from` marks the first report after a copy.", ""]
    rows = [[r["trial_id"], _fmt_int(r["iteration"]), r["source_trial_id"], _fmt_text(r["changes"])]
            for _, r in e.sort_values(["iteration", "trial_id"]).head(50).iterrows()]
    lines.append(_table(["trial", "at iteration", "copied", "changes"], rows, right=[False, True, False, False]))
    if len(e) > 50:
        lines += ["", f"(first 50 of {len(e)}; all of them are in exploits.parquet)"]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ------------------------------------------------------------------------------------------- report.md


def _counts(res: SweepResults) -> str:
    counts = res.trials["status"].value_counts()
    order = [x for x in STATUS_ORDER if x in counts] + sorted(x for x in counts.index if x not in STATUS_ORDER)
    rows = [[x, str(int(counts[x])), STATUS_MEANING.get(x, "")] for x in order]
    total = len(res.trials)
    if res.planned is not None and res.planned > total:
        rows.append(["not started", str(res.planned - total), "planned but not in the table yet"])
    rows.append(["**total**", str(max(total, res.planned or 0)), ""])
    return _table(["status", "trials", "meaning"], rows, right=[False, True, False])


def _leaderboard(res: SweepResults) -> str:
    top = res.ranked().head(TOP_N)
    names = list(res.searched)
    head = ["#", "trial", "status", *names]
    if res.metric not in ("val_loss", "val_bpc"):
        head.append(f"{res.metric} (nats/char)")
    head += ["val_loss (nats/char)", "val bits/char", "iterations", "chars/s", "MLflow run id"]
    rows = []
    for rank, (_, r) in enumerate(top.iterrows(), 1):
        cells = [str(rank), r["trial_id"], r["status"], *[fmt_value(r[res.column(n)]) for n in names]]
        if res.metric not in ("val_loss", "val_bpc"):
            cells.append(_fmt_loss(r[res.metric]))
        cells += [_fmt_loss(r["val_loss"]), _fmt_loss(r["val_bpc"]), _fmt_int(r["iterations"]),
                  _fmt_speed(r["chars_per_sec"]), _fmt_text(r["mlflow_run_id"])]
        rows.append(cells)
    right = [True, False, False, *([False] * len(names))] + [True] * (len(head) - 3 - len(names) - 1) + [False]
    return _table(head, rows, right)


def _importance_md(res: SweepResults, rows: list[Importance]) -> str:
    n = len(res.ranked())
    lines = [
        f"Method: for each searched hyperparameter on its own, the fraction of the variance of {res.metric} "
        f"across the {n} ranked trials (finished or stopped early, finite {res.metric}) that it explains. "
        f"Grouped values (grid_search/choice, text, or at most {FEW_VALUES} distinct numbers that repeat): eta² = "
        "between-group sum of squares / total sum of squares. Continuous ranges: R² of a least-squares "
        "quadratic fit of the metric on log10(value) for log-scale ranges (loguniform, qloguniform, "
        "lograndint) and on the value otherwise (a straight line with fewer than 6 trials). One at a time: "
        "interactions and the other hyperparameters are not controlled for, stopped trials count with the "
        "metric at the iteration they were stopped, and with few trials the numbers are rough.",
        "",
    ]
    if not rows:
        return "\n".join(lines + ["No hyperparameters were searched."])
    body = []
    for r in rows:
        share = "n/a" if r.score is None else f"{100 * r.score:.0f}%"
        bar = "" if r.score is None else "#" * int(round(r.score * 20))
        body.append([r.name, r.kind, r.method, str(r.n), share, bar or r.note or ""])
    return "\n".join(lines + [_table(["hyperparameter", "search", "method", "trials", "variance explained", ""],
                                     body, right=[False, False, False, True, True, False])])


def render_markdown(res: SweepResults, plots: list[str], *, parent_run: str | None, uri: str | None) -> str:
    ranked = res.ranked()
    best = res.best()
    t = res.trials
    done = int(t["status"].isin(CLOSED).sum())
    unfinished = int((~t["status"].isin(CLOSED)).sum())
    interrupted = int((t["status"] == "interrupted").sum())
    planned = max(res.planned if res.planned is not None else 0, len(t))
    in_progress = unfinished > 0 or planned > len(t)
    direction = "lower" if res.mode == "min" else "higher"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# Sweep report: {res.name}", ""]
    md.append(f"Generated {now} from `{res.output}` (trials.parquet, history.parquet).  ")
    md.append(f"Objective: {res.mode} `{res.metric}` ({direction} is better). val_loss is in nats/char, "
              "val bits/char = val_loss / ln 2.  ")
    if parent_run:
        md.append(f"MLflow: parent run `{parent_run}` at `{uri}`; these files are its artifacts under `report/`.  ")
    if interrupted:
        md += ["", f"**Sweep interrupted:** {done} of {planned} trials done, {interrupted} interrupted. This report "
                   "covers what finished; finish the sweep with `python -m pipeline.sweep <sweep file> --resume`."]
    elif in_progress:
        parts = [f"{unfinished} running" if unfinished else "", f"{planned - len(t)} not started"
                 if planned > len(t) else ""]
        md += ["", f"**Sweep in progress:** {done} of {planned} planned trials done "
                   f"({', '.join(p for p in parts if p)}). This report covers what finished so far; "
                   "run it again later for the rest."]
    for note in res.notes:
        md += ["", f"Note: {note}."]

    md += ["", "## Trials by status", "", _counts(res)]

    md += ["", f"## Leaderboard (top {min(TOP_N, len(ranked))} of {len(ranked)} ranked trials by {res.metric})"
           if len(ranked) else "## Leaderboard", ""]
    if ranked.empty:
        md.append("No trial has finished with a finite metric yet.")
    else:
        md += ["Ranked: finished trials and trials stopped early by ASHA (their metric is from the iteration "
               "they stopped at); diverged and failed trials are left out. chars/s: mean training speed.", "",
               _leaderboard(res)]

    md += ["", "## Best configuration", ""]
    if best is None:
        md.append("None yet.")
    else:
        extra = ""
        if best["status"] == "stopped":
            extra = (f" It was stopped early at iteration {_fmt_int(best['iterations'])} of "
                     f"{_fmt_int(best['target_iterations'])}.")
        md += [f"Trial **{best['trial_id']}**: {res.metric} = {_fmt_loss(best[res.metric])}, "
               f"val bits/char = {_fmt_loss(best['val_bpc'])}, MLflow run `{_fmt_text(best['mlflow_run_id'])}`.{extra}",
               "",
               "Every engine option of this trial, ready to paste as the `train:` section of a sweep file "
               "(`iterations` is the trial's target; drop `seed` to let the sweep derive one):", "",
               _fence(best_train_block(best.to_dict()), "yaml"), "",
               f"More text from its checkpoint: `python -m pipeline.sample {res.output} --best --length 500 "
               f"--temperature 0.8 --prime \"ROMEO:\"`"]
        sample = best.get("sample")
        md += ["", f"### Final sample of {best['trial_id']}", ""]
        if isinstance(sample, str) and sample.strip():
            md.append(_fence(sample))
        else:
            md.append("No sample was recorded.")

    if res.exploits is not None and len(res.exploits):
        md += ["", "## Population Based Training", "", _exploits_md(res)]

    md += ["", "## Hyperparameter importance", "", _importance_md(res, importance(res))]

    md += ["", "## Plots", ""]
    captions = {
        "learning_curves.png": "validation loss (nats/char, bits/char on the right axis) against iteration "
                               "for the top trials; dashed lines did not finish",
        "heatmap_hidden_seq.png": "best final validation bits/char for each hidden_size x seq_length",
        "lr_schedules.png": "the learning rate in force against iteration for every trial (PBT's schedules); "
                            "dots: the trial went on from a better trial's checkpoint",
    }
    for p in plots:
        cap = captions.get(p) or (f"final validation bits/char against {p[len('bpc_vs_'):-4]}; hollow markers: "
                                  "stopped early by ASHA, x: diverged/failed")
        md.append(f"- `{p}`: {cap}  \n  ![{p}]({p})")

    md += ["", "## Sweep file", "", _fence(res.sweep_text or "(not recorded)", "yaml"), ""]
    return "\n".join(md)


# ------------------------------------------------------------------------------------------- MLflow


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _client(uri: str):
    """An MlflowClient for uri, or a TrackingError-like RuntimeError if the store cannot be reached."""
    from .tracking import check_server

    check_server(uri, timeout_s=5.0)
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        if not os.path.exists(db):
            raise RuntimeError(f"no MLflow store at {db}")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_parent_run(client, trials: pd.DataFrame) -> str | None:
    """The sweep's parent run: the `mlflow.parentRunId` tag of any of its trials' runs."""
    for rid in trials["mlflow_run_id"].dropna().unique():
        try:
            parent = client.get_run(str(rid)).data.tags.get("mlflow.parentRunId")
        except Exception:  # noqa: BLE001 - a deleted run, another store: try the next trial
            continue
        if parent:
            return parent
    return None


def resolve_tracking_uri(explicit: str | None, res: SweepResults) -> str:
    """--tracking-uri, else the sweep file's mlflow.tracking_uri, else MLFLOW_TRACKING_URI, else ./mlflow.db."""
    from .tracking import resolve_uri

    return resolve_uri(explicit or res.tracking_uri)


# ---------------------------------------------------------------------------------------------- main


def write_report(output_dir: str | os.PathLike, *, tracking_uri: str | None = None,
                 log_to_mlflow: bool = True) -> Path:
    """Write <output_dir>/report/ (report.md and the plots) and log it to the parent run; return the folder.

    Raises ReportError when output_dir holds no trials.parquet. MLflow problems only warn.
    """
    res = load_results(output_dir)
    out = res.output / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("bpc_vs_*.png"), out / "learning_curves.png", out / "heatmap_hidden_seq.png",
                out / "lr_schedules.png"]:
        if old.exists():  # plots of an earlier report that this one may not redraw
            old.unlink()

    client, parent, uri = None, None, None
    if log_to_mlflow:
        uri = resolve_tracking_uri(tracking_uri, res)
        try:
            client = _client(uri)
            parent = find_parent_run(client, res.trials)
            if parent is None:
                _warn(f"no parent MLflow run found at {uri} for the trials in {res.output} "
                      "(no trial has a run there yet); the report is written but not logged")
        except Exception as e:  # noqa: BLE001 - MLflow unreachable: the files are still written
            _warn(f"MLflow at {uri} cannot be used ({type(e).__name__}: {e}); the report is written to {out} "
                  "but not logged")
            client = None

    plots = plot_files(res)
    plot_learning_curves(res, out / "learning_curves.png")
    for name in res.searched:
        plot_bpc_vs(res, name, out / f"bpc_vs_{_safe(name)}.png")
    if "heatmap_hidden_seq.png" in plots:
        plot_heatmap(res, out / "heatmap_hidden_seq.png")
    if "lr_schedules.png" in plots:
        plot_lr_schedules(res, out / "lr_schedules.png")
    text = render_markdown(res, plots, parent_run=parent, uri=uri)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report.", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, out / REPORT_FILE)

    if client is not None and parent is not None:
        try:
            for f in [REPORT_FILE, *plots]:
                client.log_artifact(parent, str(out / f), ARTIFACT_DIR)
        except Exception as e:  # noqa: BLE001
            _warn(f"could not log the report to MLflow run {parent} at {uri} ({type(e).__name__}: {e}); "
                  f"the files are in {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.report",
                                description="Write the report of a sweep (Markdown and plots) into <folder>/report/ "
                                            "and log it to the sweep's parent MLflow run.")
    p.add_argument("folder", help="the sweep's output folder, e.g. results/basic")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep file's mlflow.tracking_uri, "
                                          "else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only; log nothing to MLflow")
    args = p.parse_args(argv)
    try:
        out = write_report(args.folder, tracking_uri=args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = sorted(f.name for f in out.iterdir() if not f.name.startswith("."))
    print(f"report: {out / REPORT_FILE}\nfiles:  {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
