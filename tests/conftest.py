"""Shared, generic fixtures: run the project's CLIs as subprocesses in isolated working directories.

A CLI run here gets a clean environment: no MLFLOW_* or RAY_* variables from the caller (so a sweep
logs to `sqlite:///<cwd>/mlflow.db` and starts its own local Ray), the repository on PYTHONPATH, and a
private RAY_TMPDIR, so that a `ray start` cluster elsewhere on the machine (whose address Ray would
otherwise pick up from /tmp/ray/ray_current_cluster) is never joined, and Ray's session files do not
mix with other jobs'; and a private RNNSWEEP_CACHE_DIR instead of the user's cache.

Plain helper functions the test modules share (sweep files, tables, relative differences) are in helpers.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _short_tmp_dir(prefix: str) -> Path:
    """A folder with a short path: Ray puts Unix sockets under its temp dir (limit ~107 characters)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _remove(path: Path) -> None:
    """rmtree, retried briefly: Ray's daemons can still be writing logs for a moment after the driver exits."""
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.25)


@pytest.fixture(scope="session")
def ray_tmpdir() -> Iterator[Path]:
    """One private Ray temp dir for every CLI run of the session; removed at the end."""
    path = _short_tmp_dir("rt")
    yield path
    _remove(path)


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Callable[[], Path]]:
    """short_tmp() -> a new empty folder with a short path (e.g. a RAY_TMPDIR of its own); all removed at the end."""
    made: list[Path] = []

    def make() -> Path:
        made.append(_short_tmp_dir("rt"))
        return made[-1]

    yield make
    for path in made:
        _remove(path)


@pytest.fixture
def fresh_ray_tmpdir(short_tmp) -> Path:
    """A Ray temp dir of its own, for a test that checks whether Ray started at all."""
    return short_tmp()


@pytest.fixture(scope="session")
def store_cache(short_tmp) -> Path:
    """The session's RNNSWEEP_CACHE_DIR (where a sweep keeps its empty MLflow store), not the user's cache."""
    return short_tmp()


@pytest.fixture(scope="session")
def cli_env(ray_tmpdir: Path, store_cache: Path) -> Callable[..., dict[str, str]]:
    """cli_env(**extra) -> an environment for a CLI subprocess (see the module docstring)."""

    def make(ray_tmp: Path | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        env["RAY_TMPDIR"] = str(ray_tmp or ray_tmpdir)
        env["RNNSWEEP_CACHE_DIR"] = str(store_cache)
        env.update(extra)
        return env

    return make


@pytest.fixture(scope="session")
def run_module(cli_env) -> Callable[..., subprocess.CompletedProcess]:
    """run_module("pipeline.sweep", "file.yaml", cwd=folder) -> CompletedProcess with text stdout/stderr.

    Runs `python -m MODULE ARGS` with this interpreter; `env` defaults to cli_env().
    """

    def run(module: str, *args: str | os.PathLike, cwd: Path, timeout: float = 600,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", module, *map(str, args)]
        try:
            return subprocess.run(cmd, cwd=cwd, env=dict(env) if env is not None else cli_env(),
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            pytest.fail(f"{' '.join(cmd)} ran over {timeout:.0f} s\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")

    return run


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, tuple[int, int]]]:
    """snapshot(folder) -> {relative path: (size, mtime_ns)} of everything under it (folders too)."""

    def take(folder: Path) -> dict[str, tuple[int, int]]:
        out = {}
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(root, name)
                st = p.lstat()
                out[str(p.relative_to(folder))] = (0 if name in dirs else st.st_size, st.st_mtime_ns)
        return out

    return take


@pytest.fixture(scope="session")
def corpus_text() -> Callable[[int], str]:
    """corpus_text(n) -> the first n characters of data/tinyshakespeare.txt."""

    def head(n: int) -> str:
        return CORPUS.read_text(encoding="utf-8")[:n]

    return head


def describe(proc: subprocess.CompletedProcess) -> str:
    """The tail of a subprocess's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="session")
def proc_text() -> Callable[[subprocess.CompletedProcess], str]:
    return describe
