"""The report's PNG plots: learning curves, final bits/char against each searched option, the hidden_size x
seq_length heatmap and PBT's learning-rate schedules. matplotlib draws on ``Figure`` objects with the Agg
canvas (pyplot, with its global state, is not used) and is imported when a plot is drawn."""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnncore.checkpoint import save_atomically

from .. import vocab
from ..config import Domain
from .data import SweepResults, fmt_value, is_grouped, is_log, is_text, short_config

__all__ = ["CURVES_N", "UNITS", "plot_bpc_vs", "plot_files", "plot_heatmap", "plot_learning_curves",
           "plot_lr_schedules", "safe_name", "save_atomically", "warm_up"]

LN2 = math.log(2.0)
CURVES_N = 8  # learning curves drawn
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
_BAD = tuple(s for s in vocab.CLOSED if s not in vocab.RANKED)  # closed without a result: drawn as x at the top


# ------------------------------------------------------------------------------------------- canvas


def _figure(width: float = 8.0, height: float = 5.0):
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # headless; Figure objects below never need pyplot or a GUI
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def warm_up() -> None:
    """Import matplotlib and draw a tiny figure (fonts, the Agg renderer)."""
    import io

    fig, ax = _figure(1.0, 1.0)
    ax.plot([0, 1], [0, 1], "o-", label="x")
    ax.set_title("x")
    fig.savefig(io.BytesIO(), format="png")


def _save(fig, path: Path) -> None:
    save_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.35")


def _bits_axis(ax, label: str) -> None:
    sec = ax.secondary_yaxis("right", functions=(lambda v: v / LN2, lambda v: v * LN2))
    sec.set_ylabel(label)


def _log_ticks(axis) -> None:
    """0.005, 0.01, 0.02 instead of powers of ten."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_files(res: SweepResults) -> list[str]:
    """The plot file names the report writes for this sweep."""
    names = ["learning_curves.png", *(f"bpc_vs_{safe_name(n)}.png" for n in res.searched)]
    if "hidden_size" in res.searched and "seq_length" in res.searched:
        names.append("heatmap_hidden_seq.png")
    if _has_schedules(res):
        names.append("lr_schedules.png")
    return names


# ---------------------------------------------------------------------------------- learning curves


def _curve_ids(res: SweepResults, hist: pd.DataFrame) -> tuple[list[str], str]:
    """The trials to draw and how to name them: the top ranked, or the best unfinished when none ranks yet."""
    ranked = res.ranked()
    if not ranked.empty:
        ids = list(ranked["trial_id"].head(CURVES_N))
        return ids, f"top {len(ids)} trials by {res.metric}" if len(ids) > 1 else f"best trial by {res.metric}"
    last = hist.sort_values("iteration").groupby("trial_id")["val_loss"].last().sort_values()
    ids = list(last.index[:CURVES_N])
    return ids, f"{len(ids)} unfinished trial{'s' if len(ids) != 1 else ''} (none finished yet)"


def plot_learning_curves(res: SweepResults, path: Path) -> None:
    fig, ax = _figure(9.0, 5.6)
    hist = res.history[np.isfinite(res.history["val_loss"])]
    ids, what = _curve_ids(res, hist)
    status = dict(zip(res.trials["trial_id"], res.trials["status"]))
    rows = {r["trial_id"]: r for r in res.trials.to_dict("records")}
    drawn = 0
    for i, tid in enumerate(ids):
        h = hist[hist["trial_id"] == tid].sort_values("iteration")
        if h.empty:
            continue
        st = status.get(tid, "?")
        label = f"{tid}  {short_config(rows.get(tid, {}), res)}"
        if st != "finished":
            label += f"  ({'stopped early' if st == 'stopped' else st})"
        ax.plot(h["iteration"], h["val_loss"], "-" if st == "finished" else "--", marker="o", markersize=3.5,
                linewidth=1.6, color=f"C{i % 10}", label=label)
        drawn += 1
    ax.set_xlabel("iteration (parameter updates)")
    ax.set_ylabel("validation loss (nats/char)")
    _bits_axis(ax, "validation loss (bits/char)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{res.name}: validation loss of the {what}")
    if drawn:
        dashed = any(status.get(t) != "finished" for t in ids)
        fig.legend(loc="outside lower center", ncols=2 if drawn > 3 else 1, fontsize=8.5,
                   title="trial  searched values" + ("  (dashed: did not finish)" if dashed else ""),
                   title_fontsize=8.5, frameon=False)
    else:
        _placeholder(ax, "no validation results yet")
    _save(fig, path)


# -------------------------------------------------------------------------- bits/char vs one option


@dataclass
class _Points:
    """The trials of one bpc_vs plot: where they go and what they are."""

    t: pd.DataFrame  # the trials that have a value for the option
    pos: np.ndarray  # x positions (category index, or the value)
    xs: np.ndarray  # pos, spread within a category
    y: np.ndarray  # final val_bpc
    done: np.ndarray  # ranked (finished or stopped) with a result
    bad: np.ndarray  # diverged or failed, no result
    labels: list[str] | None  # category labels; None on a numeric axis


def _categories(values: pd.Series) -> list[Any]:
    return sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))


def _points(res: SweepResults, name: str) -> _Points:
    col = res.column(name)
    t = res.trials[res.trials[col].notna()]
    if res.searched[name].is_categorical or is_text(res.trials[col]):
        cats = _categories(res.trials[col])
        index = {v: i for i, v in enumerate(cats)}
        pos, labels = np.array([index.get(v, np.nan) for v in t[col]], float), [fmt_value(c) for c in cats]
    else:
        pos, labels = t[col].to_numpy(float), None
    y = t["val_bpc"].to_numpy(float)
    done = t["status"].isin(vocab.RANKED).to_numpy() & np.isfinite(y)
    bad = t["status"].isin(_BAD).to_numpy() & ~np.isfinite(y)
    return _Points(t, pos, _jitter(pos) if labels is not None else pos, y, done, bad, labels)


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
    grouped = [n for n in others if is_grouped(res.trials[res.column(n)].dropna(), res.searched[n])]
    return (grouped or others or [None])[0]


def _range(domain: Domain) -> np.ndarray:
    """(low, high) of a range domain as written in the sweep file; empty for listed values."""
    return np.array([]) if domain.is_categorical else np.array(domain.bounds(), float)


def _colours(fig, ax, res: SweepResults, name: str, p: _Points) -> np.ndarray:
    """A colour per point by a second searched option: a legend of groups, or a colour bar for a range."""
    cname = _colour_param(res, name) if p.done.any() else None
    if cname is None:
        return np.array(["C0"] * len(p.t), dtype=object)
    ccol, cdomain = res.column(cname), res.searched[cname]
    if is_grouped(res.trials[ccol].dropna(), cdomain):
        return _group_colours(ax, cname, res.trials[ccol], p.t[ccol])
    return _scale_colours(fig, ax, cname, cdomain, p.t[ccol].to_numpy(float), p.done)


def _group_colours(ax, cname: str, all_values: pd.Series, values: pd.Series) -> np.ndarray:
    from matplotlib.lines import Line2D

    cats = _categories(all_values)
    palette = {c: f"C{i % 10}" for i, c in enumerate(cats)}
    handles = [Line2D([], [], ls="", marker="o", markersize=8, color=palette[c], label=fmt_value(c)) for c in cats]
    ax.legend(handles=handles, title=f"colour:\n{cname}", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=9, title_fontsize=9, frameon=False, borderaxespad=0.0)
    return np.array([palette.get(v, "0.5") for v in values], dtype=object)


def _scale_colours(fig, ax, cname: str, cdomain: Domain, cv: np.ndarray, done: np.ndarray) -> np.ndarray:
    import matplotlib
    from matplotlib import colors as mcolors
    from matplotlib.cm import ScalarMappable

    finite = np.concatenate([cv[done & np.isfinite(cv)], _range(cdomain)])
    clog = is_log(cdomain) and finite.size and (finite > 0).all()
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo * 1.01 + 1e-12
    norm = mcolors.LogNorm(lo, hi) if clog else mcolors.Normalize(lo, hi)
    cmap = matplotlib.colormaps["viridis"]
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    cb.set_label(f"colour: {cname} ({UNITS.get(cname, 'value')}{', log scale' if clog else ''})")
    if clog:
        _log_ticks(cb.ax.yaxis)
    return np.array([cmap(norm(v)) if np.isfinite(v) else "0.5" for v in cv], dtype=object)


def _draw_points(ax, p: _Points, colours: np.ndarray) -> None:
    """Finished: filled; stopped early: hollow; diverged/failed: a red x along the top."""
    fin = p.done & (p.t["status"] == "finished").to_numpy()
    stp = p.done & (p.t["status"] == "stopped").to_numpy()
    if fin.any():
        ax.scatter(p.xs[fin], p.y[fin], s=55, c=list(colours[fin]), edgecolors="black", linewidths=0.6, zorder=3)
    if stp.any():
        ax.scatter(p.xs[stp], p.y[stp], s=55, facecolors="none", edgecolors=list(colours[stp]), linewidths=1.8,
                   zorder=3)
    if p.bad.any():
        import matplotlib.transforms as mtransforms

        trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(p.xs[p.bad], np.full(p.bad.sum(), 0.96), s=60, marker="x", c="#c0392b", linewidths=2,
                   transform=trans, zorder=3)
    if p.done.any():
        lo, hi = float(np.nanmin(p.y[p.done])), float(np.nanmax(p.y[p.done]))
        pad = max((hi - lo) * 0.08, 0.02)
        ax.set_ylim(lo - pad, hi + pad * (3.0 if p.bad.any() else 1.0))
    else:
        _placeholder(ax, "no trial has a result yet" if not p.bad.any() else
                     "no trial has a result: every closed trial diverged or failed")
        ax.set_yticks([])


def _status_legend(fig, bad: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="0.55", markeredgecolor="black",
               label="finished"),
        Line2D([], [], ls="", marker="o", markersize=8, markerfacecolor="none", markeredgecolor="0.3",
               markeredgewidth=1.8, label="stopped early by ASHA"),
    ]
    if bad:
        handles.append(Line2D([], [], ls="", marker="x", markersize=8, color="#c0392b", markeredgewidth=2,
                              label="diverged / failed (no result)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)


def _x_axis(ax, name: str, domain: Domain, p: _Points) -> None:
    """Categories at 0..k-1; a log axis for a log-scale range; else linear. Ranges span the domain too."""
    unit = UNITS.get(name, "value")
    if p.labels is not None:
        ax.set_xticks(range(len(p.labels)), p.labels)
        ax.set_xlim(-0.6, len(p.labels) - 0.4)
        ax.set_xlabel(f"{name} ({unit})")
        return
    shown = np.concatenate([p.pos[(p.done | p.bad) & np.isfinite(p.pos)], _range(domain)])
    if is_log(domain) and np.nanmin(p.pos) > 0:
        ax.set_xscale("log")
        shown = shown[shown > 0]
        if shown.size:  # the searched range, and the diverged trials (drawn in axes coordinates)
            ax.set_xlim(shown.min() / 1.25, shown.max() * 1.25)
        _log_ticks(ax.xaxis)
        ax.set_xlabel(f"{name} ({unit}, log scale)")
        return
    if shown.size:
        span = (shown.max() - shown.min()) or max(abs(shown.max()), 1.0)
        ax.set_xlim(shown.min() - 0.06 * span, shown.max() + 0.06 * span)
    ax.set_xlabel(f"{name} ({unit})")


def plot_bpc_vs(res: SweepResults, name: str, path: Path) -> None:
    """Final validation bits/char of every trial against one searched option, coloured by a second one."""
    fig, ax = _figure(8.0, 5.4)
    p = _points(res, name)
    _draw_points(ax, p, _colours(fig, ax, res, name, p))
    _status_legend(fig, bool(p.bad.any()))
    _x_axis(ax, name, res.searched[name], p)
    ax.set_ylabel("final validation loss (bits/char)")
    ax.grid(True, alpha=0.3)
    n_done = int(p.done.sum())
    ax.set_title(f"{res.name}: final validation bits/char vs {name}\n"
                 f"{n_done} trial{'s' if n_done != 1 else ''} with a result; lower is better", fontsize=11)
    _save(fig, path)


# ------------------------------------------------------------------------------------------ heatmap


def _bins(values: pd.Series, domain: Domain, max_bins: int = 6) -> tuple[pd.Series, list[str]]:
    """Labels per trial and their order: the values themselves, or quantile ranges when there are many."""
    v = values.dropna()
    if domain.is_categorical or is_text(v) or v.nunique() <= 8:
        labels = [fmt_value(c) for c in _categories(v)]
        return values.map(lambda c: fmt_value(c) if c is not None and c == c else None), labels
    edges = np.unique(np.quantile(v.to_numpy(float), np.linspace(0, 1, max_bins + 1)))
    x = values.to_numpy(float)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    names: dict[int, str] = {}
    for b in sorted(set(idx[np.isfinite(x)].tolist())):  # each bin named by the values actually in it
        members = x[(idx == b) & np.isfinite(x)]
        lo, hi = fmt_value(float(members.min())), fmt_value(float(members.max()))
        names[b] = lo if lo == hi else f"{lo}–{hi}"
    return (pd.Series([names[b] if np.isfinite(xi) else None for b, xi in zip(idx, x)], index=values.index),
            [names[b] for b in sorted(names)])


def _cells(res: SweepResults, h_order: list[str], s_order: list[str], h_lab: pd.Series, s_lab: pd.Series):
    """(best bits/char, trial count) per hidden_size x seq_length cell, over the ranked trials."""
    ranked = res.ranked()
    ranked = ranked[np.isfinite(ranked["val_bpc"])]
    grid = np.full((len(h_order), len(s_order)), np.nan)
    count = np.zeros_like(grid, dtype=int)
    for i, r in ranked.iterrows():
        a, b = h_order.index(h_lab[i]), s_order.index(s_lab[i])
        count[a, b] += 1
        grid[a, b] = np.nanmin([grid[a, b], r["val_bpc"]])
    return grid, count


def _annotate(fig, ax, grid: np.ndarray, count: np.ndarray) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.9")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    fig.colorbar(im, ax=ax, pad=0.02).set_label("best final validation loss (bits/char)")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for a in range(grid.shape[0]):
        for b in range(grid.shape[1]):
            if not np.isfinite(grid[a, b]):
                ax.text(b, a, "no result", ha="center", va="center", fontsize=8, color="0.4")
                continue
            frac = 0.5 if hi == lo else (grid[a, b] - lo) / (hi - lo)
            colour = "black" if frac < 0.55 else "white"  # viridis_r: low values are bright
            ax.text(b, a, f"{grid[a, b]:.3f}\n(n={count[a, b]})", ha="center", va="center", fontsize=9, color=colour)


def plot_heatmap(res: SweepResults, path: Path) -> None:
    import matplotlib

    h_lab, h_order = _bins(res.trials["hidden_size"], res.searched["hidden_size"])
    s_lab, s_order = _bins(res.trials["seq_length"], res.searched["seq_length"])
    grid, count = _cells(res, h_order, s_order, h_lab, s_lab)
    fig, ax = _figure(max(6.0, 1.2 * len(s_order) + 3.0), max(4.0, 0.8 * len(h_order) + 2.2))
    if np.isfinite(grid).any():
        _annotate(fig, ax, grid, count)
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


# ------------------------------------------------------------------------------------- PBT schedules


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
