"""What a sweep leaves on disk: files a teammate can read (the umask's mode, not mkstemp's 0600), and no
temporary folders in the system's temp folder, where a killed worker used to leave its checkpoint folders."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipeline import trainable
from pipeline.report.plots import save_atomically
from pipeline.results import _write_atomic
from rnncore import TrainConfig, checkpoint, init_state, make_corpus

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:2000]


@pytest.fixture
def umask():
    """Set the process's umask for one test; the old one comes back after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_tables_checkpoints_and_reports_get_the_umasks_mode(tmp_path, umask, mask, want):
    umask(mask)
    corpus = make_corpus(TEXT)
    cfg = TrainConfig(hidden_size=8, seq_length=8)
    checkpoint.save(tmp_path / "model.npz", cfg, corpus.vocab, init_state(cfg, corpus.vocab.size))
    _write_atomic(pa.table({"x": [1, 2]}), tmp_path / "trials.parquet")
    save_atomically(tmp_path / "report.md", lambda tmp: Path(tmp).write_text("# report"))
    for name in ("model.npz", "trials.parquet", "report.md"):
        assert _mode(tmp_path / name) == want, (name, oct(_mode(tmp_path / name)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "report.md", "trials.parquet"]


# ---------------------------------------------------------------- the trainable's checkpoint folders


class _Ctx:
    """Tune's context as the trainable reads it; `storage` None: not a local disk (Tune's working folder is used)."""

    def __init__(self, work: Path, storage: SimpleNamespace | None):
        self.work, self.storage = work, storage

    def get_trial_id(self) -> str:
        return "abcde_00000"

    def get_trial_dir(self) -> str:
        return str(self.work)

    def get_storage(self):
        if self.storage is None:
            raise RuntimeError("no storage in this fake")
        return self.storage


class _Tune:
    """tune.get_context/get_checkpoint/report/Checkpoint: each report records its checkpoint folder's place and
    files, while it still exists."""

    def __init__(self, ctx: _Ctx):
        self.ctx, self.reports = ctx, []
        self.Checkpoint = SimpleNamespace(from_directory=lambda d: d)

    def get_context(self):
        return self.ctx

    def get_checkpoint(self):
        return None

    def report(self, metrics, checkpoint=None):
        self.reports.append((Path(checkpoint).parent, sorted(os.listdir(checkpoint))))


@pytest.fixture
def sys_tmp(tmp_path, monkeypatch) -> Path:
    """An empty folder as the system's temp folder, for what tempfile makes without a dir=."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize("local_storage", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_checkpoint_folders_are_written_in_the_trials_folder_and_a_killed_runs_are_removed(
        tmp_path, sys_tmp, monkeypatch, local_storage, packed):
    """A trial writes each checkpoint folder in `.tmp` inside its own folder of the output (Tune's working folder
    for the trial when the storage is not a local disk), never in the system's temp folder; what a killed run of
    the trial left there is removed when it starts again."""
    work = tmp_path / "ray_session" / "working_dirs" / "trial"
    experiment = tmp_path / "out" / "tune"
    own = experiment / "train_trial_abcde_00000_0_2026-12-06"
    storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), experiment_fs_path=str(experiment),
                              trial_fs_path=str(own)) if local_storage else None
    folder = own if local_storage else work
    left = folder / trainable.SCRATCH / "tmpkilled1"  # a checkpoint folder of a run killed before Tune copied it
    left.mkdir(parents=True)
    (left / trainable.CHECKPOINT_FILE).write_bytes(b"cut short")
    fake = _Tune(_Ctx(work, storage))
    monkeypatch.setattr(trainable, "tune", fake)
    monkeypatch.setattr(trainable, "_where", lambda: {"node": "n", "node_ip": "127.0.0.1"})

    base = dict(hidden_size=8, seq_length=8, batch_size=2, iterations=4, eval_every=2, sample_every=0)
    common = dict(corpus=make_corpus(TEXT), base=base, sweep_seed=0, derive_seed=True)
    if packed:
        trainable.train_pack({"pack": 0}, trials=[{"learning_rate": 0.1}, {"learning_rate": 0.05}], packs=[[0, 1]],
                             **common)
        files = sorted([trainable.PACK_FILE, trainable.member_file(0), trainable.member_file(1)])
    else:
        trainable.train_trial({"learning_rate": 0.1}, **common)
        files = [trainable.CHECKPOINT_FILE, trainable.REPORT_FILE]

    assert [listing for _, listing in fake.reports] == [files, files]  # reports at iterations 2 and 4
    assert {where for where, _ in fake.reports} == {folder / trainable.SCRATCH}
    assert list((folder / trainable.SCRATCH).iterdir()) == []  # the killed run's folder too
    assert list(sys_tmp.iterdir()) == []
