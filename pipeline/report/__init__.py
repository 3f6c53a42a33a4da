"""The sweep report: what the sweep found, as a Markdown file and plots next to its Parquet tables.

    python -m pipeline.report results/basic [--tracking-uri URI] [--no-mlflow]

writes ``results/basic/report/``:

- ``report.md``: the sweep file, trial counts by status, the leaderboard, the best configuration as a
  ``train:`` block, the best trial's final sample and a hyperparameter-importance table (PED-ANOVA from
  ``optuna.importance``, with the number of trials it rests on);
- ``report.html``: the same page with the plots embedded (base64 PNG data URIs, nothing loaded from elsewhere),
  which MLflow's artifact viewer shows whole, figures included;
- ``learning_curves.png``: validation loss against iteration of the top trials;
- ``bpc_vs_<param>.png``: final validation bits/char against each searched hyperparameter;
- ``heatmap_hidden_seq.png``: best bits/char per hidden_size x seq_length (when both are searched);
- ``lr_schedules.png``: the learning rates PBT found (when some trial's rate changed);

and logs the same files under ``report/`` on the sweep's parent MLflow run (through ``pipeline.tracking``).
A read-only consumer of ``trials.parquet``, ``history.parquet`` and the MLflow runs: it works on a sweep that
is still running (what finished so far), and without MLflow (a warning, the files are still written).
Imports no Ray; matplotlib and Optuna are imported when a report is drawn.

| module | holds |
| --- | --- |
| ``data`` | reading the tables and the stored sweep file (searched options as ``config.Domain``), labels |
| ``importance`` | PED-ANOVA over the ranked trials, through an in-memory Optuna study |
| ``plots`` | the PNGs, one function per plot and per thing that varies inside one |
| ``markdown`` | report.md, one function per section |
| ``html`` | report.html: report.md converted (our own Markdown only), the plots embedded |
| ``write`` | the report folder, the MLflow upload and the CLI |
"""
from .data import SWEEP_YAML_KEY, ReportError, SweepResults, fmt_value, load_results, short_config
from .importance import Importance, Importances, importance
from .html import render_html
from .markdown import best_train_block, render_markdown
from .plots import UNITS, plot_bpc_vs, plot_files, plot_heatmap, plot_learning_curves, plot_lr_schedules
from .write import HTML_FILE, REPORT_DIR, REPORT_FILE, main, resolve_tracking_uri, warm_up, write_report

__all__ = [
    "HTML_FILE", "REPORT_DIR", "REPORT_FILE", "SWEEP_YAML_KEY", "UNITS", "Importance", "Importances",
    "ReportError", "SweepResults", "best_train_block", "fmt_value", "importance", "load_results", "main",
    "plot_bpc_vs", "plot_files", "plot_heatmap", "plot_learning_curves", "plot_lr_schedules", "render_html",
    "render_markdown", "resolve_tracking_uri", "short_config", "warm_up", "write_report",
]
