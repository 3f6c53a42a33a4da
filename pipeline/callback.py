"""The driver's Tune callback: trial results flow from Tune into MLflow child runs and the Parquet tables.

The tracking store going away (a server stopped, a network cut) stops the sweep as Ctrl-C does: the first tracking
call that fails is remembered, the process sends itself SIGINT (Tune then stops the trials and saves its state), and
from then on the callback records to the tables only. `--resume` later logs to MLflow what it lacks (reports, the
end of trials that ended meanwhile).

A full disk (pipeline.diskfull) stops it the same way: a trial reports that its checkpoint could not be written, or
a table or the journal cannot be written here. The rows stay in memory; what did not reach the disk is written by
`--resume`, from the journal, MLflow and each trial's newest complete checkpoint."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ray import tune

from . import raycompat
from .config import SweepConfig
from .diskfull import describe, disk_full
from .lineage import Lineage
from .results import utc_now
from .vocab import CLOSED, best, finite, run_name, trial_key

REPORT_METRICS = ("train_loss", "val_loss", "val_bpc", "chars_per_sec", "lr")  # a report's metrics in MLflow


class _Placeholder(tune.Callback):
    """What Tune's saved state holds where the driver's SweepCallback was (see SweepCallback.__reduce__)."""


class SweepCallback(tune.Callback):
    """Driver side of the metric flow: Tune results -> MLflow child runs and the Parquet tables.

    ``budget_deadline`` is the time.monotonic() at which Tune's time budget runs out (None without one): trials
    still running after fit() then were stopped by the budget, not interrupted."""

    def __init__(self, *, cfg: SweepConfig, tracker, table, budget_deadline: float | None = None):
        self.cfg = cfg
        self.tracker = _Guarded(tracker, failed=_store_error, on_failure=self._tracking_failed)
        # the tables' rows stay in memory when the disk is full: later calls are still made (keep_calling)
        self.table = _Guarded(table, failed=disk_full, on_failure=self.full_disk, methods=TABLE_WRITES,
                              keep_calling=True)
        self.disk_error: str | None = None  # what a full disk kept from being written, if it did (see diskfull)
        self._stopping = False  # this callback sent the SIGINT that stops the sweep
        self.fitting = False  # between Tune's setup and the end of its run: while Tune handles SIGINT
        self.budget_deadline = budget_deadline
        self.base = cfg.base_values()  # the fixed options every trial starts from
        self.runs: dict[str, str] = {}  # Tune trial id (or packed member id) -> MLflow run id
        self.index: dict[str, int] = {}  # Tune trial id (or packed member id) -> position in generation order
        self.lineage = Lineage(table, enabled=cfg.scheduler.type == "pbt")
        self.packs: dict[int, tuple[dict, int]] = {}  # packed sweeps: trial index -> (its config, its pack)
        self.members: dict[int, _Member] = {}  # packed trials seen so far
        self.pack_started: dict[int, Any] = {}  # packed sweeps: pack -> when it started (its members' started_at)
        # trial key -> its newest report this driver recorded, and where its checkpoint is: (Tune trial, pack member)
        self.last: dict[str, tuple[dict[str, Any], tuple[Any, int | None]]] = {}
        # trials ended so far: the step of the parent run's best-so-far series
        self.ended = self._ended()
        self.t0 = time.monotonic()
        self.last_print = 0.0

    def __reduce__(self):
        # Tune pickles its RunConfig, callbacks included, into tune/tuner.pkl. This callback is the driver's live
        # state (open MLflow runs, the tables, the sweep's corpus: megabytes), and --resume gives the restored
        # Tuner a new one (raycompat.restore_tuner): what is saved is a placeholder that does nothing.
        return (_Placeholder, ())

    # identity ------------------------------------------------------------------------------------
    def _key(self, trial) -> tuple[str, int]:
        from .trainable import trial_index

        if trial.trial_id not in self.index:
            self.index[trial.trial_id] = trial_index(trial.trial_id, raycompat.trial_dir_name(trial))
        index = self.index[trial.trial_id]
        return trial_key(index), index

    def _hparams(self, trial) -> dict[str, Any]:
        from .trainable import train_config, trial_seed

        _, index = self._key(trial)
        cfg = train_config(self.base, trial.config, trial_seed(self.cfg.seed, index),
                           derive_seed=self.cfg.derive_seed)
        return cfg.to_dict()

    def _run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            key, _ = self._key(trial)
            hp = self._hparams(trial)
            self.runs[trial.trial_id] = self.tracker.trial_run(trial_id=key, name=f"{key}-{run_name(trial.config)}",
                                                               params=hp)
            if key not in self.table.trials:  # else resumed: the row (from the tables or the journal) holds the
                # values the trial started with; PBT may have changed trial.config since, as not the MLflow params
                started = self.pack_started.get(self.packs[trial.index][1]) if isinstance(trial, _Member) else None
                self.table.start_trial(key, {**{k: v for k, v in hp.items() if k != "iterations"},
                                             "started_at": started or utc_now()})
            self.table.set_trial(key, {"status": "running", "target_iterations": hp["iterations"],
                                       **_run_id(self.runs[trial.trial_id])})
            self._catch_up(key, self.runs[trial.trial_id])
        return self.runs[trial.trial_id]

    def _catch_up(self, key: str, run: str | None) -> None:
        """Log to the trial's run the reports the history holds and the run lacks (the tracking server was gone
        when they came, or the run is new): steps MLflow already has are skipped (Tracker.log_metrics)."""
        for row in self.table.history_of(key):
            metrics = {k: row[k] for k in REPORT_METRICS if row.get(k) is not None}
            if metrics:
                self.tracker.log_metrics(run, metrics, step=int(row["iteration"]))

    # Tune hooks ----------------------------------------------------------------------------------
    def setup(self, **info):
        self.fitting = True

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._is_pack(trial):  # its members' runs open at their first report
            self.pack_started.setdefault(trial.config["pack"], utc_now())
        else:
            self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("disk_full"):  # its checkpoint was not written: the report is sent again on --resume
            self._stop_for_full_disk(result["disk_full"])
            return
        if result.get("memory_error"):  # no report: the trial ends with it (on_trial_complete)
            return
        if self._is_pack(trial):
            for m in result["members"]:
                member = self._member(m["trial_index"])
                member.last_result = _member_result(m, result)
                self._record(member, member.last_result, (trial, member.index))
        else:
            self._record(trial, result, (trial, None))
        self._progress(trials)

    def _record(self, trial, result, source: tuple[Any, int | None] | None = None) -> None:
        """A report repeated after a restart or a resume (the trial went on from an older checkpoint) is
        recorded once: MLflow skips steps it already has, the history keeps the first row per iteration.
        MLflow first, then the journal: a kill in between leaves a report in MLflow that the history
        picks up when it comes again, never one in the history that MLflow lacks. A report whose tracking call
        failed is kept all the same; the next driver logs it to the run (_catch_up)."""
        key, _ = self._key(trial)
        run = self._run(trial)
        it = int(result["iteration"])
        metrics = {k: result[k] for k in REPORT_METRICS if k != "lr"}
        if "lr" in result:  # the learning rate in force (PBT changes it; MLflow params cannot change)
            metrics["lr"] = result["lr"]
        event = self.lineage.observe(key, result)
        if event.stale:
            return
        if event.branch or event.exploit:  # (most reports change nothing in the lineage)
            self.tracker.record_lineage(run, event)
        if event.exploit:
            print(f"{key}: PBT copied {event.exploit.source_trial_id} at iteration {event.exploit.iteration}; "
                  f"{event.exploit.changes or 'no change'}", flush=True)
        if self.tracker.log_metrics(run, metrics, step=it) and result.get("sample"):
            self.tracker.log_text(run, result["sample"], f"samples/iter_{it:06d}.txt")
        self.last[key] = (result, source)
        if result.get("sample"):  # the row keeps the newest sample, whenever and however the trial ends
            self.table.set_trial(key, {"sample": result["sample"]})
        self.table.add_report(key, {"iteration": it, **{k: _num(v) for k, v in metrics.items()},
                                    "elapsed_s": float(result.get("elapsed_s", 0.0)),
                                    "exploited_from": event.exploit.source_trial_id if event.exploit else None},
                              lineage=event)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial's worker failed and Tune restarts it from its newest checkpoint (FailureConfig)."""
        key = f"pack {trial.config['pack']}" if self._is_pack(trial) else self._key(trial)[0]
        done = int((trial.last_result or {}).get("iteration", 0))
        print(f"{key}: worker failed at iteration {done}; restarting it from its newest checkpoint "
              f"(failure {trial.num_failures} of max_failures {self.cfg.max_failures})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        error = (trial.last_result or {}).get("memory_error")
        if error:  # out of memory: failed, not retried (pipeline.trainable); the row keeps its newest report
            self._fail(trial, error, lambda t: {**trial.last_result, **self.last.get(self._key(t)[0], ({}, None))[0]})
            return
        if not self._is_pack(trial):
            self._complete(trial, trial.last_result or {}, trial.checkpoint, None)
            return
        for member in self._pack_members(trial):
            self._complete(member, member.last_result or {}, trial.checkpoint, member.index)

    def _complete(self, trial, last, checkpoint, member_index) -> None:
        key, _ = self._key(trial)
        run = self._run(trial)
        done_its, target = int(last.get("iteration", 0)), int(last.get("target_iterations", 0))
        if last.get("diverged"):
            status, tags = "diverged", {"error": f"loss became non-finite by iteration {done_its}"}
        elif done_its < target:
            # Tune completes a trial before its last iteration only when the scheduler decided STOP; the time
            # budget and Ctrl-C end trials without on_trial_complete, and finish() closes those (Ray 2.60).
            status, tags = "stopped", {"stop_reason": f"{self.cfg.scheduler.type} at iteration {done_its} of {target}"}
        else:
            status, tags = "finished", {}
        self._log_checkpoint(checkpoint, run, member_index)
        self._close(key, run, status, tags, last, error=tags.get("error", ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._fail(trial, raycompat.error_text(trial), lambda t: t.last_result or {})

    def _fail(self, trial, error: str, last: Callable[[Any], dict[str, Any]]) -> None:
        """Close the trial (a pack: each member) as failed with ``error``; ``last(t)``: the report its row keeps."""
        for t in (self._pack_members(trial) if self._is_pack(trial) else [trial]):
            key, _ = self._key(t)
            self._close(key, self._run(t), "failed", {"error": error[-5000:]}, last(t), error=error)

    def on_experiment_end(self, trials, **info):
        """Tune's run ends (all trials done, interrupted, or out of time): close what no driver closed."""
        self.fitting = False
        if self.tracking_error is None:  # (else the next --resume does it)
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._close_unclosed(trial, trials)

    def _close_unclosed(self, trial, trials) -> None:
        """A trial Tune restored as ended that no driver closed -- its row is gone (trials.parquet moved aside) or its
        run is open (the tracking server went away as it ended) -- is closed as it was when it ended, from Tune's
        record of it (its last result, checkpoint and error); else it would count as unfinished for ever."""
        members = [trial]
        if self._is_pack(trial):
            for m in (trial.last_result or {}).get("members", []):
                member = self._member(m["trial_index"])
                member.last_result = member.last_result or _member_result(m, trial.last_result)
            members = self._pack_members(trial)
        before = {t.trial_id: dict(self.table.trials.get(self._key(t)[0], {})) for t in members}
        if not any(t.trial_id not in self.runs and (before[t.trial_id].get("status") not in CLOSED
                                                    or self._key(t)[0] in getattr(self.tracker, "open_children", ()))
                   for t in members):
            return
        if trial.status == "ERROR":
            self.on_trial_error(0, trials, trial)
        else:
            self.on_trial_complete(0, trials, trial)
        for t in members:  # when it started and ended: as an earlier driver's row says, else as Tune's record does
            last, was = t.last_result or {}, before[t.trial_id]
            ended = _from_unix(last.get("timestamp"))
            started = ended - timedelta(seconds=float(last.get("time_total_s") or 0)) if ended else None
            self.table.set_trial(self._key(t)[0], {"started_at": was.get("started_at") or started,
                                                   "ended_at": was.get("ended_at") or ended,
                                                   **({"sample": last["sample"]} if last.get("sample") else {})})
        self.table.write()

    # tracking failures ---------------------------------------------------------------------------
    @property
    def tracking_error(self) -> BaseException | None:
        """The tracking call that failed, if one did: no tracking call has been made since."""
        return self.tracker.error

    def _tracking_failed(self, error: BaseException) -> None:
        self._stop_sweep()

    def full_disk(self, error: BaseException) -> bool:
        """Tune failed to save its state: on a full disk, stop the sweep (True); other errors are Tune's to log."""
        full = disk_full(error)
        if full is not None:
            self._stop_for_full_disk(describe(full, where=str(self.table.output)))
        return full is not None

    def _stop_for_full_disk(self, what: str) -> None:
        if self.disk_error is None:
            self.disk_error = what
        self._stop_sweep()

    def _stop_sweep(self) -> None:
        """As Ctrl-C does, once: Tune's handler stops the trials, saves Tune's state and returns from fit() (a
        second SIGINT would make Tune quit at once)."""
        if self.fitting and not self._stopping:
            self._stopping = True
            os.kill(os.getpid(), signal.SIGINT)

    # packed trials -------------------------------------------------------------------------------
    @staticmethod
    def _is_pack(trial) -> bool:
        return "pack" in trial.config

    def _member(self, index: int) -> "_Member":
        if index not in self.members:
            self.members[index] = _Member(index, self.packs[index][0])
        return self.members[index]

    def _pack_members(self, trial) -> list["_Member"]:
        return [self._member(i) for i, (_, p) in sorted(self.packs.items()) if p == trial.config["pack"]]

    # helpers -------------------------------------------------------------------------------------
    def _log_checkpoint(self, cp, run: str, member_index: int | None = None) -> None:
        from .trainable import CHECKPOINT_FILE, member_file

        if cp is None:
            return
        name = CHECKPOINT_FILE if member_index is None else member_file(member_index)
        with cp.as_directory() as d, tempfile.TemporaryDirectory(prefix="rnnsweep-member-") as tmp:
            path = os.path.join(d, name)
            if os.path.exists(path):
                if member_index is not None:  # logged under the name every trial's checkpoint has
                    path = shutil.copy(path, os.path.join(tmp, CHECKPOINT_FILE))
                self.tracker.log_file(run, path, "model")

    def _close(self, key, run, status, tags, last, *, error: str) -> None:
        """End a trial: its run (status and tags), its row (the last report's values, aggregates of its history),
        the tables on disk, and a point of the parent's best-so-far series."""
        self.tracker.end_run(run, status, tags)
        hist = self.table.history_of(key)
        speeds = [r["chars_per_sec"] for r in hist if r["chars_per_sec"]]
        lrs = [r.get("lr") for r in hist if r.get("lr") is not None]
        self.table.set_trial(key, {
            "status": status, **_run_id(run),
            "iterations": int(last.get("iteration", 0)),
            "train_loss": _num(last.get("train_loss")), "val_loss": _num(last.get("val_loss")),
            "val_bpc": _num(last.get("val_bpc")), "min_val_loss": _min_val_loss(hist),
            "mean_chars_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "wall_s": float(last.get("time_total_s", last.get("elapsed_s", 0.0))), "ended_at": utc_now(),
            **{k: last[k] for k in ("node", "node_ip") if last.get(k)},  # (a row of an earlier driver keeps its own)
            "error": error or None, "final_lr": lrs[-1] if lrs else None,
            "exploits": len(self.table.exploits_of(key))})
        self.table.write()
        self._log_best()
        self._progress(None, force=True)

    def _log_best(self) -> None:
        """A point of the parent's best-so-far series for each trial that ended since the last one."""
        ended = self._ended()
        top = self.best()
        if top is not None and ended > self.ended:
            self.tracker.log_best(top, step=ended)
        self.ended = max(self.ended, ended)

    def _ended(self) -> int:
        """How many trials have ended (a closed status in the trials table)."""
        return sum(1 for r in self.table.trials.values() if r.get("status") in CLOSED)

    def budget_ran_out(self) -> bool:
        """Whether Tune's time budget has run out by now."""
        return self.budget_deadline is not None and time.monotonic() >= self.budget_deadline

    def finish(self) -> None:
        """After fit(): close the runs still open and write the tables. When the time budget ran out, the budget
        stopped them (status stopped, their run FINISHED); otherwise the sweep was interrupted (their run KILLED;
        their rows hold the newest report and --resume continues them)."""
        end = self._stop_by_budget if self.budget_ran_out() else self._interrupt
        runs = {trial_key(self.index[tid]): run for tid, run in self.runs.items()}
        for key, row in self.table.trials.items():  # rows a killed driver left running, not seen again
            if row.get("status") == "running" and key not in runs and row.get("mlflow_run_id"):
                runs[key] = row["mlflow_run_id"]
        for key, run in runs.items():
            row = self.table.trials.get(key, {})
            if row.get("status") == "running":
                end(key, run, row)
        self.table.write()

    def _stop_by_budget(self, key: str, run: str | None, row: dict[str, Any]) -> None:
        """A trial the time budget ended: finished when it trained all its iterations, else stopped (never trained:
        stopped at 0); its newest checkpoint is logged, as a trial that ends otherwise has."""
        hist = self.table.history_of(key)
        result, source = self.last.get(key, ({}, None))
        last = {"target_iterations": row.get("target_iterations"), **(hist[-1] if hist else {}), **result}
        done, target = int(last.get("iteration", 0)), int(last.get("target_iterations") or 0)
        status = "finished" if target and done >= target else "stopped"
        tags = {"stop_reason": f"time budget at iteration {done} of {target}"} if status == "stopped" else {}
        if source is not None:
            self._log_checkpoint(source[0].checkpoint, run, source[1])
        self._close(key, run, status, tags, last, error="")

    def _interrupt(self, key: str, run: str | None, row: dict[str, Any]) -> None:
        """A trial the sweep's interruption ended: its run KILLED, its row holding the newest report."""
        hist = self.table.history_of(key)
        newest = hist[-1] if hist else {}
        self.tracker.end_run(run, "interrupted")
        self.table.set_trial(key, {"status": "interrupted", "iterations": int(newest.get("iteration", 0)),
                                   **{k: newest.get(k) for k in ("train_loss", "val_loss", "val_bpc")},
                                   "min_val_loss": _min_val_loss(hist)})

    def best(self) -> dict[str, Any] | None:
        return best(self.table.trials.values(), metric=self.cfg.metric, mode=self.cfg.mode)

    def _progress(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < 10:
            return
        self.last_print = now
        rows = self.table.trials.values()
        count = {s: sum(1 for r in rows if r.get("status") == s) for s in (*CLOSED, "running")}
        done = sum(count[s] for s in CLOSED)
        pending = max(0, self.cfg.num_trials - done - count["running"])
        top = self.best()
        best_txt = f" | best {self.cfg.metric} {top[self.cfg.metric]:.4f} ({top['trial_id']})" if top else ""
        extra = "".join(f", {count[s]} {s}" for s in ("stopped", "diverged", "failed") if count[s])
        print(f"[{now - self.t0:6.0f}s] {done}/{self.cfg.num_trials} done{extra} | {count['running']} running | "
              f"{pending} pending{best_txt}", flush=True)


class _Guarded:
    """The tracker or the tables as the callback uses them: a call that fails with an error ``failed`` recognises
    (it returns the error, else None) is reported to ``on_failure`` and returns None instead of raising; the first
    such error is kept in ``error``. Only ``methods`` are guarded (None: every method). Then, unless
    ``keep_calling``, every later call returns None without being made."""

    def __init__(self, target, *, failed: Callable[[BaseException], BaseException | None],
                 on_failure: Callable[[BaseException], Any], methods: frozenset[str] | None = None,
                 keep_calling: bool = False):
        self._target, self._failed, self._on_failure = target, failed, on_failure
        self._methods, self._keep_calling = methods, keep_calling
        self.error: BaseException | None = None

    def __getattr__(self, name: str):
        if name.startswith("_"):  # (pickle looks for __setstate__ before _target is set)
            raise AttributeError(name)
        attr = getattr(self._target, name)
        if not callable(attr) or (self._methods is not None and name not in self._methods):
            return attr

        def call(*args, **kwargs):
            if self.error is not None and not self._keep_calling:
                return None
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                failure = self._failed(e)
                if failure is None:
                    raise
                self.error = self.error or failure
                self._on_failure(failure)
                return None

        return call


TABLE_WRITES = frozenset({"write", "add_report", "start_trial"})  # the ResultsTable methods that write files


def _store_error(error: BaseException) -> BaseException | None:
    """``error`` if it says the tracking store cannot be used (pipeline.tracking's store_errors), else None."""
    from .tracking import store_errors

    return error if isinstance(error, store_errors()) else None


class _Member:
    """A packed trial seen through the single-trial bookkeeping: same key, config, run and row."""

    def __init__(self, index: int, config: dict[str, Any]):
        self.index, self.config = index, config
        self.trial_id = f"member_{index:05d}"  # trial_index() reads the suffix, as for Tune's ids
        self.last_result: dict[str, Any] | None = None


def _member_result(member: dict[str, Any], pack: dict[str, Any]) -> dict[str, Any]:
    """A packed member's report as a single trial's: its own values, and the pack's node and target."""
    return {**member, "node": pack.get("node"), "node_ip": pack.get("node_ip"),
            "target_iterations": pack["target_iterations"]}


def _run_id(run: str | None) -> dict[str, str]:
    """The row's mlflow_run_id, unless the tracking call that makes it failed (the row keeps the one it has)."""
    return {"mlflow_run_id": run} if run else {}


def _from_unix(t) -> datetime | None:
    return datetime.fromtimestamp(t, timezone.utc) if isinstance(t, (int, float)) and t > 0 else None


def _num(x) -> float | None:
    return float(x) if finite(x) else None


def _min_val_loss(hist: list[dict[str, Any]]) -> float | None:
    """The `min_val_loss` column: the lowest finite val_loss of a trial's history rows."""
    return min((r["val_loss"] for r in hist if finite(r.get("val_loss"))), default=None)
