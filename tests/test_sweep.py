"""The sweep driver end to end, through its CLI: `python -m pipeline.sweep FILE` in a temporary working directory.

One small ASHA sweep (4 trials) is run once per module and checked from every side: exit code, console
output, the Parquet tables, the MLflow runs (read back from the temporary sqlite store) and the logged
checkpoints. Separate small sweeps check reproducibility (FIFO, run twice) and divergence. Bad sweep files
must exit 2 with a message naming the key and leave the working directory untouched.

Every run gets a clean environment (no MLFLOW_* / RAY_*; see conftest.py), so MLflow writes
`sqlite:///<tmp>/mlflow.db` and `<tmp>/mlruns`, and nothing lands in the repository.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import edit, read_history, read_trials, write_sweep

LN2 = math.log(2.0)
CORPUS_CHARS = 20_000
SWEEP_TAG = "rnnsweep.sweep_id"
PARENT_TAG = "mlflow.parentRunId"

# The end-to-end sweep: 2 grid points x num_samples 2 = 4 trials; ASHA halves at iterations 50 and 100.
# The learning rates drawn with seed 0 (about 0.087, 0.025, 0.012, 0.011) make t0002 and t0003 clearly worse
# than t0000 and t0001 at iteration 50; as they only start once t0000 or t0001 has finished (2 at once), ASHA
# has that trial's iteration-50 result to compare with and stops them, whatever the timing.
E2E: dict[str, Any] = {
    "name": "e2e",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {
        "hidden_size": {"grid_search": [16, 32]},
        "learning_rate": {"loguniform": [0.01, 0.3]},
        "seq_length": 16,
        "batch_size": 4,
        "dtype": "float32",
        "iterations": 200,
        "eval_every": 50,
        "sample_every": 100,
        "sample_length": 50,
    },
    "num_samples": 2,
    "seed": 0,
    "metric": "val_loss",
    "mode": "min",
    "scheduler": {"type": "asha", "grace_period": 50, "reduction_factor": 2},
    "max_concurrent_trials": 2,
    "output": "out",
}

E2E_MODEL = "e2e-best"  # the e2e sweep registers its best model under this name (mlflow.register_model)

# A FIFO sweep for the reproducibility check: 2 trials with drawn learning rates.
FIFO: dict[str, Any] = {
    **E2E,
    "name": "repro",
    "train": {**E2E["train"], "hidden_size": 16, "iterations": 100, "sample_length": 20},
    "seed": 7,
    "scheduler": {"type": "fifo"},
}

# learning_rate 1e38 in float32 overflows the weights in the first updates: the loss is non-finite by
# iteration 2 (checked with rnncore directly). Its grid partner trains normally.
DIVERGE_LR = 1.0e38
DIVERGE: dict[str, Any] = {
    **FIFO,
    "name": "diverge",
    "train": {**FIFO["train"], "learning_rate": {"grid_search": [0.1, DIVERGE_LR]}},
    "num_samples": 1,
}

TRIALS_TYPES = {
    "trial_id": pa.string(), "status": pa.string(), "mlflow_run_id": pa.string(),
    "hidden_size": pa.int64(), "seq_length": pa.int64(), "batch_size": pa.int64(), "iterations": pa.int64(),
    "target_iterations": pa.int64(),
    "learning_rate": pa.float64(), "val_loss": pa.float64(), "val_bpc": pa.float64(),
    "min_val_loss": pa.float64(), "mean_chars_per_sec": pa.float64(), "wall_s": pa.float64(),
    "train_loss": pa.float64(), "started_at": pa.timestamp("us", tz="UTC"), "ended_at": pa.timestamp("us", tz="UTC"),
    "node": pa.string(), "node_ip": pa.string(), "sample": pa.string(), "error": pa.string(),
}
HISTORY_COLUMNS = ["trial_id", "iteration", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s", "lr",
                   "exploited_from"]
MLFLOW_METRICS = ("train_loss", "val_loss", "val_bpc", "chars_per_sec")


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class SweepRun:
    cwd: Path
    sweep_file: Path
    proc: subprocess.CompletedProcess

    @property
    def output(self) -> Path:
        return self.cwd / "out"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"

    def trials(self) -> pd.DataFrame:
        return read_trials(self.output)

    def history(self) -> pd.DataFrame:
        return read_history(self.output)

    def mlflow(self) -> "Mlflow":
        return Mlflow.read(self.uri, experiment=yaml.safe_load(self.sweep_file.read_text())["name"])


@dataclass
class Mlflow:
    client: Any
    experiment: Any
    parents: list
    children: dict[str, Any]  # trial_id tag -> Run
    runs: list

    @classmethod
    def read(cls, uri: str, experiment: str) -> "Mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        children = [r for r in runs if PARENT_TAG in r.data.tags]
        by_trial = {r.data.tags.get("trial_id"): r for r in children}
        assert len(by_trial) == len(children), "two child runs share a trial_id tag"
        return cls(client=client, experiment=exp, parents=parents, children=by_trial, runs=runs)


def run_sweep(run_module, folder: Path, sweep: dict[str, Any], corpus: str, *args: str) -> SweepRun:
    sweep_file = write_sweep(folder, sweep, corpus)
    proc = run_module("pipeline.sweep", sweep_file.name, *args, cwd=folder)
    return SweepRun(cwd=folder, sweep_file=sweep_file, proc=proc)


def expected_reports(row: pd.Series, eval_every: int) -> list[int]:
    """The iterations a trial reported at: every eval_every up to where it ended (sample_every is a multiple)."""
    return list(range(eval_every, int(row["iterations"]) + 1, eval_every))


# ------------------------------------------------------------------------------------ the e2e sweep


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, run_module, corpus_text, proc_text) -> SweepRun:
    sweep = {**E2E, "mlflow": {"experiment": E2E["name"], "register_model": E2E_MODEL}}
    run = run_sweep(run_module, tmp_path_factory.mktemp("e2e"), sweep, corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    return run


@pytest.fixture(scope="module")
def e2e_mlflow(e2e) -> Mlflow:
    return e2e.mlflow()


@pytest.mark.slow
def test_trials_table_has_one_typed_row_per_trial(e2e: SweepRun) -> None:
    schema = pq.read_schema(e2e.output / "trials.parquet")
    for name, arrow_type in TRIALS_TYPES.items():
        assert schema.field(name).type == arrow_type, name
    assert schema.metadata[b"rnnsweep.sweep_yaml"].decode() == e2e.sweep_file.read_text()

    t = e2e.trials()
    assert len(t) == 4 == len(set(t["trial_id"]))
    assert list(t["trial_id"]) == ["t0000", "t0001", "t0002", "t0003"]
    for name in ("trial_id", "status", "mlflow_run_id", "node", "node_ip", "sample"):
        assert pd.api.types.is_string_dtype(t[name]), name
    for name in ("hidden_size", "seq_length", "batch_size", "iterations", "target_iterations"):
        assert t[name].dtype == "int64", name
    for name in ("learning_rate", "val_loss", "val_bpc", "min_val_loss", "mean_chars_per_sec", "wall_s"):
        assert t[name].dtype == "float64", name
    for name in ("started_at", "ended_at"):
        assert isinstance(t[name].dtype, pd.DatetimeTZDtype) and str(t[name].dt.tz) == "UTC", name

    assert set(t["status"]) <= {"finished", "stopped"}
    assert sorted(t["hidden_size"]) == [16, 16, 32, 32]
    assert t["learning_rate"].between(0.01, 0.3).all()
    assert t["learning_rate"].nunique() == 4
    assert (t["seq_length"] == 16).all() and (t["batch_size"] == 4).all() and (t["target_iterations"] == 200).all()
    assert t[["val_loss", "val_bpc", "min_val_loss", "train_loss"]].notna().all().all()
    assert (t["val_bpc"] == t["val_loss"] / LN2).all()
    assert (t["min_val_loss"] <= t["val_loss"]).all()
    assert (t["mean_chars_per_sec"] > 0).all() and (t["wall_s"] > 0).all()
    assert t["mlflow_run_id"].str.fullmatch(r"[0-9a-f]{32}").all() and t["mlflow_run_id"].nunique() == 4
    assert t["node"].str.len().gt(0).all()
    assert (t["node_ip"] == "127.0.0.1").all()  # a local Ray on loopback (see FIELD-NOTES.md)
    # each trial's start and end, in the sweep's lifetime; the trials started 2 at a time: t0000 and t0001 together
    # (whichever trial's worker is ready first starts first), then the others in order as slots freed
    made = pd.Timestamp((e2e.output / "trials.parquet").stat().st_mtime, unit="s", tz="UTC")
    assert (t["started_at"] < t["ended_at"]).all() and (t["ended_at"] <= made).all()
    assert (made - t["started_at"] < pd.Timedelta(minutes=10)).all()
    assert t.loc[2:, "started_at"].min() > t.loc[:1, "started_at"].max()
    assert t.loc[2:, "started_at"].is_monotonic_increasing
    assert t.loc[2:, "started_at"].min() >= t.loc[:1, "ended_at"].min()  # t0002 waited for a free slot
    assert t["error"].isna().all()
    finished = t[t["status"] == "finished"]
    assert (finished["iterations"] == 200).all()
    assert (finished["sample"].str.len() == 50).all()


@pytest.mark.slow
def test_asha_stopped_the_weak_trials(e2e: SweepRun) -> None:
    t = e2e.trials().set_index("trial_id")
    stopped = t[t["status"] == "stopped"]
    assert len(stopped) >= 1
    assert (stopped["iterations"] < stopped["target_iterations"]).all()
    assert {"t0002", "t0003"} <= set(stopped.index)  # see E2E: they cannot beat a finished trial at iteration 50
    assert t.loc["t0000", "status"] == "finished"  # the best at every rung
    best = t["val_loss"].idxmin()
    assert best == "t0000"


@pytest.mark.slow
def test_history_table_has_one_row_per_report(e2e: SweepRun) -> None:
    schema = pq.read_schema(e2e.output / "history.parquet")
    assert schema.names == HISTORY_COLUMNS
    assert schema.field("trial_id").type == pa.string() and schema.field("iteration").type == pa.int64()
    for name in HISTORY_COLUMNS[2:-1]:
        assert schema.field(name).type == pa.float64(), name
    assert schema.field("exploited_from").type == pa.string()

    h, t = e2e.history(), e2e.trials()
    assert set(h["trial_id"]) == set(t["trial_id"])
    assert (h["val_bpc"] == h["val_loss"] / LN2).all()
    for _, row in t.iterrows():
        rows = h[h["trial_id"] == row["trial_id"]]
        assert list(rows["iteration"]) == expected_reports(row, 50), row["trial_id"]
        if row["status"] == "finished":
            assert len(rows) == 200 // 50
        else:
            assert len(rows) < 200 // 50
        assert rows["val_loss"].iloc[-1] == row["val_loss"]
        assert rows["val_loss"].min() == row["min_val_loss"]
        assert rows["chars_per_sec"].mean() == pytest.approx(row["mean_chars_per_sec"], rel=1e-12)
        assert rows["elapsed_s"].is_monotonic_increasing
        assert (rows["chars_per_sec"] > 0).all()
        assert (rows["lr"] == row["learning_rate"]).all() and row["final_lr"] == row["learning_rate"]
        assert rows["exploited_from"].isna().all() and row["exploits"] == 0


@pytest.mark.slow
def test_console_output_is_a_concise_summary(e2e: SweepRun) -> None:
    out, err = e2e.proc.stdout, e2e.proc.stderr
    lines = (out + err).splitlines()
    assert len(lines) < 60, out + err
    assert "leaderboard" in out
    board = out[out.index("leaderboard"):]
    for tid in ("t0000", "t0001", "t0002", "t0003"):
        assert tid in board
    assert str(e2e.output.resolve() / "trials.parquet") in out
    assert str(e2e.output.resolve() / "history.parquet") in out
    assert f"mlflow ui --backend-store-uri sqlite:///{(e2e.cwd / 'mlflow.db').resolve()}" in out
    for noise in ("Trial status", "Trial name", "Current time", "Logical resource usage", "╭", "│", "+---",
                  "Traceback", "WARNING"):
        assert noise not in out + err, noise


@pytest.mark.slow
def test_mlflow_has_one_parent_run_with_the_sweep_file(e2e: SweepRun, e2e_mlflow: Mlflow, tmp_path: Path) -> None:
    m = e2e_mlflow
    assert len(m.parents) == 1
    parent = m.parents[0]
    assert parent.data.tags.get(SWEEP_TAG)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_trials"] == "4"
    assert parent.data.tags["best_trial"] == "t0000"
    names = {a.path for a in m.client.list_artifacts(parent.info.run_id)}
    assert "sweep.yaml" in names
    local = m.client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path))
    assert Path(local).read_text() == e2e.sweep_file.read_text()
    assert len(m.runs) == 1 + 4


@pytest.mark.slow
def test_mlflow_has_one_child_run_per_trial(e2e: SweepRun, e2e_mlflow: Mlflow) -> None:
    m, t = e2e_mlflow, e2e.trials()
    parent = m.parents[0]
    assert sorted(m.children) == list(t["trial_id"])
    assert all(r.info.status != "RUNNING" for r in m.runs)
    for _, row in t.iterrows():
        run = m.children[row["trial_id"]]
        assert run.info.run_id == row["mlflow_run_id"]
        assert run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.data.tags[SWEEP_TAG] == parent.data.tags[SWEEP_TAG]
        assert run.info.run_name == f"{row['trial_id']}-h{row['hidden_size']}-lr{row['learning_rate']:.2g}"
        assert re.fullmatch(r"t\d{4}-h(16|32)-lr0\.\d+", run.info.run_name)
        p = run.data.params
        assert int(p["hidden_size"]) == row["hidden_size"] and int(p["seq_length"]) == 16
        assert int(p["batch_size"]) == 4 and float(p["learning_rate"]) == row["learning_rate"]
        # a trial ASHA stopped ended normally: FINISHED, its status and the one cause tagged
        assert run.info.status == "FINISHED" and run.data.tags["rnnsweep.status"] == row["status"]
        if row["status"] == "stopped":
            assert run.data.tags["stop_reason"] == f"asha at iteration {row['iterations']} of 200"
        else:
            assert "stop_reason" not in run.data.tags
        assert "status" not in run.data.tags  # one status tag, not two


@pytest.mark.slow
def test_mlflow_parent_has_the_best_so_far_series_and_the_search_space(e2e: SweepRun, e2e_mlflow: Mlflow) -> None:
    m, t = e2e_mlflow, e2e.trials().set_index("trial_id")
    parent = m.parents[0]
    assert set(parent.data.metrics) == {"best_val_loss", "best_val_bpc"}  # one meaning each, no best_best_*
    assert parent.data.tags["best_trial"] == "t0000" and parent.data.tags["best_run_id"] == t.loc["t0000",
                                                                                                  "mlflow_run_id"]
    assert parent.data.metrics["best_val_loss"] == t.loc["t0000", "val_loss"]
    assert parent.data.metrics["best_val_bpc"] == t.loc["t0000", "val_bpc"]
    # best-so-far by trial-completion order: a point as each trial ended (all 4 are ranked), never rising
    ended = t.sort_values("ended_at")
    want = [ended["val_loss"].iloc[:k].min() for k in range(1, 5)]
    series = sorted(m.client.get_metric_history(parent.info.run_id, "best_val_loss"), key=lambda x: x.step)
    assert [(x.step, x.value) for x in series] == list(zip(range(1, 5), want))
    bpc = sorted(m.client.get_metric_history(parent.info.run_id, "best_val_bpc"), key=lambda x: x.step)
    assert [x.value for x in bpc] == [v / LN2 for v in want]
    # the search space, one param per searched option, as the Ray Tune call it makes
    p = parent.data.params
    assert p["space.hidden_size"] == "grid_search([16, 32])"
    assert p["space.learning_rate"] == "loguniform(0.01, 0.3)"
    assert not {k for k in p if k.startswith("space.")} - {"space.hidden_size", "space.learning_rate"}


@pytest.mark.slow
def test_every_run_logs_the_corpus_as_its_dataset(e2e: SweepRun, e2e_mlflow: Mlflow) -> None:
    import hashlib
    import json

    text = (e2e.cwd / "corpus.txt").read_bytes()
    sha = hashlib.sha256(text).hexdigest()
    chars = len(text.decode("utf-8"))
    assert e2e_mlflow.parents[0].data.params["corpus_sha256"] == sha
    for run in e2e_mlflow.runs:  # the parent and the 4 children
        [inp] = run.inputs.dataset_inputs
        ds = inp.dataset
        assert (ds.name, ds.digest, ds.source_type) == ("corpus.txt", sha[:10], "local")
        assert json.loads(ds.source) == {"uri": str((e2e.cwd / "corpus.txt").resolve())}
        profile = json.loads(ds.profile)
        assert profile["chars"] == chars == profile["train_chars"] + profile["val_chars"]
        assert profile["val_chars"] == pytest.approx(0.1 * chars, abs=1)
        assert profile["vocab_size"] == len(set(text.decode("utf-8")))
        assert {(tag.key, tag.value) for tag in inp.tags} == {("mlflow.data.context", "training")}


@pytest.mark.slow
def test_mlflow_metric_histories_follow_the_reports(e2e: SweepRun, e2e_mlflow: Mlflow) -> None:
    h = e2e.history()
    for tid, run in e2e_mlflow.children.items():
        rows = h[h["trial_id"] == tid]
        for key in MLFLOW_METRICS:
            hist = sorted(e2e_mlflow.client.get_metric_history(run.info.run_id, key), key=lambda x: x.step)
            assert [x.step for x in hist] == list(rows["iteration"]), (tid, key)
            assert [x.value for x in hist] == pytest.approx(list(rows[key]), rel=1e-12), (tid, key)


@pytest.mark.slow
def test_mlflow_artifacts_hold_samples_and_a_usable_checkpoint(e2e: SweepRun, e2e_mlflow: Mlflow, tmp_path: Path,
                                                               run_module, proc_text) -> None:
    from rnncore import checkpoint

    m, t = e2e_mlflow, e2e.trials()
    sampled = set()
    for _, row in t.iterrows():
        run_id = row["mlflow_run_id"]
        assert {a.path for a in m.client.list_artifacts(run_id, "model")} == {"model/checkpoint.npz"}
        samples = {a.path for a in m.client.list_artifacts(run_id, "samples")}
        want = {f"samples/iter_{it:06d}.txt" for it in expected_reports(row, 50) if it % 100 == 0}
        assert samples == want, row["trial_id"]
        if row["status"] == "finished":
            assert {"samples/iter_000100.txt", "samples/iter_000200.txt"} <= samples
            last = m.client.download_artifacts(run_id, "samples/iter_000200.txt", str(tmp_path / row["trial_id"]))
            assert Path(last).read_text() == row["sample"]

        local = Path(m.client.download_artifacts(run_id, "model/checkpoint.npz", str(tmp_path / row["trial_id"])))
        cp = checkpoint.load(local)
        assert cp.state.iteration == row["iterations"]
        assert cp.cfg.hidden_size == row["hidden_size"] and cp.cfg.learning_rate == row["learning_rate"]
        if row["status"] not in sampled:  # the sampling CLI on one finished and one stopped trial
            sampled.add(row["status"])
            proc = run_module("rnncore.sample", local, "--length", "20", cwd=tmp_path)
            assert proc.returncode == 0, proc_text(proc)
            assert len(proc.stdout) == 20 + 1  # 20 sampled characters (newlines among them) and print's newline
    assert sampled == {"finished", "stopped"}


def _best_row(e2e: SweepRun) -> pd.Series:
    t = e2e.trials()
    return t[t["status"].isin(["finished", "stopped"])].sort_values("val_loss").iloc[0]


@pytest.mark.slow
def test_the_best_model_is_registered_and_predicts_what_pipeline_sample_gives(e2e: SweepRun, e2e_mlflow: Mlflow,
                                                                            run_module, cli_env, proc_text) -> None:
    """The issue's check: mlflow.pyfunc.load_model(...).predict(["ROMEO:"], params={"length": 50, "seed": 1}) is
    `python -m pipeline.sample OUT --best --prime "ROMEO:" --length 50 --seed 1`."""
    uri = f"models:/{E2E_MODEL}/1"
    assert f"model:   {uri}" in e2e.proc.stdout
    best = _best_row(e2e)
    version = e2e_mlflow.client.get_model_version(E2E_MODEL, "1")
    assert version.run_id == best["mlflow_run_id"]  # the model was logged on the best trial's run
    assert e2e_mlflow.parents[0].data.tags["best_model"] == uri
    [model] = e2e_mlflow.client.search_logged_models(experiment_ids=[e2e_mlflow.experiment.experiment_id])
    assert model.tags["trial_id"] == best["trial_id"] and model.params["hidden_size"] == str(best["hidden_size"])
    assert {m.key: m.value for m in model.metrics}["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)

    cli = run_module("pipeline.sample", e2e.output, "--best", "--prime", "ROMEO:", "--length", "50", "--seed", "1",
                     cwd=e2e.cwd)
    assert cli.returncode == 0, proc_text(cli)
    code = (f"import json, mlflow; mlflow.set_tracking_uri({e2e.uri!r}); m = mlflow.pyfunc.load_model({uri!r}); "
            "print(json.dumps(m.predict(['ROMEO:'], params={'length': 50, 'seed': 1})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=e2e.cwd, env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, proc_text(r)
    [text] = json.loads(r.stdout.strip().splitlines()[-1])
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50
    assert cli.stdout == text + "\n"


@pytest.mark.slow
def test_mlflow_serves_the_best_model(e2e: SweepRun, cli_env) -> None:
    """`mlflow models serve --env-manager local` on 127.0.0.1 answers POST /invocations with generated text that
    continues each prompt: the model's own text for it (pipeline.sample's)."""
    from pipeline.sample import sample_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = cli_env(MLFLOW_TRACKING_URI=e2e.uri, PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                                     os.environ.get("PATH", "")]))
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{E2E_MODEL}/1", "--env-manager",
           "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, cwd=e2e.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its uvicorn child joins the group, stopped with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the model server did not answer /ping within 120 s"
            time.sleep(0.5)
        body = json.dumps({"inputs": ["ROMEO:", "First"], "params": {"length": 40, "seed": 2}}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stdout.close()
    assert got[0].startswith("ROMEO:") and got[1].startswith("First") and list(map(len, got)) == [46, 45]
    for prompt, text in zip(["ROMEO:", "First"], got):
        assert text == sample_model(f"models:/{E2E_MODEL}/1", length=40, prime=prompt, seed=2,
                                    tracking_uri=e2e.uri)[0]


@pytest.mark.slow
def test_rerunning_a_finished_sweep_needs_resume(e2e: SweepRun, run_module, snapshot, proc_text) -> None:
    before = snapshot(e2e.cwd)
    proc = run_module("pipeline.sweep", e2e.sweep_file.name, cwd=e2e.cwd)
    assert proc.returncode == 2, proc_text(proc)
    assert "--resume" in proc.stderr and "output" in proc.stderr and "new folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(e2e.cwd) == before


# ----------------------------------------------------------------------------------- reproducibility


@pytest.mark.slow
def test_a_fifo_sweep_run_twice_gives_identical_results(tmp_path: Path, run_module, cli_env, short_tmp,
                                                        corpus_text, proc_text) -> None:
    """The same file in two working dirs, run at the same time (each starts its own local Ray)."""
    folders = [tmp_path / "first", tmp_path / "second"]
    files = []
    for folder in folders:
        folder.mkdir()
        files.append(write_sweep(folder, FIFO, corpus_text(CORPUS_CHARS)))
    envs = [cli_env(ray_tmp=short_tmp()) for _ in folders]
    with ThreadPoolExecutor(len(folders)) as pool:
        procs = list(pool.map(lambda i: run_module("pipeline.sweep", files[i].name, cwd=folders[i], env=envs[i]),
                              range(len(folders))))
    runs = [SweepRun(cwd=f, sweep_file=s, proc=p) for f, s, p in zip(folders, files, procs)]
    for run in runs:
        assert run.proc.returncode == 0, proc_text(run.proc)
    a, b = (r.trials() for r in runs)
    assert list(a["trial_id"]) == list(b["trial_id"]) == ["t0000", "t0001"]
    assert (a["status"] == "finished").all() and (b["status"] == "finished").all()
    assert a["learning_rate"].nunique() == 2
    assert list(a["learning_rate"]) == list(b["learning_rate"])
    assert list(a["val_loss"]) == list(b["val_loss"])
    ha, hb = (r.history() for r in runs)
    assert list(ha["val_loss"]) == list(hb["val_loss"]) and list(ha["train_loss"]) == list(hb["train_loss"])
    assert list(a["sample"]) == list(b["sample"])


# --------------------------------------------------------------------------------------- divergence


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path, run_module, corpus_text,
                                                            proc_text) -> None:
    run = run_sweep(run_module, tmp_path, DIVERGE, corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    t = run.trials().set_index("learning_rate")
    bad, good = t.loc[DIVERGE_LR], t.loc[0.1]
    assert bad["status"] == "diverged"
    assert bad["iterations"] < bad["target_iterations"]
    assert pd.isna(bad["val_loss"]) and "non-finite" in bad["error"]
    assert good["status"] == "finished" and good["iterations"] == 100

    m = run.mlflow()
    bad_run, good_run = m.children[bad["trial_id"]], m.children[good["trial_id"]]
    assert bad_run.data.tags["rnnsweep.status"] == "diverged" and bad_run.info.status == "FAILED"
    assert good_run.data.tags["rnnsweep.status"] == "finished" and good_run.info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in m.runs)


# ------------------------------------------------------------------------------------------ time budget


@pytest.mark.slow
def test_a_time_budget_bounds_the_whole_sweep_not_only_tunes_part(tmp_path: Path, run_module, corpus_text,
                                                                   proc_text) -> None:
    """time_budget_s counts from the command's start: start-up, training and the finish (tables, MLflow, the
    report) all fit in it. The trials here would need minutes; the budget cuts them and the sweep ends."""
    import time

    budget = 45  # a first sweep in a fresh clone starts slower: in CI, 25 s left the trials no time to report
    sweep = {**FIFO, "name": "budget", "num_samples": 4, "time_budget_s": budget,
             "train": {**FIFO["train"], "hidden_size": 64, "iterations": 100_000, "eval_every": 100,
                       "sample_every": 200}}
    t0 = time.monotonic()
    run = run_sweep(run_module, tmp_path, sweep, corpus_text(CORPUS_CHARS))
    wall = time.monotonic() - t0
    assert run.proc.returncode == 0, proc_text(run.proc)
    assert wall < budget, f"the sweep took {wall:.1f} s with time_budget_s: {budget}"
    t = run.trials()
    assert len(t) >= 1 and (t["iterations"] < 100_000).all()
    assert t["val_loss"].notna().any()  # the cut trials reported before the end

    # the budget ended them: a normal end, with that one cause, their newest checkpoint and their last sample
    assert (t["status"] == "stopped").all() and t["ended_at"].notna().all(), t[["trial_id", "status"]]
    m = run.mlflow()
    assert m.parents[0].info.status == "FINISHED" and m.parents[0].data.tags["best_trial"] in set(t["trial_id"])
    for row in t.itertuples():
        child = m.children[row.trial_id]
        assert child.info.status == "FINISHED" and child.data.tags["rnnsweep.status"] == "stopped"
        assert child.data.tags["stop_reason"] == f"time budget at iteration {row.iterations} of 100000"
        if row.iterations:  # (a trial the budget ended before its first report has no checkpoint)
            assert {a.path for a in m.client.list_artifacts(row.mlflow_run_id, "model")} == {"model/checkpoint.npz"}
        samples = sorted(a.path for a in m.client.list_artifacts(row.mlflow_run_id, "samples"))
        if samples:  # the newest sample, also when the budget cut the trial between two samples
            newest = m.client.download_artifacts(row.mlflow_run_id, samples[-1], str(tmp_path / row.trial_id))
            assert Path(newest).read_text() == row.sample


@pytest.mark.slow
def test_a_time_budget_that_ends_before_any_trial_ran_says_so(tmp_path: Path, run_module, corpus_text,
                                                              proc_text) -> None:
    """time_budget_s: 0.001 used to end with no trial trained and no word about it."""
    run = run_sweep(run_module, tmp_path, {**FIFO, "name": "no-time", "time_budget_s": 0.001},
                    corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    assert (run.trials()["iterations"] == 0).all()
    assert run.proc.stderr.count("warning: the time budget ended before any trial ran (time_budget_s: 0.001, "
                                 "which counts Ray's start-up and keeps the last 20 s for the finish); raise "
                                 "time_budget_s") == 1, proc_text(run.proc)


# ------------------------------------------------------------------------------------------- dry run


def dry_run(tmp_path: Path, sweep: dict[str, Any], run_module, cli_env, fresh_ray_tmpdir, corpus_text, snapshot,
            proc_text) -> str:
    """`--dry-run` on `sweep`: its output, after checking it exited 0 and created nothing (no mlflow.db, no
    mlruns, no output folder, and no Ray: it would have made <RAY_TMPDIR>/ray)."""
    sweep_file = write_sweep(tmp_path, sweep, corpus_text(CORPUS_CHARS))
    before = snapshot(tmp_path)
    proc = run_module("pipeline.sweep", sweep_file.name, "--dry-run", cwd=tmp_path,
                      env=cli_env(ray_tmp=fresh_ray_tmpdir))
    assert proc.returncode == 0, proc_text(proc)
    assert snapshot(tmp_path) == before and list(fresh_ray_tmpdir.iterdir()) == []
    return proc.stdout


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path: Path, run_module, cli_env, fresh_ray_tmpdir,
                                                     corpus_text, snapshot, proc_text) -> None:
    out = dry_run(tmp_path, E2E, run_module, cli_env, fresh_ray_tmpdir, corpus_text, snapshot, proc_text)
    assert "4 trials" in out
    searched = out[out.index("searched:"):out.index("fixed:")]
    fixed = out[out.index("fixed:"):]
    for key in ("hidden_size", "learning_rate"):
        assert key in searched
    for key in ("seq_length", "batch_size", "dtype", "iterations", "eval_every", "sample_every", "sample_length"):
        assert re.search(rf"^\s+{key}\s", fixed, re.M), key
    assert "asha" in out.lower()


# the model-family options, set to values that are not the defaults
FAMILY = {"num_layers": 2, "dropout": 0.1, "optimizer": "adam", "learning_rate": 0.01, "lr_schedule": "cosine",
          "warmup": 10}
FAMILY_SWEEP: dict[str, Any] = {**FIFO, "train": {**FIFO["train"], "cell": {"choice": ["rnn", "lstm"]}, **FAMILY}}


def test_dry_run_lists_a_searched_cell_and_the_model_family_options(tmp_path: Path, run_module, cli_env,
                                                                    fresh_ray_tmpdir, corpus_text, snapshot,
                                                                    proc_text) -> None:
    out = dry_run(tmp_path, FAMILY_SWEEP, run_module, cli_env, fresh_ray_tmpdir, corpus_text, snapshot, proc_text)
    searched, fixed = out[out.index("searched:"):out.index("fixed:")], out[out.index("fixed:"):]
    assert re.search(r"^\s+cell\s+choice of \['rnn', 'lstm'\]", searched, re.M), out
    for key, value in FAMILY.items():
        assert re.search(rf"^\s+{key}\s+{re.escape(repr(value))}$", fixed, re.M), (key, out)


def test_model_family_options_reach_the_run_name_the_mlflow_params_and_the_columns(tmp_path: Path,
                                                                                  corpus_text) -> None:
    """What the driver's callback makes of a trial that drew cell lstm (no Ray started, MLflow stubbed)."""
    from types import SimpleNamespace

    from pipeline.callback import SweepCallback
    from pipeline.config import load_sweep
    from pipeline.results import ResultsTable

    cfg = load_sweep(write_sweep(tmp_path, FAMILY_SWEEP, corpus_text(CORPUS_CHARS)))
    runs = []

    class Tracker:
        def trial_run(self, *, trial_id: str, name: str, params: dict[str, Any]) -> str:
            runs.append((trial_id, name, dict(params)))
            return "run0"

    table = ResultsTable(tmp_path / "out", sweep_text=cfg.source_text)
    callback = SweepCallback(cfg=cfg, tracker=Tracker(), table=table)
    trial = SimpleNamespace(trial_id="e2e_00001", config={"cell": "lstm", "learning_rate": 0.031}, storage=None)
    callback.on_trial_start(0, [trial], trial)
    [(key, name, params)] = runs
    assert (key, name) == ("t0001", "t0001-lstm-lr0.031")
    want = {**FAMILY, "cell": "lstm", "learning_rate": 0.031}
    assert {k: params[k] for k in want} == want
    table.write()
    row = pd.read_parquet(tmp_path / "out" / "trials.parquet").iloc[0]
    assert {k: row[k] for k in want} == want


class StubTracker:
    """pipeline.tracking.Tracker's side of the callback, recorded instead of logged to MLflow."""

    def __init__(self) -> None:
        self.ended: dict[str, tuple[str, dict[str, Any]]] = {}  # run -> (status, tags)
        self.best: list[tuple[int, str]] = []  # (step, best trial)
        self.files: list[tuple[str, str]] = []

    def trial_run(self, *, trial_id: str, name: str, params: dict[str, Any]) -> str:
        return f"run-{trial_id}"

    def record_lineage(self, run_id, event) -> None:
        pass

    def log_metrics(self, run_id, metrics, step) -> bool:
        return True

    def log_text(self, run_id, text, path) -> None:
        pass

    def log_file(self, run_id, local_path, artifact_dir) -> None:
        self.files.append((run_id, artifact_dir))

    def end_run(self, run_id, status, tags=None) -> None:
        self.ended[run_id] = (status, dict(tags or {}))

    def log_best(self, best, *, step) -> None:
        self.best.append((step, best["trial_id"]))


def _report(it: int, sample: str) -> dict[str, Any]:
    return {"iteration": it, "train_loss": 3.0, "val_loss": 3.0 - it / 1000, "val_bpc": (3.0 - it / 1000) / LN2,
            "chars_per_sec": 1e4 + it, "elapsed_s": it / 100, "sample": sample, "lr": 0.05, "diverged": False,
            "target_iterations": 200, "node": "a" * 56, "node_ip": "127.0.0.1"}


def _callback_with_trial(tmp_path: Path, corpus_text, **kwargs: Any):
    """The driver's callback for E2E (no Ray started, MLflow stubbed) and a Tune trial it saw start and report at
    iterations 50 (no sample), 100 (a sample) and 150 (none: the trial stopped between two samples)."""
    from types import SimpleNamespace

    from pipeline.callback import SweepCallback
    from pipeline.config import load_sweep
    from pipeline.results import ResultsTable

    cfg = load_sweep(write_sweep(tmp_path, E2E, corpus_text(CORPUS_CHARS)))
    tracker = StubTracker()
    table = ResultsTable(tmp_path / "out", sweep_text=cfg.source_text)
    callback = SweepCallback(cfg=cfg, tracker=tracker, table=table, **kwargs)
    trial = SimpleNamespace(trial_id="e2e_00002", config={"hidden_size": 16, "learning_rate": 0.05}, storage=None,
                            checkpoint=None, last_result=None)
    callback.on_trial_start(0, [trial], trial)
    for it, sample in ((50, ""), (100, "the sample at 100"), (150, "")):
        trial.last_result = _report(it, sample)
        callback.on_trial_result(0, [trial], trial, trial.last_result)
    return callback, tracker, trial


def test_a_trial_asha_stopped_between_samples_ends_finished_and_keeps_its_last_sample(tmp_path: Path,
                                                                                      corpus_text) -> None:
    callback, tracker, trial = _callback_with_trial(tmp_path, corpus_text)
    callback.on_trial_complete(0, [trial], trial)  # before its 200 iterations: the scheduler decided STOP
    assert tracker.ended == {"run-t0002": ("stopped", {"stop_reason": "asha at iteration 150 of 200"})}
    assert tracker.best == [(1, "t0002")]
    row = pd.read_parquet(tmp_path / "out" / "trials.parquet").iloc[0]
    assert (row["trial_id"], row["status"], row["iterations"]) == ("t0002", "stopped", 150)
    assert row["sample"] == "the sample at 100"
    assert row["mean_chars_per_sec"] == 1e4 + 100 and row["min_val_loss"] == 3.0 - 150 / 1000
    assert row["node_ip"] == "127.0.0.1" and row["started_at"] < row["ended_at"]


@pytest.mark.parametrize("ran_out", [True, False])
def test_trials_left_running_when_tune_returns_were_stopped_by_the_budget_or_interrupted(ran_out: bool,
                                                                                        tmp_path: Path,
                                                                                        corpus_text) -> None:
    """Tune ends trials without on_trial_complete when the time budget runs out (or on Ctrl-C): finish() tells
    the two apart by the budget's deadline."""
    import time

    callback, tracker, _ = _callback_with_trial(tmp_path, corpus_text,
                                                budget_deadline=time.monotonic() + (-1 if ran_out else 3600))
    assert callback.budget_ran_out() == ran_out
    callback.finish()
    row = pd.read_parquet(tmp_path / "out" / "trials.parquet").iloc[0]
    if ran_out:
        assert tracker.ended == {"run-t0002": ("stopped", {"stop_reason": "time budget at iteration 150 of 200"})}
        assert (row["status"], row["iterations"], row["sample"]) == ("stopped", 150, "the sample at 100")
        assert row["started_at"] < row["ended_at"] and tracker.best == [(1, "t0002")]
    else:
        assert tracker.ended == {"run-t0002": ("interrupted", {})}
        assert (row["status"], row["iterations"]) == ("interrupted", 150) and pd.isna(row["ended_at"])
        assert tracker.best == []


def test_packs_group_trials_by_the_shape_options() -> None:
    """Trials that differ only in options of kind member or mutable (dropout, learning_rate, seed) share a pack;
    a different cell, layer count or warm-up starts another (rnncore.config.SHAPE_KEYS)."""
    from pipeline.packing import make_packs
    from rnncore.config import TrainConfig

    base = TrainConfig().to_dict()
    trials = [{"dropout": 0.1, "learning_rate": 0.1}, {"cell": "lstm"}, {"dropout": 0.3, "seed": 5},
              {"num_layers": 2}, {"cell": "lstm", "dropout": 0.2}, {"warmup": 10}, {"learning_rate": 0.2}]
    assert make_packs(trials, base, max_trials=8) == [[0, 2, 6], [1, 4], [3], [5]]
    assert make_packs(trials, base, max_trials=2) == [[0, 2], [1, 4], [3], [5], [6]]


# ------------------------------------------------------------------------------------- bad sweep files


def _touch(relative: str, text: str = "") -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def _pbt(mutations: dict[str, Any]) -> Callable[[dict], dict]:
    """PBT over BAD_BASE's population of 2, with these mutations (room to perturb: 200 iterations)."""
    return edit(train__iterations=200, scheduler={"type": "pbt", "perturbation_interval": 50, "mutations": mutations})


BAD_BASE: dict[str, Any] = {**FIFO, "name": "bad", "train": {**FIFO["train"], "iterations": 50}}

# id, change to the sweep, setup of the working dir, key the message must name, further words it must contain
BAD_CASES = [
    pytest.param(edit(shceduler={"type": "fifo"}), None, "shceduler", ["'scheduler'"], id="unknown_key"),
    pytest.param(edit(train__hidden_sise=16), None, "train.hidden_sise", ["'hidden_size'"], id="unknown_train_key"),
    pytest.param(edit(train__hidden_size=0), None, "train.hidden_size", ["> 0"], id="hidden_size_0"),
    pytest.param(edit(train__learning_rate={"loguniform": [0.3, 0.01]}), None, "train.learning_rate.loguniform",
                 ["low < high"], id="low_above_high"),
    pytest.param(edit(train__learning_rate={"loguniform": [0.1, 0.1]}), None, "train.learning_rate.loguniform",
                 ["low < high"], id="low_equals_high"),
    pytest.param(edit(data__path="missing.txt"), None, "data.path", ["missing.txt"], id="missing_corpus"),
    pytest.param(edit(train__seq_length=100_000), None, "train.seq_length", ["training split"],
                 id="seq_length_longer_than_training_split"),
    pytest.param(edit(output="out"), _touch("out", "not a folder"), "output", ["existing file"],
                 id="output_is_a_file"),
    pytest.param(edit(output="out"), _touch("out/trials.parquet"), "--resume", ["output", "new folder"],
                 id="output_holds_a_sweep"),
    pytest.param(edit(train__cell="lstn"), None, "train.cell", ["must be one of rnn, lstm, gru", "'lstn'",
                                                                  "did you mean 'lstm'?"], id="unknown_cell"),
    pytest.param(edit(train__dropout=1.0), None, "train.dropout", ["must be in [0, 1)", "dropout=1.0", "use 0"],
                 id="dropout_1"),
    pytest.param(edit(train__dropout=-0.1), None, "train.dropout", ["must be in [0, 1)", "dropout=-0.1", "use 0"],
                 id="dropout_negative"),
    pytest.param(edit(train__num_layers=0), None, "train.num_layers", ["must be >= 1", "num_layers=0", "use 1"],
                 id="num_layers_0"),
    pytest.param(edit(train__warmup=60), None, "train.warmup",
                 ["warmup must be <= iterations", "warmup=60 with iterations=50", "lower warmup"],
                 id="warmup_beyond_iterations"),
    pytest.param(edit(train__warmup={"randint": [0, 100]}), None, "train.warmup",
                 ["warmup=99 with iterations=50", "the largest warmup the search can draw", "lower warmup"],
                 id="searched_warmup_beyond_iterations"),
    pytest.param(_pbt({"num_layers": {"choice": [1, 2]}}), None,
                 "scheduler.mutations.num_layers", ["cannot change while a trial trains", "search it under train:"],
                 id="pbt_mutates_num_layers"),
    pytest.param(_pbt({"cell": {"choice": ["rnn", "lstm"]}}), None,
                 "scheduler.mutations.cell", ["cannot change while a trial trains", "search it under train:"],
                 id="pbt_mutates_cell"),
    pytest.param(edit(resources={"cpu": 1, "gpu": 1}), None, "resources.gpu", ["GPU"],
                 id="gpu_not_in_cluster", marks=pytest.mark.slow),  # starts Ray to read its resources
    pytest.param(edit(train__device="gpu", resources={"cpu": 1, "gpu": 0.5}), None,
                 "train.device", ["CuPy", "pip install"], id="gpu_device_without_cupy",
                 marks=[pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("cupy") is not None,
                                                             reason="CuPy is installed here")]),
]


@pytest.mark.parametrize("change, setup, key, words", BAD_CASES)
def test_bad_sweep_file_exits_2_and_creates_nothing(change, setup, key: str, words: list[str], tmp_path: Path,
                                                    run_module, cli_env, corpus_text, snapshot, proc_text) -> None:
    sweep = copy.deepcopy(BAD_BASE)
    change(sweep)
    if setup:
        setup(tmp_path)
    sweep_file = write_sweep(tmp_path, sweep, corpus_text(CORPUS_CHARS))
    before = snapshot(tmp_path)
    # CUDA_VISIBLE_DEVICES="" hides any GPU from Ray, so the GPU case holds on a GPU machine too
    proc = run_module("pipeline.sweep", sweep_file.name, cwd=tmp_path, env=cli_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.startswith("error:") or "\nerror:" in proc.stderr, proc_text(proc)
    assert key in proc.stderr, proc_text(proc)
    assert sum(line.startswith("  - ") for line in proc.stderr.splitlines()) <= 1, proc_text(proc)  # this one only
    for word in words:
        assert word in proc.stderr, proc_text(proc)
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    if setup is None:
        assert not (tmp_path / "out").exists()
