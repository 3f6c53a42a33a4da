"""report.md: the sweep's state, the trials by status, the leaderboard, the best configuration, PBT's
exploits, the hyperparameter importance, the plots and the sweep file -- one function per section."""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import yaml

from rnncore.config import FIELD_NAMES, FIELD_TYPES

from .. import vocab
from .data import SweepResults, fmt_value, is_number
from .importance import MIN_TRIALS, Importances, importance

__all__ = ["TOP_N", "best_train_block", "render_markdown"]

TOP_N = 10  # leaderboard rows
CAPTIONS = {
    "learning_curves.png": "validation loss (nats/char, bits/char on the right axis) against iteration "
                           "for the top trials; dashed lines did not finish",
    "heatmap_hidden_seq.png": "best final validation bits/char for each hidden_size x seq_length",
    "lr_schedules.png": "the learning rate in force against iteration for every trial (PBT's schedules); "
                        "dots: the trial went on from a better trial's checkpoint",
}


def render_markdown(res: SweepResults, plots: list[str], *, parent_run: str | None, uri: str | None) -> str:
    sections = [
        _header(res, parent_run, uri),
        ("## Trials by status", _counts(res)),
        _leaderboard(res),
        ("## Best configuration", _best(res)),
    ]
    if res.exploits is not None and len(res.exploits):
        sections.append(("## Population Based Training", _exploits(res)))
    sections += [
        ("## Hyperparameter importance", _importance(res, importance(res))),
        ("## Plots", "\n".join(_plot_line(p) for p in plots)),
        ("## Sweep file", _fence(res.sweep_text or "(not recorded)", "yaml") + "\n"),
    ]
    head, *rest = sections
    return "\n".join([head, *(f"\n{title}\n\n{body}" for title, body in rest)])


# ------------------------------------------------------------------------------------------ sections


def _header(res: SweepResults, parent_run: str | None, uri: str | None) -> str:
    direction = "lower" if res.mode == "min" else "higher"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# Sweep report: {res.name}", "",
          f"Generated {now} from `{res.output}` (trials.parquet, history.parquet).  ",
          f"Objective: {res.mode} `{res.metric}` ({direction} is better). val_loss is in nats/char, "
          "val bits/char = val_loss / ln 2.  "]
    if parent_run:
        md.append(f"MLflow: parent run `{parent_run}` at `{uri}`; these files are its artifacts under `report/`.  ")
    progress = _progress(res)
    if progress:
        md += ["", progress]
    for note in res.notes:
        md += ["", f"Note: {note}."]
    return "\n".join(md)


def _progress(res: SweepResults) -> str:
    """A line for a sweep that was interrupted or is still running; "" for one that is done."""
    t = res.trials
    done = int(t["status"].isin(vocab.CLOSED).sum())
    unfinished = len(t) - done
    interrupted = int((t["status"] == "interrupted").sum())
    planned = max(res.planned if res.planned is not None else 0, len(t))
    if interrupted:
        return (f"**Sweep interrupted:** {done} of {planned} trials done, {interrupted} interrupted. This report "
                "covers what finished; finish the sweep with `python -m pipeline.sweep <sweep file> --resume`.")
    if unfinished == 0 and planned == len(t):
        return ""
    parts = [f"{unfinished} running" if unfinished else "", f"{planned - len(t)} not started"
             if planned > len(t) else ""]
    return (f"**Sweep in progress:** {done} of {planned} planned trials done ({', '.join(p for p in parts if p)}). "
            "This report covers what finished so far; run it again later for the rest.")


def _counts(res: SweepResults) -> str:
    counts = res.trials["status"].value_counts()
    order = [x for x in vocab.STATUSES if x in counts] + sorted(x for x in counts.index if x not in vocab.STATUSES)
    rows = [[x, str(int(counts[x])), vocab.STATUSES.get(x, "")] for x in order]
    total = len(res.trials)
    if res.planned is not None and res.planned > total:
        rows.append(["not started", str(res.planned - total), "planned but not in the table yet"])
    rows.append(["**total**", str(max(total, res.planned or 0)), ""])
    return _table(["status", "trials", "meaning"], rows, right=[False, True, False])


def _leaderboard(res: SweepResults) -> tuple[str, str]:
    ranked = res.ranked()
    if ranked.empty:
        return "## Leaderboard", "No trial has finished with a finite metric yet."
    title = f"## Leaderboard (top {min(TOP_N, len(ranked))} of {len(ranked)} ranked trials by {res.metric})"
    names = list(res.searched)
    extra = res.metric not in ("val_loss", "val_bpc")  # the metric gets its own column
    head = ["#", "trial", "status", *names, *([f"{res.metric} (nats/char)"] if extra else []),
            "val_loss (nats/char)", "val bits/char", "iterations", "chars/s", "MLflow run id"]
    rows = []
    for rank, (_, r) in enumerate(ranked.head(TOP_N).iterrows(), 1):
        rows.append([str(rank), r["trial_id"], r["status"], *[fmt_value(r[res.column(n)]) for n in names],
                     *([_fmt_loss(r[res.metric])] if extra else []), _fmt_loss(r["val_loss"]),
                     _fmt_loss(r["val_bpc"]), _fmt_int(r["iterations"]), _fmt_speed(r["mean_chars_per_sec"]),
                     _fmt_text(r["mlflow_run_id"])])
    right = [True, False, False, *([False] * len(names))] + [True] * (len(head) - 3 - len(names) - 1) + [False]
    return title, ("Ranked: finished trials and trials stopped early by ASHA or the time budget (their metric is "
                   "from the iteration they stopped at); diverged and failed trials are left out. chars/s: mean "
                   "training speed.\n\n"
                   + _table(head, rows, right))


def _best(res: SweepResults) -> str:
    best = res.best()
    if best is None:
        return "None yet."
    extra = ""
    if best["status"] == "stopped":
        extra = (f" It was stopped early at iteration {_fmt_int(best['iterations'])} of "
                 f"{_fmt_int(best['target_iterations'])}.")
    sample = best.get("sample")
    return "\n".join([
        f"Trial **{best['trial_id']}**: {res.metric} = {_fmt_loss(best[res.metric])}, "
        f"val bits/char = {_fmt_loss(best['val_bpc'])}, MLflow run `{_fmt_text(best['mlflow_run_id'])}`.{extra}",
        "",
        "Every engine option of this trial, ready to paste as the `train:` section of a sweep file "
        "(`iterations` is the trial's target; drop `seed` to let the sweep derive one):", "",
        _fence(best_train_block(best.to_dict()), "yaml"), "",
        f"More text from its checkpoint: `python -m pipeline.sample {res.output} --best --length 500 "
        f"--temperature 0.8 --prime \"ROMEO:\"`",
        "", f"### Final sample of {best['trial_id']}", "",
        _fence(sample) if isinstance(sample, str) and sample.strip() else "No sample was recorded.",
    ])


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


def _exploits(res: SweepResults) -> str:
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


def _importance(res: SweepResults, imp: Importances) -> str:
    lines = [_importance_method(res, imp), ""]
    if not imp.rows:
        return "\n".join(lines + [imp.note])
    if imp.note:
        lines += [imp.note, ""]
    body = [[r.name, r.domain.kind, r.distribution or "-", _fmt_score(r.score),
             "n/a" if r.share is None else f"{100 * r.share:.0f}%",
             "#" * int(round(r.share * 20)) if r.share else r.note] for r in imp.rows]
    table = _table(["hyperparameter", "search", "distribution", "PED-ANOVA score", "share", ""], body,
                   right=[False, False, False, True, True, False])
    return "\n".join(lines + [table])


def _importance_method(res: SweepResults, imp: Importances) -> str:
    version = f" {imp.version}" if imp.version else ""
    top = f"the top {imp.top} of them" if imp.top else "the top ones"
    return (f"Method: {imp.method} (optuna{version} `PedAnovaImportanceEvaluator`) on {imp.trials} ranked trial"
            f"{'s' if imp.trials != 1 else ''} (finished or stopped early, finite {res.metric}; stopped trials "
            f"count with the metric at the iteration they were stopped). For each searched hyperparameter it "
            f"measures how far its values among {top} by {res.metric} (target quantile {imp.quantile:.2g}) are "
            f"from its values over all of them (a Pearson divergence between two Parzen estimates): an option "
            f"the top trials agree on scores high. The share is the score over the sum of all scores. It needs "
            f"at least {MIN_TRIALS} ranked trials, and with few trials the numbers are rough.")


def _plot_line(p: str) -> str:
    cap = CAPTIONS.get(p) or (f"final validation bits/char against {p[len('bpc_vs_'):-4]}; hollow markers: "
                              "stopped early by ASHA, x: diverged/failed")
    return f"- `{p}`: {cap}  \n  ![{p}]({p})"


# ------------------------------------------------------------------------------------------ formatting


def _fmt_loss(v: Any) -> str:
    return f"{float(v):.4f}" if is_number(v) else "-"


def _fmt_score(v: Any) -> str:
    return f"{float(v):.3g}" if is_number(v) else "n/a"


def _fmt_speed(v: Any) -> str:
    return f"{float(v):,.0f}" if is_number(v) else "-"


def _fmt_text(v: Any) -> str:
    return v if isinstance(v, str) and v else "-"


def _fmt_int(v: Any) -> str:
    return str(int(v)) if is_number(v) else "-"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table padded so that it also lines up as plain text."""
    right = list(right) if right is not None else [False] * len(head)
    widths = [max(3, *(len(str(c)) for c in col)) for col in zip(head, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _fence(text: str, lang: str = "") -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"
