"""pipeline.report and pipeline.sample on synthetic sweeps: Parquet tables written with ResultsTable and a real
local MLflow store (sqlite) holding a real rnncore checkpoint; no Ray."""
from __future__ import annotations

import base64
import html
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pandas as pd
import pytest
import yaml

from pipeline.report import ReportError, load_results, write_report
from pipeline.sample import SampleError, sample_trial
from pipeline.sample import main as sample_main
from rnncore.config import FIELD_NAMES
from fixtures_report import (
    write_small,
    PRIME,
    SMALL_BASE,
    SMALL_TRAIN,
    build_trials,
    small_specs,
    sweep_yaml,
    write_realistic,
    write_sweep,
)

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The 6-trial sweep with MLflow runs (t0002 stopped, t0004 diverged, t0003 best), reported once."""
    root = tmp_path_factory.mktemp("small")
    small = write_small(root)
    report = write_report(small["out"])
    return {"root": root, "uri": small["uri"], "out": small["out"], "parent": small["parent"], "report": report,
            "md": (report / "report.md").read_text(encoding="utf-8")}


def _section(md: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert m, f"no section {title!r} in report.md"
    return m.group(1)


def _table_rows(section: str) -> tuple[list[str], list[list[str]]]:
    lines = [l for l in section.splitlines() if l.startswith("|")]
    cells = [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines]
    return cells[0], cells[2:]


def _assert_png(path: Path) -> None:
    assert path.exists(), f"{path.name} missing"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 10_000, f"{path.name} is suspiciously small"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600
    assert img[..., :3].std() > 0.05, f"{path.name} looks blank"


def _report_of(out: Path, text: str, specs: list[dict[str, Any]], base: dict[str, Any], pngs: tuple[str, ...]) -> str:
    """Write a results folder of `specs`, its report (not logged), check the named plots; the report's Markdown."""
    write_sweep(out, text, *build_trials(specs, base=base))
    report = write_report(out, log_to_mlflow=False)
    for name in pngs:
        _assert_png(report / name)
    return (report / "report.md").read_text()


def _run(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# -------------------------------------------------------------------------------------------- the report


def test_plots_are_valid_pngs(small):
    names = ["learning_curves.png", "bpc_vs_hidden_size.png", "bpc_vs_learning_rate.png"]
    for name in names:
        _assert_png(small["report"] / name)
    # hidden_size and seq_length are not both searched here: no heatmap
    assert not (small["report"] / "heatmap_hidden_seq.png").exists()
    assert small["report"] == small["out"] / "report"


def test_counts_by_status(small):
    head, rows = _table_rows(_section(small["md"], "Trials by status"))
    counts = {r[0]: int(r[1]) for r in rows}
    assert counts == {"finished": 4, "stopped": 1, "diverged": 1, "**total**": 6}


def test_leaderboard_matches_pandas(small):
    head, rows = _table_rows(_section(small["md"], "Leaderboard"))
    df = pd.read_parquet(small["out"] / "trials.parquet")
    ranked = df[df["status"].isin(["finished", "stopped"]) & df["val_loss"].notna()].sort_values("val_loss")
    assert len(rows) == len(ranked) == 5  # the diverged trial is left out
    col = {h: i for i, h in enumerate(head)}
    for needed in ("trial", "status", "hidden_size", "learning_rate", "val_loss (nats/char)", "val bits/char",
                   "chars/s", "MLflow run id"):
        assert needed in col
    for (_, want), got in zip(ranked.iterrows(), rows):
        assert got[col["trial"]] == want["trial_id"]
        assert got[col["status"]] == want["status"]
        assert int(got[col["hidden_size"]]) == want["hidden_size"]
        assert float(got[col["learning_rate"]]) == pytest.approx(want["learning_rate"], rel=1e-3)
        assert float(got[col["val_loss (nats/char)"]]) == pytest.approx(want["val_loss"], abs=5e-5)
        assert float(got[col["val bits/char"]]) == pytest.approx(want["val_loss"] / math.log(2), abs=5e-5)
        assert float(got[col["chars/s"]].replace(",", "")) == pytest.approx(want["mean_chars_per_sec"], abs=0.5)
        assert got[col["MLflow run id"]] == want["mlflow_run_id"]
    assert rows[0][col["trial"]] == "t0003"


def test_best_block_parses_and_matches_the_best_row(small):
    section = _section(small["md"], "Best configuration")
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    train = yaml.safe_load(block)["train"]
    assert list(train) == list(FIELD_NAMES)  # every engine option, in the engine's order
    df = pd.read_parquet(small["out"] / "trials.parquet").set_index("trial_id")
    best = df.loc["t0003"]
    for name, value in train.items():
        want = best["target_iterations"] if name == "iterations" else best[name]
        assert value == (pytest.approx(want) if isinstance(value, float) else want), name
        assert type(value) is type(want.item() if hasattr(want, "item") else want), name
    # the final sample of the best trial follows
    assert best["sample"].strip() in small["md"]
    assert "t0003" in section


def test_importance_table_states_its_method(small):
    import optuna

    section = _section(small["md"], "Hyperparameter importance")
    # the method, the library that computed it and the trials it rests on (5 ranked: the diverged one is out)
    assert f"Method: PED-ANOVA (optuna {optuna.__version__} `PedAnovaImportanceEvaluator`) on 5 ranked trials" \
        in section
    assert "the top 3 of them by val_loss" in section
    head, rows = _table_rows(section)
    assert head[:5] == ["hyperparameter", "search", "distribution", "PED-ANOVA score", "share"]
    by_name = {r[0]: r for r in rows}
    assert set(by_name) == {"hidden_size", "learning_rate"}
    # each option as the study saw it: the grid as categories, the loguniform range on a log scale
    assert by_name["hidden_size"][1:3] == ["grid_search", "categorical [16, 32]"]
    assert by_name["learning_rate"][1:3] == ["loguniform", "float in [0.003, 0.3], log scale"]
    # the ranked trials are in learning-rate order (0.055, 0.021, 0.012 on top; 0.0078, 0.0041 below) while
    # both sizes are among the top three: learning_rate drives the metric and ranks first
    assert rows[0][0] == "learning_rate"
    assert float(rows[0][3]) > float(rows[1][3]) >= 0
    shares = [int(r[4].rstrip("%")) for r in rows]
    assert all(re.fullmatch(r"\d+%", r[4]) for r in rows) and abs(sum(shares) - 100) <= 1


def test_sweep_file_and_plots_listed(small):
    stored = re.search(r"```yaml\n(.*?)```", _section(small["md"], "Sweep file"), re.S).group(1)
    assert yaml.safe_load(stored) == yaml.safe_load(load_results(small["out"]).sweep_text)  # the file as run
    assert yaml.safe_load(stored)["train"]["learning_rate"] == {"loguniform": [0.003, 0.3]}
    listed = re.findall(r"^- `([^`]+)`", _section(small["md"], "Plots"), re.M)
    assert listed == ["learning_curves.png", "bpc_vs_hidden_size.png", "bpc_vs_learning_rate.png"]
    assert sorted(listed) == sorted(p.name for p in small["report"].glob("*.png"))  # each listed plot exists


def test_artifacts_on_the_parent_run(small):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=small["uri"])
    logged = {os.path.basename(f.path) for f in client.list_artifacts(small["parent"], "report")}
    assert {"report.md", "report.html", "learning_curves.png", "bpc_vs_hidden_size.png",
            "bpc_vs_learning_rate.png"} <= logged
    # every file, nothing else
    assert logged == {"report.md", "report.html", *(p.name for p in small["report"].glob("*.png"))}
    assert f"parent run `{small['parent']}`" in small["md"]
    # the logged report.md is the one written to the folder
    got = client.download_artifacts(small["parent"], "report/report.md", str(small["root"] / "downloaded"))
    assert Path(got).read_text(encoding="utf-8") == small["md"]
    for rid in pd.read_parquet(small["out"] / "trials.parquet")["mlflow_run_id"]:  # nothing on a child run
        assert not client.list_artifacts(rid, "report"), rid


def test_report_html_is_the_whole_report_with_its_plots_inside(small):
    """report.html (what MLflow's artifact viewer shows whole): every heading of report.md, every plot as a data
    URI of the very PNG, nothing loaded from elsewhere, short run ids in the leaderboard."""
    page = (small["report"] / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    outside_code = re.sub(r"^(`{3,})\w*\n.*?^\1$", "", small["md"], flags=re.M | re.S)
    headings = re.findall(r"^(#{1,3}) (.+)$", outside_code, re.M)
    assert len(headings) >= 8
    for hashes, title in headings:
        n = len(hashes)
        assert f"<h{n}>{html.escape(title)}</h{n}>" in page, title
    pngs = sorted(p.name for p in small["report"].glob("*.png"))
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert sorted(alt for alt, _ in embedded) == pngs
    for alt, data in embedded:
        assert base64.b64decode(data) == (small["report"] / alt).read_bytes(), alt
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # no link out, no script
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # the leaderboard: the same rows as report.md's, each MLflow run id shown by its first 8 characters
    board = re.search(r"<h2>Leaderboard.*?</h2>.*?<table>(.*?)</table>", page, re.S).group(1)
    head = re.findall(r"<th[^>]*>(.*?)</th>", board)
    assert re.sub(r"<wbr>", "", head[-1]) == "MLflow run id" and "val_<wbr>loss" in head[-5]
    ids = re.findall(r'<code title="([0-9a-f]{32})">([0-9a-f]+)</code>', board)
    want = list(_table_rows(_section(small["md"], "Leaderboard"))[1])
    assert [full for full, _ in ids] == [r[-1] for r in want] and len(ids) == 5
    assert all(short == full[:8] for full, short in ids)
    tables = "".join(re.findall(r"<table>.*?</table>", page, re.S))
    assert not re.search(r">[0-9a-f]{32}<", tables)  # no table shows a run id whole (the text above them may)


def test_report_html_renders_the_markdown_it_is_given(tmp_path):
    from pipeline.report import render_html

    (tmp_path / "a.png").write_bytes(PNG_MAGIC + b"rest")
    md = ("# Title <x>\n\nline one  \nline `two|three` **bold**\n\n| a_b | n |\n|-----|--:|\n| x | 1 |\n\n"
          "- `a.png`: cap  \n  ![a.png](a.png)\n- ![gone](b.png)\n\n````text\n``` inside\n<tag>\n````\n")
    page = render_html(md, tmp_path)
    assert "<h1>Title &lt;x&gt;</h1>" in page and "<title>Title &lt;x&gt;</title>" in page
    assert "<p>line one<br>\nline <code>two|three</code> <strong>bold</strong></p>" in page
    assert "<th>a_<wbr>b</th><th style=\"text-align:right\">n</th>" in page
    assert "<td>x</td><td style=\"text-align:right\">1</td>" in page
    assert f'<img alt="a.png" src="data:image/png;base64,{base64.b64encode(PNG_MAGIC + b"rest").decode()}">' in page
    assert "<em>[gone: not found]</em>" in page and "b.png\"" not in page
    assert '<pre><code class="language-text">``` inside\n&lt;tag&gt;</code></pre>' in page


def test_unreachable_mlflow_still_writes_the_files(small, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for f in ("trials.parquet", "history.parquet"):
        (out / f).write_bytes((small["out"] / f).read_bytes())
    report = write_report(out, tracking_uri="http://127.0.0.1:9")
    err = capsys.readouterr().err
    assert "warning: MLflow at http://127.0.0.1:9 cannot be used" in err and "not logged" in err
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "MLflow: parent run" not in md  # no run named: nothing was logged
    assert _section(md, "Leaderboard") == _section(small["md"], "Leaderboard")  # the same results otherwise
    _assert_png(report / "learning_curves.png")


def test_no_trials_parquet_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="trials.parquet"):
        write_report(tmp_path)
    r = _run("-m", "pipeline.report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "trials.parquet" in r.stderr


# ---------------------------------------------------------------------------------------- other sweeps


def test_realistic_sweep_draws_the_heatmap(tmp_path):
    out = tmp_path / "realistic"
    write_realistic(out)
    report = write_report(out, log_to_mlflow=False)
    for name in ("learning_curves.png", "bpc_vs_hidden_size.png", "bpc_vs_seq_length.png",
                 "bpc_vs_learning_rate.png", "heatmap_hidden_seq.png"):
        _assert_png(report / name)
    md = (report / "report.md").read_text()
    head, rows = _table_rows(_section(md, "Leaderboard"))
    assert len(rows) == 10
    imp = {r[0]: r for r in _table_rows(_section(md, "Hyperparameter importance"))[1]}
    assert list(imp)[0] == "learning_rate"  # the surface's dominant term comes out on top
    assert set(imp) == {"hidden_size", "seq_length", "learning_rate"}
    df = pd.read_parquet(out / "trials.parquet")
    ranked = int(df["status"].isin(["finished", "stopped"]).sum())
    assert ranked == 16  # 18 trials: the diverged one and the failed one are out
    assert f"on {ranked} ranked trials" in _section(md, "Hyperparameter importance")


def test_one_trial_sweep(tmp_path):
    out = tmp_path / "one"
    train = {"learning_rate": {"loguniform": [0.01, 0.1]}, **SMALL_BASE}
    text = sweep_yaml("one", train, num_samples=1, output=str(out))
    trials, history = build_trials([{"learning_rate": 0.03, "status": "finished", "final": 1.9}], base=SMALL_BASE)
    write_sweep(out, text, trials, history)
    report = write_report(out, log_to_mlflow=False)
    _assert_png(report / "learning_curves.png")
    _assert_png(report / "bpc_vs_learning_rate.png")
    md = (report / "report.md").read_text()
    assert len(_table_rows(_section(md, "Leaderboard"))[1]) == 1
    importance = _section(md, "Hyperparameter importance")
    assert "on 1 ranked trial " in importance and "needs at least 4 ranked trials" in importance
    assert [r[4] for r in _table_rows(importance)[1]] == ["n/a"]
    assert yaml.safe_load(re.search(r"```yaml\n(.*?)```", md, re.S).group(1))["train"]["learning_rate"] == 0.03


def test_sweep_with_only_running_trials(tmp_path):
    out = tmp_path / "running"
    text = sweep_yaml("running", SMALL_TRAIN, num_samples=3, output=str(out))
    specs = [{"hidden_size": 16, "learning_rate": 0.02, "status": "running", "final": 1.9, "stop_at": 750},
             {"hidden_size": 32, "learning_rate": 0.05, "status": "running", "final": 1.8, "stop_at": 500}]
    md = _report_of(out, text, specs, SMALL_BASE, ("learning_curves.png", "bpc_vs_hidden_size.png", "bpc_vs_learning_rate.png"))
    assert "in progress" in md
    counts = {r[0]: r[1] for r in _table_rows(_section(md, "Trials by status"))[1]}
    assert counts["running"] == "2" and counts["not started"] == "4"
    assert "No trial has finished" in _section(md, "Leaderboard")
    assert "None yet" in _section(md, "Best configuration")


def test_failed_and_diverged_only(tmp_path):
    out = tmp_path / "bad"
    text = sweep_yaml("bad", SMALL_TRAIN, num_samples=1, output=str(out))
    specs = [{"hidden_size": 16, "learning_rate": 0.3, "status": "diverged", "stop_at": 500},
             {"hidden_size": 32, "learning_rate": 0.01, "status": "failed"}]
    md = _report_of(out, text, specs, SMALL_BASE, ("learning_curves.png", "bpc_vs_hidden_size.png", "bpc_vs_learning_rate.png"))  # drawn with what there is: the diverged trial's curve, x markers
    counts = {r[0]: r[1] for r in _table_rows(_section(md, "Trials by status"))[1]}
    assert counts == {"diverged": "1", "failed": "1", "**total**": "2"}
    assert "No trial has finished" in _section(md, "Leaderboard")
    assert "None yet" in _section(md, "Best configuration")
    importance = _section(md, "Hyperparameter importance")
    assert "on 0 ranked trials" in importance and "needs at least 4 ranked trials" in importance
    assert {r[0]: r[4] for r in _table_rows(importance)[1]} == {"hidden_size": "n/a", "learning_rate": "n/a"}


def _lr(i: int) -> float:
    return (0.004, 0.009, 0.02, 0.04, 0.08, 0.15)[i % 6]


# case -> (train: searched options, trial specs, the importance note, {option: (share, row note)})
IMPORTANCE_CASES = {
    "one option searched": (
        {"learning_rate": {"loguniform": [0.003, 0.3]}},
        [{"learning_rate": _lr(i), "status": "finished", "final": 2.0 - 0.1 * i} for i in range(6)],
        "", {"learning_rate": ("100%", "")}),
    "the metric is constant": (
        SMALL_TRAIN,
        [{"hidden_size": (16, 32)[i % 2], "learning_rate": _lr(i), "status": "finished", "final": 1.9}
         for i in range(6)],
        "val_loss is the same for every ranked trial", {"hidden_size": ("n/a", "the metric does not vary"),
                                                         "learning_rate": ("n/a", "the metric does not vary")}),
    "one value ranked": (  # every trial of size 32 diverged: among the ranked ones the size does not vary
        SMALL_TRAIN,
        [{"hidden_size": (16, 32)[i % 2], "learning_rate": _lr(i), "status": "finished" if i % 2 == 0 else
          "diverged", "final": 2.0 - 0.1 * i, "stop_at": 500} for i in range(10)],
        "", {"learning_rate": ("100%", ""), "hidden_size": ("n/a", "one value tried")}),
    "three ranked trials": (
        SMALL_TRAIN,
        [{"hidden_size": (16, 32)[i % 2], "learning_rate": _lr(i), "status": "finished", "final": 2.0 - 0.1 * i}
         for i in range(3)],
        "needs at least 4 ranked trials to compare the top ones with the rest, but there are 3",
        {"hidden_size": ("n/a", "too few trials"), "learning_rate": ("n/a", "too few trials")}),
}


@pytest.mark.parametrize("case", list(IMPORTANCE_CASES))
def test_importance_edge_cases(case, tmp_path):
    from pipeline.report import importance

    train, specs, note, want = IMPORTANCE_CASES[case]
    out = tmp_path / "sweep"
    searched = {k: v for k, v in train.items() if isinstance(v, dict)}
    text = sweep_yaml("edge", {**searched, **SMALL_BASE}, num_samples=len(specs), output=str(out))
    write_sweep(out, text, *build_trials(specs, base=SMALL_BASE))
    res = load_results(out)
    imp = importance(res)
    assert imp.method == "PED-ANOVA" and imp.trials == len(res.ranked())
    assert note in imp.note and bool(note) == bool(imp.note)
    md = (write_report(out, log_to_mlflow=False) / "report.md").read_text()
    section = _section(md, "Hyperparameter importance")
    assert f"on {imp.trials} ranked trial" in section and (not note or note in section)
    rows = {r[0]: (r[4], r[5]) for r in _table_rows(section)[1]}
    assert {k: v[0] for k, v in rows.items()} == {k: v[0] for k, v in want.items()}
    for name, (_, row_note) in want.items():
        assert row_note in rows[name][1], (name, rows[name])
    if case == "one option searched":
        assert "the only option that varied" in imp.rows[0].note and imp.rows[0].score > 0


def test_a_sweep_file_that_no_longer_validates_is_still_reported(tmp_path):
    """The corpus moved and one domain breaks a rule: the other domains are read as written, the broken one is
    taken from the table with a note, and the report is complete."""
    out = tmp_path / "stale"
    text = sweep_yaml("stale", SMALL_TRAIN, num_samples=3, output=str(out))
    text = text.replace("data/tinyshakespeare.txt", "gone/corpus.txt").replace("[0.003, 0.3]", "[0.3, 0.003]")
    write_sweep(out, text, *build_trials(small_specs(), base=SMALL_BASE))
    res = load_results(out)
    assert res.searched["hidden_size"].args == (16, 32)
    assert res.searched["learning_rate"].kind == "uniform"  # the range the trials span (more than 5 values)
    assert any(n.startswith("train.learning_rate is not a valid search domain") and "low < high" in n
               for n in res.notes)
    md = (write_report(out, log_to_mlflow=False) / "report.md").read_text()
    assert "Note: train.learning_rate is not a valid search domain" in md
    assert _table_rows(_section(md, "Leaderboard"))[1][0][1] == "t0003"
    assert {r[0] for r in _table_rows(_section(md, "Hyperparameter importance"))[1]} == {"hidden_size",
                                                                                         "learning_rate"}


def test_report_and_sample_import_no_ray():
    code = "import sys, pipeline.report, pipeline.sample; assert 'ray' not in sys.modules, 'ray imported'"
    r = _run("-c", code, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_report_cli(small, tmp_path):
    r = _run("-m", "pipeline.report", str(small["out"]), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"report: {small['report'] / 'report.md'}" in r.stdout
    files = re.search(r"^files:\s+(.*)$", r.stdout, re.M).group(1).split(", ")
    assert files == sorted(p.name for p in small["report"].iterdir() if not p.name.startswith("."))
    assert "warning" not in r.stderr  # --no-mlflow: MLflow is not tried
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_a_trial(small, tmp_path):
    r = _run("-m", "pipeline.sample", str(small["out"]), "--trial", "t0001", "--length", "50", "--prime", PRIME,
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    text = r.stdout[:-1]  # print's newline
    assert text.startswith(PRIME) and len(text) == len(PRIME) + 50
    assert "t0001" in r.stderr
    # the same seed gives the same text (in-process from here on: a CLI start costs seconds)
    again, row = sample_trial(small["out"], "t0001", length=50, prime=PRIME)
    assert again == text and row["trial_id"] == "t0001"
    other, _ = sample_trial(small["out"], "1", length=50, prime=PRIME, seed=1)  # "1" means t0001
    assert other.startswith(PRIME) and other != text


def test_sample_best(small, tmp_path):
    r = _run("-m", "pipeline.sample", str(small["out"]), "--best", "--length", "30", "--prime", PRIME,
             "--seed", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(PRIME)
    assert "t0003" in r.stderr  # the best trial by val_loss
    default, row = sample_trial(small["out"], None, length=30, prime=PRIME, seed=5)  # no --trial: the best
    assert row["trial_id"] == "t0003" and default + "\n" == r.stdout


def test_sample_unknown_trial_lists_the_ids(small, tmp_path):
    r = _run("-m", "pipeline.sample", str(small["out"]), "--trial", "t0099", cwd=tmp_path)
    assert r.returncode == 2
    assert "t0099" in r.stderr
    for i in range(6):
        assert f"t{i:04d}" in r.stderr
    assert "Traceback" not in r.stderr


def test_sample_trial_without_checkpoint(small, capsys):
    assert sample_main([str(small["out"]), "--trial", "t0004", "--length", "10"]) == 2
    err = capsys.readouterr().err
    assert "t0004" in err and "diverged" in err and "checkpoint" in err


def test_sample_folder_without_trials(tmp_path, capsys):
    assert sample_main([str(tmp_path), "--best"]) == 2
    assert "trials.parquet" in capsys.readouterr().err


def test_sample_prime_outside_the_vocabulary(small, capsys):
    assert sample_main([str(small["out"]), "--trial", "t0001", "--prime", "€"]) == 2
    assert "never saw" in capsys.readouterr().err


def test_sample_errors_are_sample_errors(small):
    with pytest.raises(SampleError, match="valid trial ids: t0000, t0001"):
        sample_trial(small["out"], "t0042")


def test_load_results_reads_metric_and_searched(small):
    res = load_results(small["out"])
    assert res.metric == "val_loss" and res.mode == "min"
    assert [(k, v.kind, v.args) for k, v in res.searched.items()] == [("hidden_size", "grid_search", (16, 32)),
                                                                       ("learning_rate", "loguniform", (0.003, 0.3))]
    assert res.planned == 6
    assert res.best()["trial_id"] == "t0003"


def test_ranges_text_options_and_another_metric(tmp_path):
    """lograndint/randint sizes (binned in the heatmap), a text option searched, metric val_bpc."""
    out = tmp_path / "ranges"
    base = {k: v for k, v in SMALL_BASE.items() if k not in ("dtype", "seq_length")}
    train = {"hidden_size": {"lograndint": [16, 513]}, "seq_length": {"randint": [8, 65]},
             "dtype": {"choice": ["float32", "float64"]}, **base}
    text = sweep_yaml("ranges", train, num_samples=12, output=str(out), metric="val_bpc")
    specs = [{"hidden_size": 16 * 2 ** (i % 6), "seq_length": 8 + 5 * i, "dtype": ("float32", "float64")[i % 2],
              "status": "stopped" if i % 5 == 4 else "finished", "final": 2.2 - 0.05 * (i % 6) + 0.01 * i}
             for i in range(12)]
    md = _report_of(out, text, specs, base, ("bpc_vs_hidden_size.png", "bpc_vs_seq_length.png", "bpc_vs_dtype.png", "heatmap_hidden_seq.png"))
    head, rows = _table_rows(_section(md, "Leaderboard"))
    df = pd.read_parquet(out / "trials.parquet")
    want = df[df["status"].isin(["finished", "stopped"])].sort_values(["val_bpc", "trial_id"])["trial_id"]
    assert [r[head.index("trial")] for r in rows] == list(want[:10])
    imp = {r[0]: r for r in _table_rows(_section(md, "Hyperparameter importance"))[1]}
    assert imp["dtype"][2] == "categorical [float32, float64]"
    assert imp["hidden_size"][2] == "int in [16, 512], log scale"  # lograndint's high is exclusive
    assert imp["seq_length"][2] == "int in [8, 64]"
    assert "on 12 ranked trials" in _section(md, "Hyperparameter importance")


def test_model_family_options_are_plotted_labelled_and_in_the_best_block(tmp_path):
    """cell, num_layers and dropout searched, the optimizer and schedule fixed: each searched one gets its plot,
    its importance row and its short label; the best block holds every option."""
    from pipeline.report import short_config

    out = tmp_path / "family"
    base = {**SMALL_BASE, "optimizer": "adam", "learning_rate": 0.002, "lr_schedule": "cosine", "warmup": 100}
    train = {"cell": {"choice": ["rnn", "lstm", "gru"]}, "num_layers": {"choice": [1, 2]},
             "dropout": {"uniform": [0.0, 0.5]}, **base}
    text = sweep_yaml("family", train, num_samples=9, output=str(out))
    specs = [{"cell": ("rnn", "lstm", "gru")[i % 3], "num_layers": 1 + i % 2, "dropout": 0.05 * i,
              "status": "finished", "final": 1.9 - (0.0, 0.2, 0.1)[i % 3] - 0.05 * (i % 2) + 0.001 * i}
             for i in range(9)]  # best: t0001, an lstm of 2 layers
    md = _report_of(out, text, specs, base, ("bpc_vs_cell.png", "bpc_vs_num_layers.png", "bpc_vs_dropout.png"))
    imp = [r[0] for r in _table_rows(_section(md, "Hyperparameter importance"))[1]]
    assert set(imp) == {"cell", "num_layers", "dropout"}
    assert imp[0] == "cell"  # the top three trials are all lstm: the cell moves the loss most
    train_block = yaml.safe_load(re.search(r"```yaml\n(.*?)```", _section(md, "Best configuration"), re.S).group(1))
    best = load_results(out).best()
    assert train_block["train"]["cell"] == best["cell"] == "lstm" and train_block["train"]["num_layers"] == 2
    for name, value in (("optimizer", "adam"), ("lr_schedule", "cosine"), ("warmup", 100)):
        assert train_block["train"][name] == value
    assert short_config(best, load_results(out)) == f"lstm L=2 drop={best['dropout']:g}"


def test_run_names_and_report_labels_share_one_table():
    from pipeline.vocab import SHORT_NAMES, run_name, short
    from pipeline.report import UNITS

    assert set(SHORT_NAMES) <= set(FIELD_NAMES) and set(UNITS) == set(FIELD_NAMES)  # every option has a plot label
    config = {"cell": "lstm", "num_layers": 2, "hidden_size": 256, "dropout": 0.25, "optimizer": "adam",
              "learning_rate": 0.0021, "lr_schedule": "cosine", "warmup": 200, "clip": 1.0}
    assert run_name(config) == "lstm-L2-h256-drop0.25-adam-lr0.0021-cosine-warm200-clip1"
    assert [short(k, str(v), "=") for k, v in config.items()][:4] == ["lstm", "L=2", "h=256", "drop=0.25"]
    assert run_name({}) == "trial"
