"""The main job: a sweep file in, Ray Tune trials, MLflow runs and Parquet tables out.

    python -m pipeline.sweep sweeps/basic.yaml [--dry-run] [--resume] [--address auto|HOST:PORT|ray://HOST:10001]

Exit codes: 0 the sweep ran (diverged or failed trials are rows with their status), 1 every trial failed,
2 bad input (nothing started, nothing written), 130 interrupted (finish it with --resume).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from . import folder, raycompat
from .config import ConfigError, SweepConfig, load_sweep
from .diskfull import describe, disk_full, message
from .plan import crowding_note, machine_memory, memory_problem
from .tracking import TrackingError  # (tracking imports MLflow only when it uses it)
from .vocab import CLOSED, finite, ranked

BLAS_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

STARTED = time.monotonic()  # the sweep's clock: `time_budget_s` counts from here, not from Tune's start
# What a sweep does after Tune stops its trials (the last reports, the tables, the parent run, the report and
# Ray's shutdown) takes time too, measured on 2 cores: 4 s for sweeps/basic.yaml, 12.4 s for sweeps/quality.yaml.
# Tune's own budget ends this much earlier, so a sweep returns within `time_budget_s` (measured with a reserve of
# 15 s: 19 s for `time_budget_s: 30` on basic.yaml, 147.4 s for 150 s on quality.yaml; 20 s leaves a margin, which
# also covers logging the best model, ~1.3 s more since).
FINISH_RESERVE_S = 20.0


class SweepError(Exception):
    """Bad input found after parsing (cluster resources, an existing output); exit code 2."""


def sweep_id(cfg: SweepConfig) -> str:
    """Deterministic: the same sweep name and output folder give the same id (how --resume reattaches)."""
    return hashlib.sha256(f"{cfg.name}\0{cfg.output.resolve()}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class _Sweep:
    """What the driver holds while a sweep runs."""

    cfg: SweepConfig
    tracking_uri: str
    parent_run: str
    table: Any  # results.ResultsTable
    callback: Any  # callback.SweepCallback
    trials: list[dict[str, Any]] | None  # packed sweeps: every trial's searched values, drawn up front
    packs: list[list[int]] | None  # packed sweeps: the trials of each pack


def run_sweep(cfg: SweepConfig, *, address: str | None, resume: bool) -> int:
    """Run the sweep ``cfg`` describes, on a local Ray (``address`` None) or the cluster at ``address``; with
    ``resume``, finish the one in its output folder. Returns the exit code (see the module's docstring)."""
    from .tracking import check_server, resolve_uri  # imports no MLflow: cheap

    # checks that write nothing first: the folder's driver, the folder against --resume, the tracking server
    folder.refuse_if_in_use(cfg)
    tune_dir = folder.check(cfg, resume=resume)
    uri = resolve_uri(cfg.mlflow.tracking_uri)
    check_server(uri)  # before importing Ray and Tune (seconds), so a dead server fails within its timeout
    with folder.lock(cfg):  # a second driver on the same output folder stops here
        return _run_locked(cfg, tune_dir, uri, address=address, resume=resume)


def _run_locked(cfg: SweepConfig, tune_dir: str, uri: str, *, address: str | None, resume: bool) -> int:
    from .startup import Startup, freeze_at_exit

    raycompat.set_process_env(loopback=not address or _is_loopback(address))
    import ray

    sweep = None
    # Ray's processes start as early as possible; Startup does the driver's own start-up work meanwhile
    with Startup(uri) as startup:
        try:
            _start_ray(address)
            startup.ready()
            _check_resources(cfg, local=not address)
            startup.install_store()
            freeze_at_exit()
            sweep = _open_sweep(cfg, uri, resume=resume)
            folder.record_identity(cfg)
            tuner = _build_tuner(sweep, tune_dir, resume=resume)
            _fit(tuner)
            return _finish(sweep)
        except KeyboardInterrupt:  # outside Tune's run (which handles Ctrl-C itself): close what is open
            if sweep is not None:
                sweep.callback.finish()
                sweep.callback.tracker.finish_sweep(status="KILLED", best=None, files=[])
            raise
        except Exception as e:  # a full disk outside the callback's writes (starting, Tune's own state): main says so
            if disk_full(e) is not None and sweep is not None:
                sweep.callback.finish()  # (the tables as far as they can be written)
                sweep.callback.tracker.finish_sweep(status="KILLED", best=None, files=[])
            raise
        finally:
            ray.shutdown()


def _open_sweep(cfg: SweepConfig, uri: str, *, resume: bool) -> _Sweep:
    """The sweep's MLflow parent run, its tables (with what an earlier driver wrote) and Tune's callback."""
    from .callback import SweepCallback
    from .results import ResultsTable, TableError
    from .tracking import Tracker, store_errors

    table = ResultsTable(cfg.output.resolve(), sweep_text=cfg.source_text)
    if resume:
        try:
            table.load_existing()
        except TableError as e:  # (folder.check read them: changed since)
            raise SweepError(f"--resume: {e}") from None
    corpus = cfg.corpus()  # read by load_sweep when it checked the file
    try:  # (check_store caught what it could without opening the store)
        tracker = Tracker(uri=uri, experiment=cfg.mlflow.experiment, sweep_id=sweep_id(cfg), corpus=corpus)
    except Exception as e:  # noqa: BLE001 - opening a store raises MLflow's, SQLAlchemy's or alembic's errors
        raise _unusable_store(uri, e) from None
    try:
        parent = tracker.start_sweep(name=cfg.name, sweep_text=cfg.source_text, resume=resume,
                                     params={"sweep_file": str(cfg.source_path), "num_trials": cfg.num_trials,
                                             "corpus": str(cfg.data.path), "corpus_sha256": corpus.sha256,
                                             "seed": cfg.seed, "metric": cfg.metric, "mode": cfg.mode,
                                             "scheduler": cfg.scheduler.type, "search_alg": cfg.search_alg.type,
                                             **{f"space.{k}": d.call_text() for k, d in cfg.searched.items()}})
    except store_errors() as e:
        raise _unusable_store(uri, e) from None
    if resume and not table.history_path.exists():  # moved aside: the reports MLflow has
        for trial_id, run in tracker.children.items():
            for row in tracker.metric_rows(run):
                table.add_report(trial_id, row)
    callback = SweepCallback(cfg=cfg, tracker=tracker, table=table,
                             budget_deadline=_budget_deadline(cfg.time_budget_s))
    trials = packs = None
    if cfg.packing:  # trials drawn up front and grouped: one Tune trial trains one pack
        from .packing import expand_trials, make_packs

        trials = expand_trials(cfg)
        packs = make_packs(trials, cfg.base_values(), cfg.packing.max_trials)
        callback.packs = {i: (trials[i], p) for p, members in enumerate(packs) for i in members}
    in_packs = f" in {len(packs)} packs" if packs else ""
    print(f"sweep {cfg.name}: {cfg.num_trials} trials{in_packs}, {cfg.scheduler.type} scheduler, "
          f"MLflow experiment {cfg.mlflow.experiment!r} at {uri}", flush=True)
    for note in cfg.notes():
        print(f"note: {note}", file=sys.stderr, flush=True)
    return _Sweep(cfg=cfg, tracking_uri=uri, parent_run=parent, table=table, callback=callback, trials=trials,
                  packs=packs)


def _unusable_store(uri: str, error: Exception) -> Exception:
    """What to raise when the tracking store failed as the sweep opened it: a full disk as it is (main says so),
    else a TrackingError (exit 2) naming the store and the way on."""
    from .tracking import failure_text

    if disk_full(error) is not None:
        return error
    return TrackingError(f"the MLflow tracking store at {uri} cannot be used ({failure_text(error)}); repair it or "
                         "move it aside, or set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to another store")


def _build_tuner(sweep: _Sweep, tune_dir: str, *, resume: bool):
    """A new Tuner, or, for --resume, Tune's saved run (trial ids, configs, statuses, newest checkpoints; finished
    trials stay finished) driven by this driver's callback."""
    from ray import tune

    from .search import checkpoints_to_keep
    from .trainable import train_pack, train_trial

    cfg = sweep.cfg
    common = dict(corpus=cfg.corpus(), base=cfg.base_values(), sweep_seed=cfg.seed, derive_seed=cfg.derive_seed)
    if sweep.packs is not None:
        fn = tune.with_parameters(train_pack, trials=sweep.trials, packs=sweep.packs, **common)
    else:
        fn = tune.with_parameters(train_trial, **common)
    trainable = tune.with_resources(fn, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    storage, name = tune_dir.rsplit("/", 1)
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=[sweep.callback], verbose=0,
        progress_reporter=raycompat.silent_reporter(),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(cfg)))
    space = _param_space(cfg, sweep.packs)

    def fresh():
        return tune.Tuner(trainable, param_space=space, tune_config=_tune_config(cfg, sweep.packs),
                          run_config=run_config)

    raycompat.on_state_save_error(sweep.callback.full_disk)
    if resume and not cfg.storage and tune.Tuner.can_restore(tune_dir):  # (a full disk may have cut it short)
        for note in raycompat.repair_saved_state(tune_dir, fresh=fresh):
            print(f"note: {note}", file=sys.stderr, flush=True)
    if resume and raycompat.can_restore(tune_dir):
        try:
            return raycompat.restore_tuner(tune_dir, trainable=trainable, param_space=space, run_config=run_config)
        except raycompat.RestoreError as e:
            raise SweepError(str(e)) from None
    # a fresh sweep, or one stopped before Tune saved any state: start it (again)
    return fresh()


def _fit(tuner) -> None:
    from .startup import warm_up_report

    warm_up_report()
    try:
        tuner.fit()  # Ctrl-C: Tune stops the trials, saves its state and returns
    except KeyboardInterrupt:
        pass


def _finish(sweep: _Sweep) -> int:
    """Close the runs and the tables, print the summary, write the report; returns the exit code."""
    import ray

    from .startup import report_while
    from .tracking import failure_text, ui_command

    cfg, table = sweep.cfg, sweep.table
    closed = sum(1 for r in table.trials.values() if r.get("status") in CLOSED)
    interrupted = closed < cfg.num_trials and (not sweep.callback.budget_ran_out() or sweep.callback.disk_error)
    sweep.callback.finish()  # (after a tracking failure: the tables only, as every call below)
    best = sweep.callback.best()
    tracking = sweep.callback.tracker  # a failing call stops nothing here, and leaves the error on the callback
    tracking.finish_sweep(status="KILLED" if interrupted else "FINISHED", best=best,
                          files=[str(table.trials_path), str(table.history_path)])
    _print_summary(cfg, table, best, ui_command(sweep.tracking_uri), sweep.parent_run)
    lost = sweep.callback.tracking_error
    full = sweep.callback.disk_error or (describe(lost) if disk_full(lost) else None)
    if full is not None:
        return _stopped_by_full_disk(cfg, full)
    if lost is not None:  # the callback stopped the sweep as Ctrl-C does; MLflow's side is closed by --resume
        print(f"\nerror: lost the MLflow tracking store at {sweep.tracking_uri} ({failure_text(lost)}); the trials were "
              f"stopped and kept as on Ctrl-C; once it answers again, finish with  "
              f"python -m pipeline.sweep {cfg.source_path} --resume", file=sys.stderr)
        return 130
    if interrupted:  # an interrupted sweep gets its report when --resume finishes it
        print(f"\ninterrupted: finish with  python -m pipeline.sweep {cfg.source_path} --resume", file=sys.stderr)
        return 130
    if sweep.callback.budget_ran_out() and not any(r.get("iterations") for r in table.trials.values()):
        print(f"\nwarning: the time budget ended before any trial ran (time_budget_s: {cfg.time_budget_s:g}, which "
              f"counts Ray's start-up and keeps the last {FINISH_RESERVE_S:g} s for the finish); raise time_budget_s",
              file=sys.stderr)
    _log_best_model(sweep, best)
    if table.trials:
        report_dir = report_while(ray.shutdown, cfg.output.resolve(), tracking_uri=sweep.tracking_uri)
        print(f"report:  {report_dir / 'report.md'}  ({report_dir / 'report.html'} with its plots)")
    statuses = [r["status"] for r in table.trials.values()]
    return 1 if statuses and all(s == "failed" for s in statuses) else 0


def _log_best_model(sweep: _Sweep, best: dict[str, Any] | None) -> None:
    """The best trial's checkpoint as an MLflow model on its run, registered when the sweep file names a model
    (mlflow.register_model); if that fails, a warning: the sweep's runs and tables are complete without it."""
    from .tracking import log_best_model

    if not best or not best.get("mlflow_run_id"):
        return
    try:
        uri = log_best_model(sweep.tracking_uri, best, parent_run_id=sweep.parent_run,
                             register_as=sweep.cfg.mlflow.register_model)
    except Exception as e:  # noqa: BLE001 - MLflow's errors vary by store
        print(f"warning: the best model was not logged to MLflow ({type(e).__name__}: {e}); its checkpoint is on "
              f"run {best['mlflow_run_id']}", file=sys.stderr)
        return
    print(f"model:   {uri}   (python -m pipeline.sample {uri})")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(address: str | None) -> bool:
    try:
        return address not in (None, "auto") and _host_port(address)[0] in ("127.0.0.1", "localhost", "::1")
    except ValueError:
        return False


def _start_ray(address: str | None) -> None:
    import ray

    common = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    if not address:
        # The local Ray's processes inherit this environment: one BLAS thread per trial needs no runtime_env.
        os.environ.update(BLAS_ENV)
        # "local": a new instance even when a `ray start` cluster runs on this machine. Three settings cut the
        # CPU Ray spends besides the trials (a sweep's start is CPU-bound on a small machine):
        # - no workers prestarted for the driver: Tune gives its trial actors a runtime env of their own, so
        #   they start new workers anyway, and two idle processes importing Ray cost a core-second each;
        # - no metrics collection, which only feeds Ray's dashboard (not started here);
        # - no autoscaler monitor and no log monitor (raycompat.lean_local_node).
        with raycompat.lean_local_node():
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     _system_config=raycompat.LOCAL_SYSTEM_CONFIG, **common)
        _stop_like_ctrl_c()
        return
    common["runtime_env"] = {"env_vars": BLAS_ENV}  # a cluster's nodes were started with their own environment
    if address != "auto":  # Ray itself retries an unreachable address for minutes: probe it first
        try:
            with socket.create_connection(_host_port(address), timeout=5):
                pass
        except (OSError, ValueError) as e:
            raise SweepError(f"cannot reach the Ray cluster at {address} ({e}); check the address "
                             "(auto, HOST:PORT or ray://HOST:10001) and that the cluster is up") from None
    if _is_loopback(address) and not address.startswith("ray://"):
        common["_node_ip_address"] = "127.0.0.1"  # the driver joins the raylet of a loopback cluster
    try:
        ray.init(address=address, **common)
    except Exception as e:  # ConnectionError, TimeoutError, RuntimeError depending on the address form
        raise SweepError(f"cannot join the Ray cluster at {address}: {e}; check the address "
                         "(auto, HOST:PORT or ray://HOST:10001) and that the cluster is up") from None
    _stop_like_ctrl_c()


def _check_resources(cfg: SweepConfig, *, local: bool) -> None:
    """Tune would keep a trial PENDING forever if no node can ever fit it: fail fast instead. On a local
    Ray the trials run on this machine, so device: gpu also needs CuPy here."""
    import importlib.util

    import ray

    device = cfg.train.get("device", "cpu")
    wants_gpu = "gpu" in (device.values() if hasattr(device, "values") else (device,))
    if local and wants_gpu and importlib.util.find_spec("cupy") is None:
        raise SweepError("train.device: device gpu needs CuPy, which is not installed; "
                         "pip install '.[gpu]' (or '.[gpu-cuda13]'), or set device: cpu")

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = memory_problem(cfg, int(max((n.get("memory", 0) for n in nodes), default=0)),
                             "the largest Ray node (Ray's memory resource)")
    if problem:  # each try of such a trial would fail allocating its arrays, or be killed by the OOM killer
        raise SweepError(problem)
    crowded = crowding_note(cfg, nodes)
    if crowded:
        print(f"note: {crowded}", file=sys.stderr, flush=True)
    total = ray.cluster_resources()
    for key, want in (("CPU", cfg.resources.cpu), ("GPU", cfg.resources.gpu)):
        have = total.get(key, 0.0)
        if want > 0 and have < want:
            raise SweepError(f"resources.{key.lower()}: each trial asks for {want:g} {key}, but the Ray cluster has "
                             f"{have:g}; lower resources.{key.lower()} or add nodes that have {key}s")


def _param_space(cfg: SweepConfig, packs: list | None = None) -> dict[str, Any]:
    if packs is not None:
        from ray import tune

        return {"pack": tune.grid_search(list(range(len(packs))))}
    return cfg.tune_space()


def _tune_config(cfg: SweepConfig, packs: list | None = None):
    from ray import tune

    from . import search

    # Tune ignores max_concurrent_trials when given a search_alg (a warning we silence): the search alg holds it
    return tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, scheduler=search.scheduler(cfg),
                           search_alg=search.search_alg(cfg),
                           num_samples=1 if packs is not None else cfg.num_samples,
                           max_concurrent_trials=cfg.max_concurrent_trials,
                           time_budget_s=_tune_budget(cfg.time_budget_s), reuse_actors=True)


def _tune_budget(budget: float | None) -> float | None:
    """Tune's time budget: what is left of the sweep's after the start-up, less the finish (FINISH_RESERVE_S)."""
    deadline = _budget_deadline(budget)
    return None if deadline is None else max(1.0, deadline - time.monotonic())


def _budget_deadline(budget: float | None) -> float | None:
    """When (time.monotonic()) Tune's time budget runs out, or a moment before: Tune starts counting _tune_budget a
    moment after the driver computed it. A sweep whose trials stopped before this time was not stopped by it."""
    return None if budget is None else STARTED + budget - FINISH_RESERVE_S


# ------------------------------------------------------------------------------------------ reporting


def _print_summary(cfg: SweepConfig, table, best, ui: str, parent: str) -> None:
    # the ranked trials, best first, then the rest that have the metric (diverged, interrupted...), by id
    top = ranked(table.trials.values(), metric=cfg.metric, mode=cfg.mode)
    shown = {r["trial_id"] for r in top}
    rest = [r for key, r in sorted(table.trials.items()) if key not in shown and finite(r.get(cfg.metric))]
    rows = top + rest
    names = list(cfg.searched) + (["final_lr"] if cfg.scheduler.type == "pbt" else [])  # PBT: the lr it ended with
    print(f"\nleaderboard (top {min(10, len(rows))} of {len(table.trials)} by {cfg.metric}):")
    head = ["trial", "status", *names, "val_loss", "val_bpc", "chars/s", "mlflow run"]
    body = [[r["trial_id"], r["status"], *[_fmt(r.get(n)) for n in names], _fmt(r.get("val_loss")),
             _fmt(r.get("val_bpc")), f"{r['mean_chars_per_sec']:,.0f}" if r.get("mean_chars_per_sec") else "-",
             (r.get("mlflow_run_id") or "")[:12]] for r in rows[:10]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for line in [head, *body]:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    if best:
        print(f"\nbest: {best['trial_id']}  {cfg.metric}={best[cfg.metric]:.4f}  "
              + "  ".join(f"{n}={_fmt(best.get(n))}" for n in names))
    print(f"\ntables:  {table.trials_path}\n         {table.history_path}")
    print(f"MLflow:  {ui}   (experiment {cfg.mlflow.experiment!r}, parent run {parent[:12]})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.sweep",
                                description="Run a hyperparameter sweep of char-RNN trials on Ray Tune.")
    p.add_argument("file", help="sweep file (YAML), e.g. sweeps/basic.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trial plan; run nothing")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep in its output folder")
    p.add_argument("--address", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:10001 "
                                     "(default: RAY_ADDRESS, then ray.address in the file, else a local Ray)")
    return p.parse_args(argv)


def _stop_like_ctrl_c() -> None:
    """SIGTERM (docker stop, Kubernetes, Slurm) and SIGHUP (a closed terminal) do what Ctrl-C does: this process
    sends itself SIGINT, which Tune's handler (while trials run) or Python's (KeyboardInterrupt) then handles.
    Set again after ray.init, which installs a SIGTERM handler of its own that exits at once."""
    def as_sigint(signum, frame):
        os.kill(os.getpid(), signal.SIGINT)

    if threading.current_thread() is threading.main_thread():  # (signal handlers belong to the main thread)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, as_sigint)


def again(cfg: SweepConfig) -> str:
    """The command that finishes a stopped sweep: with --resume once its folder holds one (folder.holds_sweep)."""
    return f"python -m pipeline.sweep {cfg.source_path}" + (" --resume" if folder.holds_sweep(cfg) else "")


def _stopped_by_full_disk(cfg: SweepConfig, what: str) -> int:
    print("\n" + message(what, resume_command=again(cfg)), file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_like_ctrl_c()
    try:
        cfg = load_sweep(args.file)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    address = args.address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    # a trial this machine cannot hold, before Ray starts (a cluster's nodes: once Ray reports them, _check_resources)
    too_big = None if address else memory_problem(cfg, machine_memory(), "this machine")
    if args.dry_run:
        print(cfg.plan_text())
    if too_big:
        print(f"error: {too_big}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    try:
        return run_sweep(cfg, address=address, resume=args.resume)
    except KeyboardInterrupt:  # Ctrl-C outside Tune's run (starting up, writing the summary)
        print(f"\ninterrupted: finish with  {again(cfg)}" if folder.holds_sweep(cfg)
              else "\ninterrupted before any trial started; run the same command again", file=sys.stderr)
        return 130
    except (SweepError, ConfigError, folder.FolderError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a full disk, wherever it was found (the others are raised again)
        full = disk_full(e)
        if full is None:
            raise
        return _stopped_by_full_disk(cfg, describe(full, where=str(cfg.output.resolve())))


if __name__ == "__main__":
    sys.exit(main())
