"""The driver's start-up helpers: the new-store warm-up with its cached empty MLflow store, the start-up thread,
the corpus read once, and the lean local Ray node. No Ray is started here (the sweep that checks bad input
starts none)."""
from __future__ import annotations

import os
import sqlite3
import textwrap
from pathlib import Path

import pytest

from conftest import CORPUS, describe


def _experiments(db: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT name, artifact_location FROM experiments ORDER BY experiment_id").fetchall()
    finally:
        con.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("RNNSWEEP_CACHE_DIR", str(path))
    return path


def _warm_store(folder: Path, monkeypatch) -> Path:
    """What a sweep started in `folder` does with a new local store: prepare, then install."""
    from pipeline.tracking import StoreWarmup

    folder.mkdir()
    monkeypatch.chdir(folder)
    db = folder / "mlflow.db"
    warmup = StoreWarmup(f"sqlite:///{db}")
    warmup.prepare()
    assert not db.exists()  # nothing where the URI points before install()
    warmup.install()
    return db


def test_first_store_leaves_an_empty_template_and_the_next_store_is_copied_from_it(tmp_path, cache, monkeypatch):
    db_a = _warm_store(tmp_path / "a", monkeypatch)
    templates = list(cache.glob("mlflow-*-store.db"))
    assert len(templates) == 1, list(cache.iterdir())
    assert _experiments(templates[0]) == []  # MLflow adds its Default experiment where the store is opened
    [(name, location_a)] = _experiments(db_a)
    assert name == "Default" and location_a.endswith(str(tmp_path / "a" / "mlruns" / "0")), location_a

    mtime = templates[0].stat().st_mtime_ns
    db_b = _warm_store(tmp_path / "b", monkeypatch)
    assert templates[0].stat().st_mtime_ns == mtime  # read, not rebuilt
    [(name, location_b)] = _experiments(db_b)
    assert name == "Default" and location_b.endswith(str(tmp_path / "b" / "mlruns" / "0")), location_b

    from pipeline.tracking import Tracker  # the copied store works as a tracking store

    tracker = Tracker(uri=f"sqlite:///{db_b}", experiment="exp", sweep_id="s1")
    parent = tracker.start_sweep(name="exp", params={"a": 1}, sweep_text="name: exp\n", resume=False)
    assert tracker.client.get_run(parent).data.params == {"a": "1"}
    assert [n for n, _ in _experiments(db_b)] == ["Default", "exp"]


def test_a_discarded_store_leaves_nothing(tmp_path, cache, monkeypatch):
    from pipeline.tracking import StoreWarmup

    monkeypatch.chdir(tmp_path)
    warmup = StoreWarmup(f"sqlite:///{tmp_path / 'mlflow.db'}")
    warmup.prepare()
    warmup.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, and no template (made only by install)


def test_a_damaged_template_is_replaced(tmp_path, cache, monkeypatch):
    import mlflow

    cache.mkdir()
    template = cache / f"mlflow-{mlflow.__version__}-store.db"
    template.write_bytes(b"not a database")
    db = _warm_store(tmp_path / "a", monkeypatch)
    assert [n for n, _ in _experiments(db)] == ["Default"]
    assert _experiments(template) == []  # a working, empty store again


def test_startup_thread_imports_tune_and_the_pipeline():
    import sys

    from pipeline.startup import Startup

    Startup("http://x").ready()
    assert {"ray.tune", "pipeline.callback", "pipeline.results", "pipeline.trainable"} <= set(sys.modules)


def test_the_sweep_trains_on_the_corpus_load_sweep_checked_or_gets_its_error(tmp_path):
    from pipeline.config import load_sweep
    from rnncore.data import CorpusError

    sweep = "name: c\ndata: {{path: {}}}\ntrain: {{iterations: 10}}\noutput: out\n"
    (tmp_path / "ok.yaml").write_text(sweep.format(CORPUS))
    cfg = load_sweep(tmp_path / "ok.yaml")
    corpus = cfg.corpus()
    assert corpus is cfg.corpus()  # read once, by load_sweep's check
    assert len(corpus.train) + len(corpus.val) == len(CORPUS.read_text(encoding="utf-8"))
    (tmp_path / "corpus.txt").write_bytes(b"abc\xff" * 100)
    (tmp_path / "bad.yaml").write_text(sweep.format(tmp_path / "corpus.txt"))
    cfg = load_sweep(tmp_path / "bad.yaml", check_corpus=False)
    with pytest.raises(CorpusError, match="corpus.txt"):
        cfg.corpus()


def test_lean_local_node_drops_only_the_two_monitors_and_restores_ray():
    from ray._private.parameter import RayParams

    from pipeline.raycompat import lean_local_node

    before = RayParams()
    with lean_local_node():
        lean = RayParams(num_cpus=2, include_log_monitor=True)  # an explicit value is kept
        plain = RayParams(num_cpus=2)
    after = RayParams()
    assert (plain.no_monitor, plain.include_log_monitor, plain.num_cpus) == (True, False, 2)
    assert lean.include_log_monitor is True
    assert (before.no_monitor, before.include_log_monitor) == (after.no_monitor, after.include_log_monitor)
    assert (after.no_monitor, after.include_log_monitor) == (False, None)


def test_bad_sweep_writes_no_store_template(tmp_path, run_module, cli_env):
    cache = tmp_path / "cache"
    (tmp_path / "bad.yaml").write_text(textwrap.dedent(f"""\
        name: bad
        data: {{path: {CORPUS}}}
        train: {{hidden_size: 0, iterations: 10}}
        output: out
        """))
    proc = run_module("pipeline.sweep", "bad.yaml", cwd=tmp_path, env=cli_env(RNNSWEEP_CACHE_DIR=str(cache)))
    assert proc.returncode == 2, describe(proc)
    assert "train.hidden_size" in proc.stderr
    assert not cache.exists() and sorted(os.listdir(tmp_path)) == ["bad.yaml"]


# uri ({tmp} is the test's folder), a setup in it, what the one-line error says
BAD_STORES = [
    ("bogus://x", None, "MLflow tracking URI must be one MLflow keeps runs under (http://, https://, sqlite:///, "
                        "postgresql://, mysql://, mssql://, file:, databricks), but got 'bogus://x'; fix "
                        "mlflow.tracking_uri in the sweep file, or MLFLOW_TRACKING_URI"),
    ("sqlite:///{tmp}/nowhere/m.db", None, "its folder {tmp}/nowhere does not exist"),
    ("sqlite:///{tmp}/file/m.db", lambda tmp: (tmp / "file").write_text("x"), "{tmp}/file is not a folder"),
    ("sqlite:///{tmp}/ro/m.db", lambda tmp: (tmp / "ro").mkdir(), "its folder {tmp}/ro is not writable"),
    ("sqlite:///{tmp}/ro.db", lambda tmp: (tmp / "ro.db").write_text(""), "{tmp}/ro.db is not writable"),
]


@pytest.mark.parametrize("uri, setup, words", BAD_STORES, ids=["scheme", "no-folder", "file-as-folder",
                                                               "read-only-folder", "read-only-file"])
def test_a_store_mlflow_cannot_use_is_one_line_before_ray_starts(uri, setup, words, tmp_path, monkeypatch):
    """MLflow said so after the driver had started Ray, in a 43-line (unknown scheme) or 14-line (read-only
    sqlite store) traceback, exit 1. os.access is patched so that root sees the read-only cases too."""
    from pipeline.tracking import TrackingError, check_server

    if setup:
        setup(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name.startswith("ro") else real_access(p, mode))
    with pytest.raises(TrackingError) as info:
        check_server(uri.format(tmp=tmp_path))
    message = str(info.value)
    assert words.format(tmp=tmp_path) in message and "\n" not in message, message


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/mlflow.db", "sqlite:///{tmp}/new/../mlflow.db?timeout=5",
                                 "postgresql+psycopg2://user@host/db", "mysql://host/db", "file:///{tmp}/mlruns",
                                 "{tmp}/mlruns", "databricks", "sqlite://"])
def test_a_store_mlflow_can_use_passes_the_check(uri, tmp_path):
    from pipeline.tracking import check_store

    check_store(uri.format(tmp=tmp_path))
