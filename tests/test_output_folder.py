"""The output folder of a sweep: one driver at a time, and --resume only for the sweep that started there.

These run the real CLI but stop before Ray starts (the checks come first), so they take seconds. The lock's
behaviour against a running driver, and SIGKILL leaving no stale lock, are proven in tests/test_faults.py."""
from __future__ import annotations

import copy
import fcntl
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import edit, write_sweep

SWEEP: dict[str, Any] = {
    "name": "resumed",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {"hidden_size": {"grid_search": [16, 32]}, "learning_rate": {"loguniform": [0.01, 0.1]},
              "iterations": 100, "eval_every": 50, "seq_length": 16},
    "num_samples": 2,
    "output": "out",
}


def started_sweep(folder: Path, corpus: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sweep file and an output folder as a sweep leaves them once it started: Tune's folder and the record
    of what it started with (written by the driver's own function)."""
    from pipeline.config import load_sweep
    from pipeline.folder import record_identity

    monkeypatch.chdir(folder)  # `output: out` is relative to the working directory
    path = write_sweep(folder, SWEEP, corpus)
    (folder / "out" / "tune").mkdir(parents=True)
    record_identity(load_sweep(path))
    return path


CHANGES: list[tuple[str, Callable[[dict], dict], str | None, list[str]]] = [
    ("grid-value", edit(train__hidden_size={"grid_search": [16, 64]}), None,
     ["the sweep file changed (train.hidden_size.grid_search: [16, 32] -> [16, 64])"]),
    ("searched-key-added", edit(train__dropout={"uniform": [0.0, 0.3]}), None,
     ["the sweep file changed (train.dropout added)"]),
    ("key-removed", edit(num_samples=None), None, ["the sweep file changed (num_samples removed)"]),
    ("corpus-edited", lambda s: s, "x" * 10, ["the corpus changed (", "characters, sha256 "]),
]


@pytest.mark.parametrize("case, change, more_text, expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_refuses_a_changed_sweep_file_or_corpus_before_touching_anything(
        case: str, change: Callable[[dict], dict], more_text: str | None, expected: list[str], tmp_path: Path,
        run_module, cli_env, corpus_text, snapshot, short_tmp, monkeypatch) -> None:
    sweep_file = started_sweep(tmp_path, corpus_text(20_000), monkeypatch)
    write_sweep(tmp_path, change(copy.deepcopy(SWEEP)))
    if more_text:
        with open(tmp_path / "corpus.txt", "a", encoding="utf-8") as f:
            f.write(more_text)
    before, ray_tmp = snapshot(tmp_path / "out"), short_tmp()
    proc = run_module("pipeline.sweep", sweep_file.name, "--resume", cwd=tmp_path, env=cli_env(ray_tmp=ray_tmp))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --resume: ") and "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "restore the sweep file as it was" in proc.stderr and "set `output:` to a new folder" in proc.stderr
    assert snapshot(tmp_path / "out") == before and list(ray_tmp.iterdir()) == []  # nothing touched, no Ray
    assert not (tmp_path / "mlflow.db").exists()


def test_the_identity_ignores_comments_and_layout(tmp_path: Path, corpus_text) -> None:
    from pipeline.config import load_sweep
    from pipeline.folder import identity, identity_changes

    first = load_sweep(write_sweep(tmp_path, SWEEP, corpus_text(20_000)))
    text = (tmp_path / "sweep.yaml").read_text()
    again = load_sweep(write_sweep(tmp_path, "# the same sweep, reformatted\n" + text.replace(": ", ":   ")))
    assert identity_changes(identity(first), identity(again)) == []


def test_a_folder_locked_by_another_process_is_refused_naming_its_pid(tmp_path: Path, run_module, cli_env,
                                                                       corpus_text, short_tmp) -> None:
    sweep_file = write_sweep(tmp_path, SWEEP, corpus_text(20_000))
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "w") as held:  # as a running driver holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        ray_tmp = short_tmp()
        proc = run_module("pipeline.sweep", sweep_file.name, cwd=tmp_path, env=cli_env(ray_tmp=ray_tmp))
    assert proc.returncode == 2, proc.stderr
    assert "in use by another sweep driver (PID 4242)" in proc.stderr and "Traceback" not in proc.stderr
    assert list(ray_tmp.iterdir()) == [] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]


def test_a_sweep_that_stops_before_it_begins_leaves_no_folder(tmp_path: Path, run_module, cli_env,
                                                               corpus_text) -> None:
    """The lock creates the output folder; a sweep refused after that (a dead tracking server) removes it."""
    sweep = edit(mlflow={"experiment": "x", "tracking_uri": "http://127.0.0.1:9"})(copy.deepcopy(SWEEP))
    sweep_file = write_sweep(tmp_path, sweep, corpus_text(20_000))
    proc = run_module("pipeline.sweep", sweep_file.name, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "out").exists()
