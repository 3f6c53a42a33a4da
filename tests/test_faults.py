"""Fault injection: what survives a crash (README.md, "What survives a crash"), each guarantee proven by the
fault itself.

- A trial's worker SIGKILLed mid-trial: the trial restarts from its newest checkpoint, in the same MLflow run,
  and ends with the numbers of an uninterrupted run (FIFO, fixed seed: bit for bit).
- The driver stopped by Ctrl-C (SIGINT to its process group) or SIGKILLed mid-sweep: `--resume` finishes the
  sweep; finished and diverged trials are not trained again, the interrupted one continues from its newest
  checkpoint, pending ones start; one parent and one child run per trial, none left RUNNING; the tables equal
  those of an uninterrupted sweep.
- The disk filling up mid-sweep (a real tmpfs, filled to the last byte): the sweep stops as on Ctrl-C with one
  line, and once space is freed `--resume` finishes it with the same results; started on a full disk, likewise.
- The Parquet writer killed at random moments: the file always reads back whole, as one version written.
- Hostile input through the CLIs: exit 2, one message, nothing started or written, nothing evaluated as code.
- Load: 200 short trials, the driver's memory flat.

The Ray-starting scenarios run two at a time in background threads (started by the `scenarios` fixture), each
in its own working directory with a private RAY_TMPDIR, so the module stays within a few minutes on 2 cores.
The trainable notes "<pid> <start iteration>" per trial start when RNNSWEEP_TEST_PIDFILE_DIR is set: that is
how a test finds the worker to kill and checks where each trial (re)started.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import alias_bomb, edit, free_port, make_read_only_dir, read_history, read_trials, write_sweep

REPO = Path(__file__).resolve().parents[1]
PIDFILE_ENV = "RNNSWEEP_TEST_PIDFILE_DIR"
PARENT_TAG = "mlflow.parentRunId"
CORPUS_CHARS = 20_000
EXIT_GRACE_S = 10.0  # after a Ctrl-C'd driver exits, the seconds its Ray processes get to finish exiting
DIVERGE_LR = 1.0e38  # float32 overflows in the first updates: the loss is non-finite by iteration 2

# Four trials, one at a time, in a fixed order: t0000 diverges at once, t0001..t0003 train 6000 iterations
# (about 2 s each) with a report and a checkpoint every 1000. The faults hit t0001 (worker) or t0002 (driver),
# so at a driver kill t0000 is diverged, t0001 finished, t0002 half way and t0003 pending.
ITERATIONS, EVAL_EVERY = 6000, 1000
FAULT: dict[str, Any] = {
    "name": "faults",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {
        "hidden_size": 16,
        "learning_rate": {"grid_search": [DIVERGE_LR, 0.05, 0.02, 0.01]},
        "seq_length": 16,
        "batch_size": 4,
        "dtype": "float32",
        "iterations": ITERATIONS,
        "eval_every": EVAL_EVERY,
        "sample_every": 3000,
        "sample_length": 20,
    },
    "num_samples": 1,
    "seed": 3,
    "metric": "val_loss",
    "mode": "min",
    "scheduler": {"type": "fifo"},
    "max_concurrent_trials": 1,
    "output": "out",
}
TRIALS = ["t0000", "t0001", "t0002", "t0003"]
FINAL_STATUS = {"t0000": "diverged", "t0001": "finished", "t0002": "finished", "t0003": "finished"}
MLFLOW_STATUS = {"diverged": "FAILED", "finished": "FINISHED", "interrupted": "KILLED"}
METRICS = ("train_loss", "val_loss", "val_bpc", "chars_per_sec")


# ---------------------------------------------------------------------------------------------- helpers


def corpus(n: int = CORPUS_CHARS) -> str:
    return (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:n]


def run_processes(marker: str) -> list[int]:
    """PIDs of live processes that belong to one sweep run: their working directory or an open file lies under
    `marker` (the run's private RAY_TMPDIR or its working directory). Ray's daemons rename themselves
    (ray::IDLE, ...), which also wipes their cmdline and environ; cwd and open log files remain."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{entry.name}/cwd")]
            links += [os.readlink(f"/proc/{entry.name}/fd/{fd}") for fd in os.listdir(f"/proc/{entry.name}/fd")]
        except OSError:  # gone meanwhile, or a zombie
            continue
        if any(link == marker or link.startswith(marker + "/") for link in links):
            found.append(int(entry.name))
    return found


def run_pids(*markers: Path) -> list[int]:
    """PIDs of the live processes of one run, found by any of its markers (run_processes)."""
    return sorted({p for m in markers for p in run_processes(str(m))})


def named(pid: int) -> str:
    """"PID name", the name from /proc (Ray's processes rename themselves: ray::IDLE, ray::ImplicitFunc...)."""
    try:
        return f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}"
    except OSError:
        return f"{pid} ?"


def kill_run_processes(*markers: Path) -> list[str]:
    """SIGKILL what a killed driver left behind (raylet, workers, agents) of THIS run only, by PID.
    Returns them as "PID name"."""
    killed = []
    for _ in range(3):
        pids = run_pids(*markers)
        for pid in pids:
            name = named(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(name)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.5)
    return killed


def seconds_until_gone(*markers: Path, timeout: float) -> float | None:
    """How long until no process of this run is left (None: some still run after `timeout` seconds)."""
    t0 = time.monotonic()
    while run_pids(*markers):
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - t0


class Driver:
    """`python -m pipeline.sweep ARGS` started in the background in `cwd`: its own session (process group),
    output in files, the environment of conftest's cli_env plus RNNSWEEP_TEST_PIDFILE_DIR."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, name: str):
        self.cwd, self.name = cwd, name
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.sweep", *args], cwd=cwd, env=env,
                                         stdout=out, stderr=err, start_new_session=True)
        self.t0 = time.monotonic()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return (f"{self.name}: exit {self.proc.poll()}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"ran over {timeout:.0f} s\n{self.describe()}") from None

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"the driver ended before {what}\n{self.describe()}")
            if time.monotonic() > deadline:
                self.kill_group()
                raise AssertionError(f"no {what} within {timeout:.0f} s\n{self.describe()}")
            time.sleep(0.05)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Scenario:
    """One sweep folder and what happened to it."""

    cwd: Path
    ray_tmp: Path
    spare_tmp: Path  # an empty RAY_TMPDIR for a run that must not start Ray
    env: dict[str, str]
    sweep_file: Path
    pids: Path  # where the trainable notes its starts (RNNSWEEP_TEST_PIDFILE_DIR)
    runs: dict[str, Driver] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    stopped: threading.Event = field(default_factory=threading.Event)  # set at teardown: start nothing more

    @property
    def out(self) -> Path:
        return self.cwd / "out"

    @property
    def pid_dir(self) -> Path:
        return self.pids

    def start(self, name: str, *args: str) -> Driver:
        if self.stopped.is_set():
            raise RuntimeError("the test module is tearing down")
        self.runs[name] = Driver(self.cwd, self.env, self.sweep_file.name, *args, name=name)
        return self.runs[name]

    def starts(self, trial: str) -> list[tuple[int, int]]:
        """(pid, iteration it started from) of every start of `trial` so far."""
        path = self.pid_dir / f"{trial}.starts"
        if not path.exists():
            return []
        return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]

    def checkpoint_written(self, trial: str, n: int) -> Callable[[], bool]:
        index = int(trial[1:])
        pattern = str(self.out / "tune" / f"*_{index:05d}_*" / f"checkpoint_{n:06d}" / "report.json")
        return lambda: bool(glob.glob(pattern))

    def newest_checkpoint(self, trial: str) -> int:
        """The iteration of the newest complete checkpoint of `trial` on disk (0 if none), by the trainable's
        rule: checkpoint.npz loads and report.json names the same iteration."""
        from rnncore import checkpoint as ckpt

        best = 0
        for folder in glob.glob(str(self.out / "tune" / f"*_{int(trial[1:]):05d}_*" / "checkpoint_*")):
            try:
                it = ckpt.load(os.path.join(folder, "checkpoint.npz")).state.iteration
                if json.loads(Path(folder, "report.json").read_text())["iteration"] == it:
                    best = max(best, it)
            except (OSError, ValueError, KeyError):
                continue
        return best

    def trials(self) -> pd.DataFrame:
        return read_trials(self.out)

    def history(self) -> pd.DataFrame:
        return read_history(self.out)

    def mlflow(self, db: str = "mlflow.db") -> tuple[Any, list, dict[str, Any]]:
        """(client, parent runs, {trial_id: child run}); fails if two children share a trial."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{self.cwd / db}")
        exp = client.get_experiment_by_name(FAULT["name"])
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if PARENT_TAG not in r.data.tags]
        children = [r for r in runs if PARENT_TAG in r.data.tags]
        by_trial = {r.data.tags["trial_id"]: r for r in children}
        assert len(by_trial) == len(children), sorted(r.data.tags["trial_id"] for r in children)
        return client, parents, by_trial

    def cleanup(self) -> None:
        self.stopped.set()
        for run in self.runs.values():
            if run.proc.poll() is None:
                run.kill_group()
        kill_run_processes(self.ray_tmp, self.cwd)


def new_scenario(folder: Path, short_tmp, cli_env, pids: Path | None = None) -> Scenario:
    sweep_file = write_sweep(folder, FAULT, corpus())
    pids = pids or folder / "pids"
    pids.mkdir()
    ray_tmp = short_tmp()
    env = cli_env(ray_tmp=ray_tmp, **{PIDFILE_ENV: str(pids)})
    return Scenario(cwd=folder, ray_tmp=ray_tmp, spare_tmp=short_tmp(), env=env, sweep_file=sweep_file, pids=pids)


def mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on the empty `folder`: a disk that fills up for real. None if mounted, else why
    not (mounting needs root)."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}"


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)


def fill_up(folder: Path) -> Path:
    """Write zeros into `folder/filler` until the disk under it is full; returns the file (unlink it to free the
    space)."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


# ---------------------------------------------------------------------------------------------- scenarios


def clean(s: Scenario) -> Scenario:
    """The reference: the same sweep file, uninterrupted (but for a second driver started on its folder, which
    must be refused and touch nothing)."""
    run = s.start("clean")
    run.wait_until("t0001's first checkpoint", s.checkpoint_written("t0001", 0))
    second = subprocess.run([sys.executable, "-m", "pipeline.sweep", s.sweep_file.name], cwd=s.cwd,
                            env={**s.env, "RAY_TMPDIR": str(s.spare_tmp)}, capture_output=True, text=True, timeout=120)
    s.facts["second"] = (second, run.proc.pid, run.proc.poll(), list(s.spare_tmp.iterdir()))
    s.facts["rc"] = run.wait()
    return s


def disk_full(s: Scenario) -> Scenario | None:
    """The sweep's folder -- sweep file, corpus, MLflow store, output -- on a tmpfs that fills up mid-sweep."""
    run = s.start("run")
    run.wait_until("t0002's second checkpoint", s.checkpoint_written("t0002", 1))
    filler = fill_up(s.cwd)
    t_full = time.monotonic()
    s.facts["rc"] = run.wait(timeout=120)
    s.facts["stop_s"] = time.monotonic() - t_full
    s.facts["trials_before"] = s.trials() if (s.out / "trials.parquet").exists() else None
    filler.unlink()
    resumed = s.start("resume", "--resume")
    s.facts["resume_rc"] = resumed.wait()
    return s


def worker_kill(s: Scenario) -> Scenario:
    run = s.start("run")
    run.wait_until("t0001's second checkpoint", s.checkpoint_written("t0001", 1))
    pid, _ = s.starts("t0001")[-1]
    os.kill(pid, signal.SIGKILL)
    s.facts["killed_pid"] = pid
    s.facts["rc"] = run.wait()
    return s


def driver_kill(s: Scenario, sig: signal.Signals) -> Scenario:
    run = s.start("run")
    run.wait_until("t0002's second checkpoint", s.checkpoint_written("t0002", 1))
    t_kill = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    else:  # SIGTERM: what docker stop and Kubernetes send; SIGKILL: Ray's processes are orphaned
        os.kill(run.proc.pid, sig)  # the driver alone
    s.facts["rc"] = run.wait(timeout=120)
    s.facts["stop_s"] = time.monotonic() - t_kill
    if sig != signal.SIGKILL:  # Ray's processes go with the driver: the last may take a moment to finish exiting
        s.facts["at_exit"] = [named(p) for p in run_pids(s.ray_tmp, s.cwd)]
        s.facts["gone_s"] = seconds_until_gone(s.ray_tmp, s.cwd, timeout=EXIT_GRACE_S)
    s.facts["orphans"] = kill_run_processes(s.ray_tmp, s.cwd)  # before looking at checkpoints: none may follow
    s.facts["starts_before"] = {t: s.starts(t) for t in TRIALS}
    s.facts["newest_t0002"] = s.newest_checkpoint("t0002")
    s.facts["trials_before"] = s.trials() if (s.out / "trials.parquet").exists() else None
    for f in s.cwd.glob("mlflow.db*"):  # the MLflow store as the kill left it (with any SQLite journal)
        shutil.copyfile(f, s.cwd / f.name.replace("mlflow.db", "mlflow-at-kill.db"))
    if sig == signal.SIGKILL:
        # running the file again without --resume must refuse, touching nothing and starting no Ray
        before = sorted(str(p) for p in s.out.rglob("*"))
        proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", s.sweep_file.name], cwd=s.cwd,
                              env={**s.env, "RAY_TMPDIR": str(s.spare_tmp)}, capture_output=True, text=True,
                              timeout=120)
        s.facts["no_resume"] = (proc, before == sorted(str(p) for p in s.out.rglob("*")),
                                list(s.spare_tmp.iterdir()))
    resumed = s.start("resume", "--resume")
    s.facts["resume_rc"] = resumed.wait()
    return s


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, short_tmp, cli_env) -> Iterator[dict[str, Future]]:
    """Every Ray scenario of this module, started at once, two at a time, in background threads."""
    made: dict[str, Scenario] = {}
    mounted: list[Path] = []

    def make(name: str) -> Scenario:
        made[name] = new_scenario(tmp_path_factory.mktemp(name), short_tmp, cli_env)
        return made[name]

    def on_tmpfs(name: str) -> Scenario | str:
        folder = tmp_path_factory.mktemp(name)
        (folder / "disk").mkdir()
        why_not = mount_tmpfs(folder / "disk", "64m")
        if why_not:
            return why_not
        mounted.append(folder / "disk")
        made[name] = new_scenario(folder / "disk", short_tmp, cli_env, pids=folder / "pids")
        return made[name]

    def run_on(scenario: Callable[[Scenario], Scenario], s: Scenario | str) -> Scenario | str:
        return s if isinstance(s, str) else scenario(s)

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {
        "clean": pool.submit(clean, make("clean")),
        "worker": pool.submit(worker_kill, make("worker")),
        "sigint": pool.submit(driver_kill, make("sigint"), signal.SIGINT),
        "sigterm": pool.submit(driver_kill, make("sigterm"), signal.SIGTERM),
        "sigkill": pool.submit(driver_kill, make("sigkill"), signal.SIGKILL),
        "disk_full": pool.submit(run_on, disk_full, on_tmpfs("disk_full")),
    }
    try:
        yield futures
    finally:
        for s in made.values():  # stop whatever still runs (a failed test), then wait for the threads
            s.cleanup()
        pool.shutdown(wait=True, cancel_futures=True)
        for s in made.values():
            s.cleanup()
        for folder in mounted:
            unmount(folder)


def result(futures: dict[str, Future], name: str) -> Scenario:
    s = futures[name].result(timeout=900)
    if isinstance(s, str):  # the scenario could not be set up here, and says why
        pytest.skip(s)
    return s


# ---------------------------------------------------------------------------------------------- checks


def assert_same_results(s: Scenario, ref: Scenario) -> None:
    """Tables equal to the uninterrupted sweep's: same rows, same statuses, the same numbers bit for bit."""
    t, r = s.trials(), ref.trials()
    assert list(t["trial_id"]) == list(r["trial_id"]) == TRIALS
    assert dict(zip(t["trial_id"], t["status"])) == FINAL_STATUS
    for col in ("learning_rate", "seed", "iterations", "train_loss", "val_loss", "val_bpc", "min_val_loss",
                "sample", "error"):
        pd.testing.assert_series_equal(t[col], r[col], check_exact=True, obj=col)
    h, hr = s.history(), ref.history()
    assert list(zip(h["trial_id"], h["iteration"])) == list(zip(hr["trial_id"], hr["iteration"]))
    for col in ("train_loss", "val_loss", "val_bpc"):
        pd.testing.assert_series_equal(h[col], hr[col], check_exact=True, obj=col)
    assert not (s.out / ".history.jsonl").exists()  # the journal is emptied by the final write


def assert_mlflow_complete(s: Scenario) -> None:
    """One parent, FINISHED; one child per trial, in its final state, none RUNNING; every metric once per step,
    with the history's values."""
    client, parents, children = s.mlflow()
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert sorted(children) == TRIALS
    t, h = s.trials().set_index("trial_id"), s.history()
    for tid, run in children.items():
        assert run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.info.run_id == t.loc[tid, "mlflow_run_id"]
        assert run.info.status == MLFLOW_STATUS[FINAL_STATUS[tid]], (tid, run.info.status)
        assert run.data.tags["rnnsweep.status"] == FINAL_STATUS[tid]
        rows = h[h["trial_id"] == tid]
        for key in METRICS:
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            steps = [m.step for m in hist]
            assert len(steps) == len(set(steps)), (tid, key, steps)  # a repeated report was not logged twice
            want = rows[rows[key].notna()]
            assert steps == list(want["iteration"]), (tid, key)
            assert [m.value for m in hist] == list(want[key]), (tid, key)


# ------------------------------------------------------------------------------------ 1. worker killed


@pytest.mark.slow
def test_worker_killed_mid_trial_restarts_from_its_checkpoint(scenarios) -> None:
    ref, s = result(scenarios, "clean"), result(scenarios, "worker")
    assert ref.facts["rc"] == 0, ref.runs["clean"].describe()
    assert s.facts["rc"] == 0, s.runs["run"].describe()
    starts = s.starts("t0001")
    assert len(starts) == 2, starts
    (pid1, it1), (pid2, it2) = starts
    assert pid1 == s.facts["killed_pid"] and pid2 != pid1
    assert it1 == 0 and it2 >= EVAL_EVERY and it2 % EVAL_EVERY == 0, starts  # from a checkpoint, not from scratch
    assert "t0001: worker failed" in s.runs["run"].stdout and "restarting it from its newest checkpoint" in \
        s.runs["run"].stdout
    for tid in ("t0002", "t0003"):
        assert [it for _, it in s.starts(tid)] == [0]
    assert_same_results(s, ref)
    assert_mlflow_complete(s)  # the same child run went on: one per trial, metrics once per step


# ------------------------------------------------------------------------------------ 2. driver killed


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_ctrl_c_stops_the_sweep_within_seconds_and_says_how_to_resume(scenarios, how: str) -> None:
    """Ctrl-C (SIGINT to the process group), and SIGTERM to the driver alone (docker stop, Kubernetes), alike."""
    s, ref = result(scenarios, how), result(scenarios, "clean")
    run = s.runs["run"]
    print(f"\n{how.upper()} -> driver exit: {s.facts['stop_s']:.1f} s")
    assert s.facts["rc"] == 130, run.describe()
    assert s.facts["stop_s"] < 30, run.describe()  # a few seconds on an idle machine
    assert f"python -m pipeline.sweep {s.sweep_file} --resume" in run.stderr, run.describe()
    gone = "not all gone" if s.facts["gone_s"] is None else f"all gone {s.facts['gone_s']:.1f} s later"
    print(f"Ray processes of the run alive as the driver exited: {s.facts['at_exit']}; {gone}")
    assert s.facts["orphans"] == [], f"Ray processes outlived the driver by {EXIT_GRACE_S} s: {s.facts['orphans']}"

    # the tables hold what finished, and the interrupted trial's newest report
    t = s.facts["trials_before"].set_index("trial_id")
    assert dict(t["status"]) == {"t0000": "diverged", "t0001": "finished", "t0002": "interrupted"}
    assert t.loc["t0001", "val_loss"] == ref.trials().set_index("trial_id").loc["t0001", "val_loss"]
    assert 0 < t.loc["t0002", "iterations"] < ITERATIONS
    # MLflow: the open runs were marked KILLED, nothing is left RUNNING
    _, parents, children = s.mlflow("mlflow-at-kill.db")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert {tid: r.info.status for tid, r in children.items()} == {"t0000": "FAILED", "t0001": "FINISHED",
                                                                  "t0002": "KILLED"}
    assert children["t0002"].data.tags["rnnsweep.status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "sigterm", "sigkill"])
def test_resume_after_the_driver_was_killed_finishes_the_sweep(scenarios, how: str) -> None:
    s, ref = result(scenarios, how), result(scenarios, "clean")
    assert ref.facts["rc"] == 0, ref.runs["clean"].describe()
    assert s.facts["rc"] == (-signal.SIGKILL if how == "sigkill" else 130), s.runs["run"].describe()
    assert s.facts["resume_rc"] == 0, s.runs["resume"].describe()
    before = s.facts["starts_before"]
    assert [it for _, it in before["t0002"]] == [0] and before["t0003"] == []  # the kill hit t0002 mid-trial

    # diverged and finished trials are not trained again: Tune knows they ended, or (its state saved before
    # that) they restart at their last iteration and only send their final report once more
    final = ref.trials().set_index("trial_id")["iterations"]
    for tid in ("t0000", "t0001"):
        again = s.starts(tid)[len(before[tid]):]
        assert all(it == final[tid] for _, it in again), (tid, again)
        if how != "sigkill":  # a graceful stop saves Tune's state: they are not even started
            assert again == [], (tid, again)
    # the interrupted one continues from its newest checkpoint on disk, the pending one starts
    again = s.starts("t0002")[len(before["t0002"]):]
    assert [it for _, it in again] == [s.facts["newest_t0002"]] and s.facts["newest_t0002"] >= EVAL_EVERY, again
    assert [it for _, it in s.starts("t0003")] == [0]

    assert_same_results(s, ref)
    assert_mlflow_complete(s)  # runs re-attached by trial id, the parent by sweep id: no duplicates


@pytest.mark.slow
def test_after_a_sigkill_rerunning_without_resume_refuses_and_names_both_choices(scenarios) -> None:
    s = result(scenarios, "sigkill")
    print(f"\nSIGKILL of the driver left {len(s.facts['orphans'])} Ray process(es) of its run; killed by PID")
    proc, untouched, ray_files = s.facts["no_resume"]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.count("error:") == 1, proc.stderr
    assert "--resume" in proc.stderr and "new folder" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert untouched and ray_files == []
    # what a SIGKILL leaves is readable: the tables as of the last trial that ended
    t = s.facts["trials_before"].set_index("trial_id")
    assert {"t0000", "t0001"} <= set(t.index) and t.loc["t0001", "status"] == "finished"


@pytest.mark.slow
def test_a_second_driver_on_a_folder_in_use_is_refused_naming_the_first(scenarios) -> None:
    """The same sweep file started again while its driver runs: exit 2 naming that driver's PID, no Ray started,
    the first driver unharmed. The lock dies with its process: after a SIGKILL, --resume takes the folder."""
    s, killed = result(scenarios, "clean"), result(scenarios, "sigkill")
    second, first_pid, first_alive, ray_files = s.facts["second"]
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith("error:") and "Traceback" not in second.stderr, second.stderr
    assert f"in use by another sweep driver (PID {first_pid})" in second.stderr, second.stderr
    assert first_alive is None and ray_files == []
    assert s.facts["rc"] == 0, s.runs["clean"].describe()  # and its results are the reference of every scenario
    assert killed.facts["resume_rc"] == 0, killed.runs["resume"].describe()


# ------------------------------------------------------------------------------------ 3. a full disk


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_sweep_stops_it_like_ctrl_c_and_resume_finishes_it(scenarios) -> None:
    """The tmpfs holding the sweep filled to the last byte mid-trial: one line naming the full disk and the way
    on, exit 130 within seconds, no trial retried, the tables kept (it used to print 476 lines, retry the
    trials for nothing and exit 1). With the space freed, --resume ends as the uninterrupted sweep did."""
    s, ref = result(scenarios, "disk_full"), result(scenarios, "clean")
    run = s.runs["run"]
    print(f"\ndisk full -> driver exit {s.facts['rc']} after {s.facts['stop_s']:.1f} s; stderr: {run.stderr!r}")
    assert s.facts["rc"] == 130, run.describe()
    assert s.facts["stop_s"] < 30, run.describe()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing "), run.describe()
    assert lines[0].endswith(f"free space, then finish with  python -m pipeline.sweep {s.sweep_file} --resume")
    assert "worker failed" not in run.stdout, run.describe()  # a full disk is no worker failure to retry
    # the table on the full disk reads back whole: the trials that ended, and t0002 if there was room for it
    status = dict(s.facts["trials_before"][["trial_id", "status"]].values)
    assert status.pop("t0002", "interrupted") == "interrupted" and status == {"t0000": "diverged",
                                                                             "t0001": "finished"}, status

    assert s.facts["resume_rc"] == 0, s.runs["resume"].describe()
    assert_same_results(s, ref)
    assert_mlflow_complete(s)
    # Tune's pickled state holds no copy of the corpus (20,000 characters: 80 kB as int32 ids), which made it
    # 4.4 MB for a 1 MB corpus
    assert (s.out / "tune" / "tuner.pkl").stat().st_size < 16_000


@pytest.mark.slow
@pytest.mark.parametrize("free_kb", [0, 8, 24])
def test_a_sweep_started_on_a_full_disk_stops_with_one_line_and_finishes_once_freed(
        tmp_path: Path, cli_env, short_tmp, run_module, proc_text, free_kb: int) -> None:
    """The output folder on a tmpfs with `free_kb` KB left: nothing to write the folder's lock in (0), Tune's
    tuner.pkl cut short (8), Tune's experiment state cut short (24; the sizes as measured with this sweep). Each
    stops with exit 130 and one line; with the space freed, the command it names finishes the sweep -- Tune's
    state that the full disk cut short is written again or set aside, and a note says so."""
    disk, work = tmp_path / "disk", tmp_path / "work"
    disk.mkdir(), work.mkdir()
    why_not = mount_tmpfs(disk, "4m")
    if why_not:
        pytest.skip(why_not)
    try:
        write_sweep(work, {**SHORT, "output": str(disk / "out")}, corpus())
        env = cli_env(ray_tmp=short_tmp())
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - free_kb * 1024)))
        first = run_module("pipeline.sweep", "sweep.yaml", cwd=work, env=env, timeout=300)
        print(f"\n{free_kb} KB free: exit {first.returncode}; {first.stderr.strip()}")
        assert first.returncode == 130, proc_text(first)
        lines = first.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing "), proc_text(first)
        command = lines[0].split("finish with  ")[1].split()
        assert command[:4] == ["python", "-m", "pipeline.sweep", str(work / "sweep.yaml")], command
        (disk / "filler").unlink()
        again = run_module(*command[2:], cwd=work, env=env, timeout=300)
        print(f"then {' '.join(command[3:])}: exit {again.returncode}; {again.stderr.strip()}")
        assert again.returncode == 0, proc_text(again)
        assert "Traceback" not in again.stderr and "ERROR" not in again.stderr, proc_text(again)
        t = read_trials(disk / "out")
        assert list(t["status"]) == ["finished", "finished"], t
    finally:
        unmount(disk)


# ------------------------------------------------------------------------------------ 4. atomic tables


WRITER = r"""
import sys, pyarrow as pa
from pathlib import Path
from pipeline.results import _write_atomic
path, rows = Path(sys.argv[1]), int(sys.argv[2])
version = 0
while True:
    version += 1
    n = rows + version % 7 * 1000  # each version has its own length and contents
    table = pa.table({"version": pa.array([version] * n, pa.int64()),
                      "x": pa.array(range(version, version + n), pa.int64()),
                      "s": pa.array([f"row {i} of version {version}" for i in range(n)])})
    _write_atomic(table.replace_schema_metadata({"version": str(version), "rows": str(n)}), path)
    print(version, flush=True)
"""


def test_a_killed_table_writer_never_leaves_a_torn_parquet_file(tmp_path: Path, cli_env) -> None:
    """SIGKILL a process that rewrites a large table in a loop, at random moments: the file always reads back
    whole, and is exactly one version that was written (the newest completed one, or the one being written)."""
    path = tmp_path / "trials.parquet"
    rng = random.Random(0)
    torn_moments, attempts = 0, 0
    # a kill lands mid-write only some of the time (building each version takes time too): keep killing, at
    # least 6 times, until 2 kills have landed mid-write (bounded, so a broken writer still ends the test)
    while attempts < 6 or (torn_moments < 2 and attempts < 40):
        attempts += 1
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "200000"], cwd=tmp_path, env=cli_env(),
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            first = proc.stdout.readline().strip()
            assert first, "the writer wrote nothing"  # at least one version is complete
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            finished = [int(first)] + [int(v) for v in proc.stdout.read().split()]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.stdout.close()
        leftovers = list(tmp_path.glob(".trials.parquet.*.tmp"))
        torn_moments += bool(leftovers)  # killed mid-write: the half-written temp file is all that is torn
        table = pq.read_table(path)  # raises on a truncated file
        meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        version, rows = int(meta["version"]), int(meta["rows"])
        assert version in (finished[-1], finished[-1] + 1)  # the newest complete write, or the one under way
        assert table.num_rows == rows == 200000 + version % 7 * 1000
        assert table.column("version").to_pylist() == [version] * rows
        assert table.column("x").to_pylist() == list(range(version, version + rows))
        for leftover in leftovers:
            leftover.unlink()
    assert torn_moments >= 1, f"no kill in {attempts} landed during a write; the test proved nothing"


def test_reports_survive_a_driver_kill_through_the_journal(tmp_path: Path) -> None:
    """The tables are rewritten when a trial ends; a report that arrives in between is in the journal, so a
    resumed driver has it. A repeated report (same trial, same iteration) is recorded once."""
    from pipeline.results import ResultsTable

    row = lambda it: {"iteration": it, "train_loss": 3.0 - it / 100, "val_loss": 3.1 - it / 100,  # noqa: E731
                      "val_bpc": 4.0, "chars_per_sec": 1e5 + it, "elapsed_s": it / 10}
    first = ResultsTable(tmp_path, sweep_text="name: x\n")
    assert first.add_report("t0000", row(10)) and first.add_report("t0000", row(20))
    first.set_trial("t0000", {"status": "running"})
    first.write()
    assert not first.journal_path.exists()
    assert first.add_report("t0000", row(30)) and first.add_report("t0001", row(10))
    assert not first.add_report("t0000", {**row(30), "chars_per_sec": 1.0})  # a repeat: the first one stays
    with open(first.journal_path, "a") as f:
        f.write('{"trial_id": "t0001", "itera')  # the kill cut this line short
    (tmp_path / ".history.parquet.abc.tmp").write_bytes(b"PAR1 half a table")  # and that write
    del first  # SIGKILL: nothing more is written

    second = ResultsTable(tmp_path, sweep_text="name: x\n")
    second.load_existing()
    assert sorted(second.history) == [("t0000", 10), ("t0000", 20), ("t0000", 30), ("t0001", 10)]
    assert second.history[("t0000", 30)]["chars_per_sec"] == row(30)["chars_per_sec"]
    assert second.trials["t0000"]["status"] == "running"
    assert not (tmp_path / ".history.parquet.abc.tmp").exists()
    assert not second.add_report("t0000", row(30)) and second.add_report("t0000", row(40))
    second.write()
    h = pq.read_table(second.history_path).to_pandas()
    assert list(zip(h["trial_id"], h["iteration"])) == [("t0000", 10), ("t0000", 20), ("t0000", 30),
                                                        ("t0000", 40), ("t0001", 10)]


def test_a_trials_starting_values_survive_a_driver_kill_through_the_journal(tmp_path: Path) -> None:
    """Before any trial ends there is no trials.parquet, and a resumed driver sees each trial's config as PBT
    left it: the values a trial started with come back from the journal, and a written table keeps its own."""
    from pipeline.results import ResultsTable

    first = ResultsTable(tmp_path, sweep_text="name: x\n")
    first.start_trial("t0000", {"learning_rate": 0.00129, "hidden_size": 64})
    first.set_trial("t0000", {"status": "running"})
    first.add_report("t0000", {"iteration": 100, "train_loss": 3.0, "val_loss": 3.1, "val_bpc": 4.4,
                               "chars_per_sec": 1e4, "elapsed_s": 1.0, "lr": 0.00129})
    first.start_trial("t0001", {"learning_rate": 0.2, "hidden_size": 64})
    with open(first.journal_path, "a") as f:
        f.write('{"trial_id": "t0002", "start": {"learning_ra')  # the kill cut this line short
    del first  # SIGKILL: no table was ever written

    second = ResultsTable(tmp_path, sweep_text="name: x\n")
    second.load_existing()
    assert second.trials == {"t0000": {"trial_id": "t0000", "learning_rate": 0.00129, "hidden_size": 64},
                             "t0001": {"trial_id": "t0001", "learning_rate": 0.2, "hidden_size": 64}}
    assert sorted(second.history) == [("t0000", 100)]
    second.set_trial("t0000", {"status": "finished", "final_lr": 0.0419})
    second.write()  # the table now holds the row; the journal is emptied

    third = ResultsTable(tmp_path, sweep_text="name: x\n")
    third.load_existing()
    assert third.trials["t0000"]["learning_rate"] == 0.00129 and third.trials["t0000"]["status"] == "finished"


@pytest.mark.slow  # builds an MLflow store
def test_a_new_driver_reattaches_the_parent_and_child_runs_and_skips_logged_steps(tmp_path: Path) -> None:
    """Child runs carry the sweep tag too, and start after the parent: the parent is the tagged run without a
    parent of its own. A step MLflow already has is not logged again, by this driver or the next."""
    from pipeline.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one = Tracker(uri=uri, experiment="reattach", sweep_id="s1")
    parent = one.start_sweep(name="reattach", params={"seed": 0}, sweep_text="name: reattach\n", resume=False)
    a = one.trial_run(trial_id="t0000", name="t0000-a", params={"h": 8})
    b = one.trial_run(trial_id="t0001", name="t0001-b", params={"h": 16})
    assert one.log_metrics(a, {"val_loss": 3.0, "train_loss": 3.1}, step=100)
    assert one.log_metrics(a, {"val_loss": 2.5, "train_loss": 2.6}, step=200)
    assert not one.log_metrics(a, {"val_loss": 9.9, "train_loss": 9.9}, step=200)  # restarted worker's repeat
    assert one.trial_run(trial_id="t0000", name="t0000-a", params={"h": 8}) == a  # a retry in this driver

    two = Tracker(uri=uri, experiment="reattach", sweep_id="s1")  # the driver after a kill, with --resume
    assert two.start_sweep(name="reattach", params={"seed": 0}, sweep_text="", resume=True) == parent
    assert two.trial_run(trial_id="t0000", name="t0000-a", params={"h": 8}) == a
    assert two.trial_run(trial_id="t0001", name="t0001-b", params={"h": 16}) == b
    assert not two.log_metrics(a, {"val_loss": 9.9, "train_loss": 9.9}, step=200)
    assert two.log_metrics(a, {"val_loss": 2.0, "train_loss": 2.1}, step=300)
    c = two.trial_run(trial_id="t0002", name="t0002-c", params={"h": 32})
    two.end_run(a, "finished", {"note": "x" * 3000})
    for run in (b, c):
        two.end_run(run, "interrupted")
    two.finish_sweep(status="FINISHED", best=None, files=[])

    client = two.client
    runs = client.search_runs([two.experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted([parent, a, b, c])
    assert all(r.info.status != "RUNNING" for r in runs)
    hist = sorted(client.get_metric_history(a, "val_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(100, 3.0), (200, 2.5), (300, 2.0)]
    assert client.get_run(a).data.tags["note"] == "x" * 3000


# ------------------------------------------------------------------------------------ 5. hostile input


BAD_BASE: dict[str, Any] = {**FAULT, "name": "bad", "train": {**FAULT["train"], "iterations": 50, "eval_every": 25,
                                                              "sample_every": 0, "learning_rate": 0.1}}


def torn_table(name: str) -> Callable[[Path], None]:
    """Setup: an output folder whose table `name` is cut short (Tune's state beside it)."""
    def setup(folder: Path) -> None:
        (folder / "out" / "tune").mkdir(parents=True)
        (folder / "out" / name).write_bytes(b"PAR1 half a table")
    return setup


# id, the sweep file (a change to BAD_BASE, or raw text), corpus bytes, setup, extra CLI args, words in stderr
HOSTILE = [
    pytest.param("name: bad\ntrain:\n  hidden_size: 8\n   seq_length: 16\n", None, None, [],
                 ["invalid YAML at line 4, column 14"], id="yaml-syntax-error"),
    pytest.param("- name: bad\n- output: out\n", None, None, [], ["(top level): must be a mapping", "list"],
                 id="not-a-mapping"),
    pytest.param(edit(train__seq_length={"choice": []}), None, None, [],
                 ["train.seq_length.choice", "at least one value"], id="empty-choice"),
    pytest.param(edit(train__hidden_size={"grid_search": []}), None, None, [],
                 ["train.hidden_size.grid_search"], id="empty-grid"),
    pytest.param(edit(num_samples=0), None, None, [], ["num_samples: must be >= 1"], id="num-samples-0"),
    pytest.param(edit(), b"", None, [], ["data.path", "empty"], id="corpus-empty"),
    pytest.param(edit(), b"abc" * 500 + b"\xff\xfe" + b"abc" * 500, None, [], ["data.path", "UTF-8", "0xff"],
                 id="corpus-not-utf8"),
    pytest.param(edit(), b"First Citizen: speak.\n" * 2, None, [], ["train.seq_length", "training split"],
                 id="corpus-shorter-than-a-sequence"),
    pytest.param(edit(), None, None, ["--resume"], ["--resume", "no sweep to resume"], id="resume-without-a-sweep"),
    pytest.param(edit(), None, torn_table("trials.parquet"), ["--resume"],
                 ["out/trials.parquet cannot be read", "move it aside", "--resume", "rebuilt from Tune's saved state"],
                 id="resume-with-a-torn-trials-table"),
    pytest.param(edit(), None, torn_table("history.parquet"), ["--resume"],
                 ["out/history.parquet cannot be read", "move it aside", "--resume", "MLflow runs"],
                 id="resume-with-a-torn-history-table"),
    pytest.param(edit(output="ro/sweep"), None, make_read_only_dir, [], ["output", "not writable"],
                 id="unwritable-output"),
    pytest.param("name: !!python/object/apply:os.system ['touch PWNED']\ndata: {path: corpus.txt}\n", None, None,
                 [], ["python/object/apply:os.system", "line 1"], id="python-tag-is-not-code"),
    pytest.param("name: bad\ndata: {path: corpus.txt}\ntrain:\n  learning_rate: 0.1\n  learning_rate: 0.2\n", None,
                 None, [], ["train.learning_rate: a key must appear once in its mapping", "lines 4 and 5"],
                 id="duplicate-key"),
    pytest.param(edit(mlflow={"tracking_uri": "bogus://x"}), None, None, [],  # was a 43-line traceback, exit 1
                 ["MLflow tracking URI must be one MLflow keeps runs under", "'bogus://x'"], id="tracking-uri-scheme"),
    pytest.param(edit(mlflow={"tracking_uri": "sqlite:///nowhere/mlflow.db"}), None, None, [],
                 ["must name a sqlite file MLflow can write", "nowhere does not exist"], id="tracking-store-no-folder"),
    pytest.param(edit(mlflow={"tracking_uri": "sqlite:///ro/mlflow.db"}), None, make_read_only_dir, [],
                 ["must name a sqlite file MLflow can write", "ro is not writable"], id="tracking-store-read-only"),
    pytest.param(edit(data__path="/dev/zero"), None, None, [], ["data.path", "which is a character device"],
                 id="corpus-is-a-device"),
    pytest.param(edit(), None, lambda folder: (folder / "mlflow.db").write_bytes(bytes(range(256)) * 64), [],
                 ["must name a sqlite file MLflow can write", "(file is not a database)", "move it aside"],
                 id="tracking-store-not-a-database"),  # was a traceback, exit 1, after Ray started
    pytest.param(edit(train__hidden_size={"choice": [64, 100000]}), None, None, [],  # was 3 tracebacks, exit 1
                 ["train: a trial needs about", "hidden_size 100000", "more than this machine has"],
                 id="trial-larger-than-this-machine"),
]


@pytest.mark.parametrize("sweep, corpus_bytes, setup, args, words", HOSTILE)
def test_hostile_sweep_input_exits_2_with_one_message_and_touches_nothing(
        sweep, corpus_bytes, setup, args: list[str], words: list[str], tmp_path: Path, run_module, cli_env,
        fresh_ray_tmpdir, snapshot, proc_text) -> None:
    if setup:
        setup(tmp_path)
    if setup is make_read_only_dir and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("chmod does not stop this user from writing (running as root); tests/test_config.py checks "
                    "the same rule with os.access patched")
    write_sweep(tmp_path, sweep if isinstance(sweep, str) else sweep(copy.deepcopy(BAD_BASE)),
                corpus_bytes if corpus_bytes is not None else corpus(5000).encode())
    before = snapshot(tmp_path)
    proc = run_module("pipeline.sweep", "sweep.yaml", *args, cwd=tmp_path, env=cli_env(ray_tmp=fresh_ray_tmpdir),
                      timeout=120)
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.startswith("error:") and proc.stderr.count("error:") == 1, proc_text(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc_text(proc)
    for word in words:
        assert word in proc.stderr, proc_text(proc)
    assert snapshot(tmp_path) == before  # no output folder, no mlflow.db, no mlruns
    assert list(fresh_ray_tmpdir.iterdir()) == []  # Ray never started
    assert not (tmp_path / "PWNED").exists()  # no value of the file ran as code


def test_dry_run_shows_each_trials_memory_and_refuses_a_trial_larger_than_this_machine(
        tmp_path: Path, run_module, cli_env, fresh_ray_tmpdir, proc_text) -> None:
    """The plan says how much memory the largest trial needs; one that cannot fit this machine fails --dry-run
    already (exit 2, the plan still printed), as the run itself would, before Ray starts."""
    write_sweep(tmp_path, edit(train__hidden_size={"grid_search": [16, 32]})(copy.deepcopy(BAD_BASE)), corpus(5000))
    ok = run_module("pipeline.sweep", "sweep.yaml", "--dry-run", cwd=tmp_path, env=cli_env(ray_tmp=fresh_ray_tmpdir))
    assert ok.returncode == 0, proc_text(ok)
    assert re.search(r"memory: +up to about \d+ MiB for a trial \(.*hidden_size 32\b", ok.stdout), ok.stdout
    write_sweep(tmp_path, edit(train__hidden_size=100000)(copy.deepcopy(BAD_BASE)))
    big = run_module("pipeline.sweep", "sweep.yaml", "--dry-run", cwd=tmp_path, env=cli_env(ray_tmp=fresh_ray_tmpdir))
    assert big.returncode == 2 and "Sweep 'bad'" in big.stdout, proc_text(big)
    assert big.stderr.startswith("error: train: a trial needs about 199.1 GiB of memory (") and \
        "more than this machine has" in big.stderr, proc_text(big)
    assert list(fresh_ray_tmpdir.iterdir()) == []


def test_yaml_alias_bomb_exits_2_at_once_with_a_short_message(tmp_path: Path, cli_env, fresh_ray_tmpdir,
                                                              snapshot, proc_text) -> None:
    """A "billion laughs" inside a valid key (435 million values in 500 bytes), under a 1 GiB address-space cap:
    refused before anything walks the value. It used to take 10 s and 1.8 GB at depth 8 and print a 351 MB
    message (the value was repr'd before it was shortened), and to be OOM-killed at depth 9."""
    import resource

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    write_sweep(tmp_path, alias_bomb(8), corpus(5000).encode())
    before = snapshot(tmp_path)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "sweep.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, preexec_fn=cap_memory, env=cli_env(ray_tmp=fresh_ray_tmpdir))
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc_text(proc)
    assert len(proc.stderr) < 2000 and proc.stdout == "", proc_text(proc)
    assert "yaml: aliases (*name) may expand the file to at most 100,000 values" in proc.stderr, proc_text(proc)
    assert elapsed < 10, f"{elapsed:.1f} s"  # about 1 s, most of it Python's start
    assert snapshot(tmp_path) == before and list(fresh_ray_tmpdir.iterdir()) == []


def _evil_pickle(marker: Path) -> bytes:
    """A pickle that runs `touch marker` when unpickled."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    import numpy as np

    files = {"text": folder / "text.npz", "pickle": folder / "pickle.npz", "object-array": folder / "object.npz",
             "no-weights": folder / "empty.npz"}
    files["text"].write_text("this is not a checkpoint\n")
    files["pickle"].write_bytes(_evil_pickle(folder / "PWNED"))
    np.savez(files["object-array"], Wxh=np.array([{"a": 1}, None], dtype=object))
    np.savez(files["no-weights"], x=np.zeros(3))
    return files


@pytest.mark.parametrize("kind", ["text", "pickle", "object-array", "no-weights"])
def test_rnncore_sample_refuses_a_file_that_is_not_a_checkpoint(kind: str, tmp_path: Path, run_module,
                                                                proc_text) -> None:
    path = _bad_checkpoints(tmp_path)[kind]
    proc = run_module("rnncore.sample", path, "--length", "5", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.startswith("error:") and str(path) in proc.stderr, proc_text(proc)
    assert "rnncore checkpoint" in proc.stderr or "lacks" in proc.stderr, proc_text(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "PWNED").exists()  # loaded with allow_pickle=False: nothing was unpickled


@pytest.mark.slow  # builds an MLflow store
def test_pipeline_sample_refuses_a_logged_checkpoint_that_is_not_one(tmp_path: Path, run_module, cli_env,
                                                                     proc_text) -> None:
    """A trial whose logged model/checkpoint.npz is a malicious pickle: clear error, nothing unpickled."""
    from mlflow.tracking import MlflowClient

    from pipeline.results import ResultsTable

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bad", artifact_location=str(tmp_path / "mlruns"))
    run = client.create_run(exp).info.run_id
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "checkpoint.npz").write_bytes(_evil_pickle(tmp_path / "PWNED"))
    client.log_artifact(run, str(tmp_path / "model" / "checkpoint.npz"), "model")
    client.set_terminated(run)
    table = ResultsTable(tmp_path / "out", sweep_text=yaml.safe_dump({**FAULT, "name": "bad"}))
    table.set_trial("t0000", {"status": "finished", "mlflow_run_id": run, "val_loss": 2.0, "val_bpc": 2.9,
                              "iterations": 10, "target_iterations": 10})
    table.write()
    proc = run_module("pipeline.sample", "out", "--trial", "t0000", "--tracking-uri", uri, cwd=tmp_path,
                      env=cli_env(), timeout=120)
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.startswith("error:") and "t0000" in proc.stderr and "not an rnncore checkpoint" in \
        proc.stderr, proc_text(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------------------ 6. load


LOAD: dict[str, Any] = {
    "name": "load",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {"hidden_size": 8, "learning_rate": {"loguniform": [0.01, 0.1]}, "seq_length": 8, "batch_size": 2,
              "dtype": "float32", "iterations": 20, "eval_every": 10, "sample_every": 0, "sample_length": 10},
    "num_samples": 200,
    "seed": 1,
    "metric": "val_loss",
    "mode": "min",
    "scheduler": {"type": "fifo"},
    "max_concurrent_trials": 2,
    "output": "out",
}


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.mark.slow
def test_200_short_trials_complete_with_flat_driver_memory(tmp_path: Path, cli_env, short_tmp) -> None:
    write_sweep(tmp_path, LOAD, corpus(5000))
    ray_tmp = short_tmp()
    t0 = time.monotonic()
    with open(tmp_path / "driver.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.sweep", "sweep.yaml"], cwd=tmp_path,
                                env=cli_env(ray_tmp=ray_tmp), stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
    peak, rss, done = [0], {}, re.compile(r"\]\s+(\d+)/200 done")

    def sample_peak() -> None:  # VmHWM: the driver's own peak resident set, read until it exits
        while proc.poll() is None:
            peak[0] = max(peak[0], _status_kb(proc.pid, "VmHWM"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample_peak, daemon=True)
    sampler.start()
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            m = done.search(line)
            if m and int(m.group(1)) >= 100 and 100 not in rss:
                rss[100] = _status_kb(proc.pid, "VmRSS")
            if m and int(m.group(1)) == 200:
                rss[200] = _status_kb(proc.pid, "VmRSS")
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_run_processes(ray_tmp, tmp_path)
    sampler.join(timeout=5)
    wall = time.monotonic() - t0
    text = "".join(out)
    assert rc == 0, f"exit {rc}\n{text[-3000:]}\n{(tmp_path / 'driver.err').read_text()[-3000:]}"
    print(f"\n200 trials: {wall:.0f} s; driver peak RSS (VmHWM) {peak[0] / 1024:.0f} MB; RSS after 100 trials "
          f"{rss.get(100, 0) / 1024:.0f} MB, after 200 {rss.get(200, 0) / 1024:.0f} MB")

    t = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(t) == 200 == t["trial_id"].nunique() and (t["status"] == "finished").all()
    h = pd.read_parquet(tmp_path / "out" / "history.parquet")
    assert len(h) == 400 and not h.duplicated(["trial_id", "iteration"]).any()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id], max_results=1000)
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(runs) == 201 and len(children) == 200
    assert all(r.info.status == "FINISHED" for r in runs)
    assert set(t["mlflow_run_id"]) == {r.info.run_id for r in children}

    assert 0 < peak[0] < 1.5 * 1024 * 1024, f"driver peak RSS {peak[0] / 1024:.0f} MB"
    assert rss[100] > 0 and rss[200] - rss[100] < 100 * 1024, rss  # flat: the second 100 trials add < 100 MB


# ------------------------------------------------------------------------------------ 6. tables lost


# two short trials, one at a time, a report (and a sample) every 1000 iterations
SHORT: dict[str, Any] = {**FAULT, "name": "short",
                         "train": {**FAULT["train"], "learning_rate": {"grid_search": [0.05, 0.02]},
                                   "iterations": 2000, "sample_every": 1000}}
ROW_COLUMNS = ("trial_id", "status", "mlflow_run_id", "learning_rate", "hidden_size", "seed", "target_iterations",
               "iterations", "train_loss", "val_loss", "val_bpc", "min_val_loss", "mean_chars_per_sec", "wall_s",
               "node_ip", "sample", "error", "final_lr", "exploits")
REPORT_COLUMNS = ("trial_id", "iteration", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "lr")


@pytest.mark.slow
def test_tables_moved_aside_are_rebuilt_by_resume_which_then_finishes(tmp_path: Path, cli_env, short_tmp,
                                                                      run_module, proc_text) -> None:
    """A torn trials.parquet: --resume exits 2 naming it and the way on. Moved aside with history.parquet,
    --resume rebuilds both -- the rows of the trials Tune has as ended from its own record of them, the reports
    from the MLflow runs -- and ends with code 0, as does every --resume after it (it used to exit 130, "finish
    with --resume", forever: a finished trial without a row counted as unfinished)."""
    write_sweep(tmp_path, SHORT, corpus())
    ray_tmp, out = short_tmp(), tmp_path / "out"
    env = cli_env(ray_tmp=ray_tmp)
    try:
        first = run_module("pipeline.sweep", "sweep.yaml", cwd=tmp_path, env=env, timeout=300)
        assert first.returncode == 0, proc_text(first)
        rows, reports = read_trials(out), read_history(out)
        assert list(rows["status"]) == ["finished", "finished"]

        whole = (out / "trials.parquet").read_bytes()
        (out / "trials.parquet").write_bytes(whole[: len(whole) // 2])
        torn = run_module("pipeline.sweep", "sweep.yaml", "--resume", cwd=tmp_path, env=env, timeout=120)
        assert torn.returncode == 2, proc_text(torn)
        assert torn.stderr.startswith("error:") and "Traceback" not in torn.stderr, proc_text(torn)
        for words in ("out/trials.parquet cannot be read", "move it aside", "--resume"):
            assert words in torn.stderr, proc_text(torn)
        assert (out / "trials.parquet").read_bytes() == whole[: len(whole) // 2]  # touched nothing

        (out / "trials.parquet").unlink()
        (out / "history.parquet").rename(tmp_path / "history-aside.parquet")
        for attempt in ("rebuilds", "again"):
            proc = run_module("pipeline.sweep", "sweep.yaml", "--resume", cwd=tmp_path, env=env, timeout=300)
            assert proc.returncode == 0, f"{attempt}: {proc_text(proc)}"
            t, h = read_trials(out), read_history(out)
            for col in ROW_COLUMNS:
                pd.testing.assert_series_equal(t[col], rows[col], check_exact=True, obj=f"{attempt}: {col}")
            for col in ("started_at", "ended_at"):  # Tune's record of when it ended, to the second
                assert ((t[col] - rows[col]).abs() < pd.Timedelta(seconds=3)).all(), (attempt, col, t[col], rows[col])
            for col in REPORT_COLUMNS:
                pd.testing.assert_series_equal(h[col], reports[col], check_exact=True, obj=f"{attempt}: {col}")
    finally:
        kill_run_processes(ray_tmp, tmp_path)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("short").experiment_id], max_results=100)
    children = {r.data.tags["trial_id"]: r for r in runs if PARENT_TAG in r.data.tags}
    assert len(runs) == 3 and sorted(children) == ["t0000", "t0001"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["rnnsweep.status"] for r in children.values()} == {"finished"}


# ------------------------------------------------------------------------------------ 7. tracking server lost


def runs_with_metrics(uri: str, experiment: str) -> list[tuple[Any, dict[str, list]]]:
    """Every run of the experiment, with the history of each report metric."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    return [(r, {k: sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step) for k in METRICS})
            for r in runs]


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_sweep_stops_it_like_ctrl_c(tmp_path: Path, cli_env, short_tmp) -> None:
    """A real `mlflow server`, killed (SIGKILL to its process group) once the first trial reported: within seconds
    the driver stops the trials as on Ctrl-C, prints one line naming the server and the --resume command, and
    exits 130 (it used to retry for about 4 minutes and die with 272 lines of tracebacks). With the server back
    on the same port and store, --resume finishes: every run closed, every report in MLflow once."""
    from test_cluster import Procs, http_ok, start_mlflow_server, wait_for

    home, ray_tmp, spare = tmp_path / "server", short_tmp(), short_tmp()
    home.mkdir()
    first, again = Procs(spare), Procs(spare)  # each server's process group (Ray's processes are found by ray_tmp)
    port = free_port()
    sweep = {**SHORT, "name": "lost-server", "train": {**SHORT["train"], "iterations": 20000},
             "mlflow": {"experiment": "lost-server", "tracking_uri": f"http://127.0.0.1:{port}"}}
    write_sweep(tmp_path, sweep, corpus())
    env = cli_env(ray_tmp=ray_tmp, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    journal = tmp_path / "out" / ".history.jsonl"
    drivers: list[Driver] = []
    try:
        uri = start_mlflow_server(first, home, port, cli_env)
        wait_for("the MLflow server", lambda: http_ok(f"{uri}/health"), first, timeout=90)
        drivers.append(run := Driver(tmp_path, env, "sweep.yaml", name="run"))
        run.wait_until("the first report", lambda: journal.exists() and '"iteration"' in journal.read_text())
        server = first.procs[0][1]
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        t_kill = time.monotonic()
        rc = run.wait(timeout=120)
        stop_s = time.monotonic() - t_kill
        print(f"\ntracking server killed -> driver exit {rc} after {stop_s:.1f} s; stderr:\n{run.stderr}")
        assert rc == 130, run.describe()
        assert stop_s < 30, run.describe()
        said = [line for line in run.stderr.splitlines() if uri in line and "--resume" in line]
        assert len(said) == 1, run.describe()
        assert said[0].startswith("error:") and f"python -m pipeline.sweep {tmp_path / 'sweep.yaml'} --resume" in said[0]
        assert "Traceback" not in run.stdout + run.stderr, run.describe()
        assert "MlflowException" not in run.stderr.replace(said[0], ""), run.describe()
        # kept as on Ctrl-C: the table holds each trial's newest report
        t = read_trials(tmp_path / "out").set_index("trial_id")
        assert t.loc["t0000", "status"] in ("interrupted", "finished") and t.loc["t0000", "iterations"] > 0, t

        start_mlflow_server(again, home, port, cli_env, name="mlflow server again")
        wait_for("the MLflow server again", lambda: http_ok(f"{uri}/health"), again, timeout=90)
        drivers.append(resumed := Driver(tmp_path, env, "sweep.yaml", "--resume", name="resume"))
        assert resumed.wait(timeout=300) == 0, resumed.describe()
        runs = runs_with_metrics(uri, "lost-server")
    finally:
        for driver in drivers:
            if driver.proc.poll() is None:
                driver.kill_group()
        kill_run_processes(ray_tmp, tmp_path)
        first.stop()
        again.stop()

    parents = [r for r, _ in runs if PARENT_TAG not in r.data.tags]
    children = {r.data.tags["trial_id"]: (r, m) for r, m in runs if PARENT_TAG in r.data.tags}
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(children) == ["t0000", "t0001"] and len(children) == len(runs) - 1
    t, h = read_trials(tmp_path / "out").set_index("trial_id"), read_history(tmp_path / "out")
    assert list(t["status"]) == ["finished", "finished"]
    for tid, (r, metrics) in children.items():
        assert r.info.status == "FINISHED" and r.data.tags["rnnsweep.status"] == "finished", (tid, r.info.status)
        assert t.loc[tid, "mlflow_run_id"] == r.info.run_id
        rows = h[h["trial_id"] == tid]
        for key, hist in metrics.items():  # every report once, those that came while the server was gone too
            assert [m.step for m in hist] == list(rows["iteration"]), (tid, key)
            assert [m.value for m in hist] == list(rows[key]), (tid, key)


def test_a_sweep_file_that_is_a_named_pipe_exits_2_at_once(tmp_path: Path, run_module, cli_env, fresh_ray_tmpdir,
                                                           proc_text) -> None:
    """Reading a FIFO nobody writes to blocks for ever (the sweep used to hang there): it is refused by its kind."""
    os.mkfifo(tmp_path / "sweep.yaml")
    proc = run_module("pipeline.sweep", "sweep.yaml", cwd=tmp_path, env=cli_env(ray_tmp=fresh_ray_tmpdir), timeout=60)
    assert proc.returncode == 2, proc_text(proc)
    assert "sweep.yaml: is a named pipe, but a sweep file is needed" in proc.stderr, proc_text(proc)
    assert list(fresh_ray_tmpdir.iterdir()) == []


def test_a_tracking_store_mlflow_cannot_open_exits_2_with_one_line(tmp_path: Path, run_module, cli_env, short_tmp,
                                                                   proc_text) -> None:
    """A SQLite file that reads but that MLflow cannot open (a schema revision it does not know): found only once
    MLflow opens it, after Ray started; one line naming the store, exit 2, no output folder (was a traceback)."""
    import sqlite3

    write_sweep(tmp_path, BAD_BASE, corpus(5000))
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
        db.commit()
    proc = run_module("pipeline.sweep", "sweep.yaml", cwd=tmp_path, env=cli_env(ray_tmp=short_tmp()), timeout=120)
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.strip().splitlines() == [
        f"error: the MLflow tracking store at sqlite:///{tmp_path / 'mlflow.db'} cannot be used (Can't locate "
        "revision identified by '0123456789ab'); repair it or move it aside, or set mlflow.tracking_uri (or "
        "MLFLOW_TRACKING_URI) to another store"], proc_text(proc)
    assert not (tmp_path / "out").exists()


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path | str]:
    """A child cgroup of this process's own, capped at `limit` bytes (cgroup v1's memory controller, or v2's):
    the folder, whose `cgroup.procs` a process joins; or, where none can be made here, why not."""
    lines = Path("/proc/self/cgroup").read_text().splitlines() if Path("/proc/self/cgroup").exists() else []
    made = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            made, limit_file = Path(f"/sys/fs/cgroup/memory{path.rstrip('/')}/rnnsweep-test-{os.getpid()}"), \
                "memory.limit_in_bytes"
        elif controllers == "" and made is None and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            made, limit_file = Path(f"/sys/fs/cgroup{path.rstrip('/')}/rnnsweep-test-{os.getpid()}"), "memory.max"
    if made is None:
        yield "no memory cgroup here"
        return
    try:
        made.mkdir()
        (made / limit_file).write_text(str(limit))
    except OSError as e:
        yield f"cannot make a memory cgroup here: {e}"
        return
    try:
        yield made
    finally:
        made.rmdir()


def test_a_trial_larger_than_the_cgroup_memory_limit_exits_2(tmp_path: Path, cli_env, fresh_ray_tmpdir) -> None:
    """Under a 4 GiB cgroup limit (a container's, a batch job's), hidden_size 12000 (about 5.8 GiB a trial) is
    refused as too large for this machine, before Ray starts (under a 6 GB cap, hidden_size 25000 used to be
    OOM-killed three times over 49 s)."""
    write_sweep(tmp_path, edit(train__hidden_size=12000, train__dtype="float64")(copy.deepcopy(BAD_BASE)),
                corpus(5000))
    with memory_cgroup(4 << 30) as group:
        if isinstance(group, str):
            pytest.skip(group)
        proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", "sweep.yaml"], cwd=tmp_path, timeout=120,
                              env=cli_env(ray_tmp=fresh_ray_tmpdir), capture_output=True, text=True,
                              preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
    assert proc.returncode == 2, proc.stderr
    assert "hidden_size 12000" in proc.stderr and "more than this machine has (4.0 GiB)" in proc.stderr, proc.stderr
    assert list(fresh_ray_tmpdir.iterdir()) == [] and not (tmp_path / "out").exists()


def test_trials_that_fit_alone_but_not_together_get_a_note_with_the_concurrency_that_fits(tmp_path: Path) -> None:
    """Each trial fits a node, but as many as its CPUs allow would not fit together: the driver notes the
    max_concurrent_trials that fits (the kernel's OOM killer would otherwise end their workers)."""
    from pipeline.config import load_sweep
    from pipeline.plan import crowding_note, trial_memory

    sweep = edit(train__hidden_size=4096, train__dtype="float64", num_samples=8,
                 train__learning_rate={"loguniform": [0.01, 0.1]}, max_concurrent_trials=None)(copy.deepcopy(BAD_BASE))
    cfg = load_sweep(write_sweep(tmp_path, sweep, corpus(5000)))
    need, _ = trial_memory(cfg)
    node = {"CPU": 8.0, "memory": float(3 * need + need // 2)}  # room for 3 of the 8 trials
    note = crowding_note(cfg, [node])
    assert note is not None and note.startswith("up to 8 trials at once on a node with ")
    assert "set max_concurrent_trials: 3 " in note, note
    assert crowding_note(cfg, [{**node, "CPU": 3.0}]) is None  # 3 at once fit
    assert crowding_note(cfg, [{**node, "memory": 9.0 * need}]) is None
    capped = load_sweep(write_sweep(tmp_path, {**sweep, "max_concurrent_trials": 2}))
    assert crowding_note(capped, [node]) is None
