"""Write a sweep's report folder and log it to the sweep's parent MLflow run; the CLI."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rnncore.checkpoint import save_atomically

from .. import tracking
from .data import ReportError, SweepResults, load_results
from .html import render_html
from .markdown import render_markdown
from .plots import plot_bpc_vs, plot_files, plot_heatmap, plot_learning_curves, plot_lr_schedules, safe_name
from .plots import warm_up as _warm_up_plots

__all__ = ["ARTIFACT_DIR", "HTML_FILE", "REPORT_DIR", "REPORT_FILE", "main", "resolve_tracking_uri", "warm_up",
           "write_report"]

REPORT_DIR = "report"  # under the sweep's output folder
REPORT_FILE = "report.md"
HTML_FILE = "report.html"  # the same report with its plots embedded: what MLflow's artifact viewer shows whole
ARTIFACT_DIR = "report"  # under the parent run's artifacts


def warm_up() -> None:
    """Import matplotlib and Optuna's importance module and draw a tiny figure: about three seconds that a
    sweep spends in a background thread while its trials start, instead of at its end, before the report."""
    import optuna.importance  # noqa: F401

    _warm_up_plots()


def resolve_tracking_uri(explicit: str | None, res: SweepResults) -> str:
    """--tracking-uri, else the sweep file's mlflow.tracking_uri, else MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return tracking.resolve_uri(explicit or res.tracking_uri)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _parent_run(res: SweepResults, uri: str, out: Path) -> str | None:
    """The sweep's parent run in the store at uri, or None with a warning (the files are written regardless)."""
    try:
        parent = tracking.find_parent_run(uri, [str(r) for r in res.trials["mlflow_run_id"].dropna().unique()])
    except Exception as e:  # noqa: BLE001 - MLflow unreachable: the files are still written
        _warn(f"MLflow at {uri} cannot be used ({type(e).__name__}: {e}); the report is written to {out} "
              "but not logged")
        return None
    if parent is None:
        _warn(f"no parent MLflow run found at {uri} for the trials in {res.output} "
              "(no trial has a run there yet); the report is written but not logged")
    return parent


def _draw(res: SweepResults, out: Path, plots: list[str]) -> None:
    for old in [*out.glob("bpc_vs_*.png"), out / "learning_curves.png", out / "heatmap_hidden_seq.png",
                out / "lr_schedules.png"]:
        if old.exists():  # plots of an earlier report that this one may not redraw
            old.unlink()
    plot_learning_curves(res, out / "learning_curves.png")
    for name in res.searched:
        plot_bpc_vs(res, name, out / f"bpc_vs_{safe_name(name)}.png")
    if "heatmap_hidden_seq.png" in plots:
        plot_heatmap(res, out / "heatmap_hidden_seq.png")
    if "lr_schedules.png" in plots:
        plot_lr_schedules(res, out / "lr_schedules.png")


def write_report(output_dir: str | os.PathLike, *, tracking_uri: str | None = None,
                 log_to_mlflow: bool = True) -> Path:
    """Write <output_dir>/report/ (report.md, report.html and the plots) and log it to the parent run; return the
    folder.

    Raises ReportError when output_dir holds no trials.parquet. MLflow problems only warn.
    """
    res = load_results(output_dir)
    out = res.output / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(tracking_uri, res) if log_to_mlflow else None
    parent = _parent_run(res, uri, out) if uri else None
    plots = plot_files(res)
    _draw(res, out, plots)
    text = render_markdown(res, plots, parent_run=parent, uri=uri)
    save_atomically(out / REPORT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    page = render_html(text, out)
    save_atomically(out / HTML_FILE, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    if parent is not None:
        try:
            tracking.log_files(uri, parent, [str(out / f) for f in [REPORT_FILE, HTML_FILE, *plots]], ARTIFACT_DIR)
        except Exception as e:  # noqa: BLE001
            _warn(f"could not log the report to MLflow run {parent} at {uri} ({type(e).__name__}: {e}); "
                  f"the files are in {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.report",
                                description="Write the report of a sweep (Markdown, HTML and plots) into <folder>/report/ "
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
