"""The main job: a sweep file in, Ray Tune trials, MLflow runs and Parquet tables out.

    python -m pipeline.sweep sweeps/basic.yaml [--dry-run] [--resume] [--address auto|HOST:PORT|ray://HOST:10001]

Exit codes: 0 the sweep ran (diverged or failed trials are rows with their status), 1 every trial failed,
2 bad input (nothing started, nothing written), 130 interrupted (finish it with --resume).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Sequence

from .config import ConfigError, SweepConfig, load_sweep

# Ray reads these at import time: our own progress line replaces Tune's tables, and the trial folders
# need no CSV/JSON/TensorBoard loggers (MLflow and Parquet hold the results).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")

BLAS_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


class _Startup:
    """The driver's start-up work that needs no Ray, in one thread while ray.init waits for Ray's processes:
    Tune's and the pipeline's imports, then MLflow's import and a new store's tables (StoreWarmup)."""

    def __init__(self, warmup):
        self._warmup = warmup
        self._thread = threading.Thread(target=self._run, name="rnnsweep-startup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for name in ("ray.tune", f"{__package__}.callback", f"{__package__}.results", f"{__package__}.trainable"):
            try:  # imported here to be ready later; the driver imports them again, where any error shows
                importlib.import_module(name)
            except Exception:  # noqa: BLE001
                break
        self._warmup.prepare()

    def join(self) -> None:
        self._thread.join()

    def discard(self) -> None:
        """The sweep stops before it starts: skip the store if not begun, wait, remove what was prepared."""
        self._warmup.discard()
        self._thread.join()
        self._warmup.discard()


STARTED = time.monotonic()  # the sweep's clock: `time_budget_s` counts from here, not from Tune's start
# What a sweep does after Tune stops its trials (the last reports, the tables, the parent run, the report and
# Ray's shutdown) takes time too, measured on 2 cores: 4 s for sweeps/basic.yaml, 12.4 s for sweeps/quality.yaml.
# Tune's own budget ends this much earlier, so a sweep returns within `time_budget_s` (measured with a reserve of
# 15 s: 19 s for `time_budget_s: 30` on basic.yaml, 147.4 s for 150 s on quality.yaml; 20 s leaves a margin).
FINISH_RESERVE_S = 20.0


class SweepError(Exception):
    """Bad input found after parsing (cluster resources, an existing output); exit code 2."""


def sweep_id(cfg: SweepConfig) -> str:
    """Deterministic: the same sweep name and output folder give the same id (how --resume reattaches)."""
    return hashlib.sha256(f"{cfg.name}\0{cfg.output.resolve()}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- driver


def run_sweep(cfg: SweepConfig, *, address: str | None, resume: bool) -> int:
    from .tracking import StoreWarmup, Tracker, check_server, resolve_uri, ui_command  # imports no MLflow: cheap

    output = cfg.output.resolve()
    tune_dir = (cfg.storage.rstrip("/") + "/" + cfg.name) if cfg.storage else str(output / "tune")
    has_run = (output / "trials.parquet").exists() or (not cfg.storage and (output / "tune").exists())
    if has_run and not resume:
        raise SweepError(f"output folder {cfg.output} already holds a sweep; add --resume to finish it, "
                         "or set `output:` to a new folder")
    if resume and not has_run:
        raise SweepError(f"--resume: {cfg.output} holds no sweep to resume; run without --resume to start one")

    uri = resolve_uri(cfg.mlflow.tracking_uri)
    check_server(uri)  # before importing Ray and Tune (seconds), so a dead server fails within its timeout
    import ray

    # Ray's processes start as early as possible (ray.init mostly waits for them, on the other core), while
    # one thread does the driver's own start-up work: Tune's and the pipeline's imports, MLflow's import and a
    # new store's tables (put in place only once the checks below have passed)
    warmup = StoreWarmup(uri)
    startup = _Startup(warmup)
    try:
        _start_ray(address)
        startup.join()
    except BaseException:
        startup.discard()
        raise
    corpus = cfg.corpus()  # read by load_sweep when it checked the file
    from ray import tune

    from .callback import SweepCallback
    from .results import ResultsTable
    from .trainable import train_trial

    # Python's final garbage collection walks every object of Ray, MLflow, pandas and matplotlib (~2 s at
    # exit, after the work is done); frozen objects are skipped, and the OS frees the memory anyway
    import atexit
    import gc

    atexit.register(gc.freeze)
    tracker = callback = None
    try:
        _check_resources(cfg, local=not address)
        warmup.install()
        tracker = Tracker(uri=uri, experiment=cfg.mlflow.experiment, sweep_id=sweep_id(cfg))
        parent = tracker.start_sweep(name=cfg.name, sweep_text=cfg.source_text, resume=resume,
                                     params={"sweep_file": str(cfg.source_path), "num_trials": cfg.num_trials,
                                             "corpus": str(cfg.data.path), "corpus_sha256": corpus.sha256,
                                             "seed": cfg.seed, "metric": cfg.metric, "mode": cfg.mode,
                                             "scheduler": cfg.scheduler.type, "search_alg": cfg.search_alg.type})
        table = ResultsTable(output, sweep_text=cfg.source_text)
        if resume:
            table.load_existing()
        callback = SweepCallback(cfg=cfg, tracker=tracker, table=table)
        base = cfg.base_values()
        common = dict(corpus=corpus, base=base, sweep_seed=cfg.seed, derive_seed=cfg.derive_seed)
        packs = None
        if cfg.packing:  # trials drawn up front and grouped: one Tune trial trains one pack
            from .packing import expand_trials, make_packs
            from .trainable import train_pack

            trials = expand_trials(cfg)
            packs = make_packs(trials, base, cfg.packing.max_trials)
            callback.packs = {i: (trials[i], p) for p, members in enumerate(packs) for i in members}
            fn = tune.with_parameters(train_pack, trials=trials, packs=packs, **common)
        else:
            fn = tune.with_parameters(train_trial, **common)
        trainable = tune.with_resources(fn, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
        in_packs = f" in {len(packs)} packs" if packs else ""
        print(f"sweep {cfg.name}: {cfg.num_trials} trials{in_packs}, {cfg.scheduler.type} scheduler, "
              f"MLflow experiment {cfg.mlflow.experiment!r} at {uri}", flush=True)
        for note in cfg.notes():
            print(f"note: {note}", file=sys.stderr, flush=True)
        run_config = _run_config(cfg, callback, tune_dir)
        if resume and tune.Tuner.can_restore(tune_dir):
            # Tune's own state: trial ids, configs, statuses, newest checkpoints; finished trials stay finished
            tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                       param_space=_param_space(cfg, packs))
            # A restored Tuner runs with the RunConfig pickled at its start (the callback of a driver that is
            # gone), and Tuner.restore takes no run_config (Ray 2.60): give it this driver's, same name and storage.
            local = getattr(tuner, "_local_tuner", None)
            if local is None or not hasattr(local, "_run_config"):
                raise SweepError(f"--resume: this Ray version ({ray.__version__}) restores Tune runs in a way "
                                 "rnnsweep does not support; pin the Ray version in pyproject.toml")
            local._run_config = run_config
        else:  # a fresh sweep, or one killed before Tune saved any state: start it (again)
            tuner = tune.Tuner(trainable, param_space=_param_space(cfg, packs), tune_config=_tune_config(cfg, packs),
                               run_config=run_config)
        # the report's plotting library loads while the trials start (the driver mostly waits then)
        threading.Thread(target=_warm_up_report, name="rnnsweep-report-warmup", daemon=True).start()
        try:
            tuner.fit()  # Ctrl-C: Tune stops the trials, saves its state and returns
        except KeyboardInterrupt:
            pass
        closed = sum(1 for r in table.trials.values() if r.get("status") in ("finished", "stopped", "diverged", "failed"))
        interrupted = closed < cfg.num_trials and not cfg.time_budget_s
        callback.finish()
        best = callback.best()
        tracker.finish_sweep(status="KILLED" if interrupted else "FINISHED", best=best,
                             files=[str(table.trials_path), str(table.history_path)])
        _print_summary(cfg, table, best, ui_command(uri), parent)
        if table.trials and not interrupted:  # an interrupted sweep gets its report when --resume finishes it
            from concurrent.futures import ThreadPoolExecutor

            from .report import write_report

            # drawn while Ray shuts down (which mostly waits for its processes to exit): seconds off the end
            with ThreadPoolExecutor(1, thread_name_prefix="report") as pool:
                report = pool.submit(write_report, output, tracking_uri=uri)
                ray.shutdown()
                print(f"report:  {report.result() / 'report.md'}")
        if interrupted:
            print(f"\ninterrupted: finish with  python -m pipeline.sweep {cfg.source_path} --resume",
                  file=sys.stderr)
            return 130
        statuses = [r["status"] for r in table.trials.values()]
        return 1 if statuses and all(s == "failed" for s in statuses) else 0
    except KeyboardInterrupt:  # outside Tune's run (which handles Ctrl-C itself): close what is open
        if tracker is not None and tracker.parent_id:
            if callback is not None:
                callback.finish()
            tracker.finish_sweep(status="KILLED", best=None, files=[])
        raise
    finally:
        warmup.discard()
        ray.shutdown()


def _warm_up_report() -> None:
    try:
        from .report import warm_up

        warm_up()
    except Exception:  # noqa: BLE001 - only a head start; the report itself shows any error
        pass


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
        # - no autoscaler monitor and no log monitor (see _without_monitors).
        with _without_monitors():
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     _system_config={"prestart_worker_first_driver": False, "enable_metrics_collection": False},
                     **common)
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


@contextlib.contextmanager
def _without_monitors():
    """A local Ray node without its autoscaler monitor (a fixed single node has nothing to scale) and its log
    monitor (which forwards worker output to the driver: log_to_driver=False). Together they cost about two
    core-seconds while the sweep starts and a per cent of a core while it runs. `ray start` has flags for
    both; ray.init does not, so they are set on the node parameters it builds (Ray's private RayParams).
    With a Ray whose RayParams lacks them, the node starts as ray.init makes it."""
    import inspect

    try:
        from ray._private import parameter

        init = parameter.RayParams.__init__
        fits = {"no_monitor", "include_log_monitor"} <= set(inspect.signature(init).parameters)
    except (ImportError, AttributeError, TypeError, ValueError):
        fits = False
    if not fits:
        yield
        return

    def lean(self, *args, **kwargs):
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        init(self, *args, **kwargs)

    parameter.RayParams.__init__ = lean
    try:
        yield
    finally:
        parameter.RayParams.__init__ = init


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
    if budget is None:
        return None
    return max(1.0, budget - (time.monotonic() - STARTED) - FINISH_RESERVE_S)


class _Silent:
    """A progress reporter that never reports: the SweepCallback prints a concise line instead."""

    def setup(self, *a, **k):
        pass

    def should_report(self, trials, done=False):
        return False

    def report(self, trials, done, *sys_info):
        pass

    def set_search_properties(self, metric, mode):
        return True

    def set_total_samples(self, total_samples):
        pass


def _run_config(cfg: SweepConfig, callback, tune_dir: str):
    from ray import tune
    from ray.tune.progress_reporter import ProgressReporter

    from .search import checkpoints_to_keep

    class Silent(_Silent, ProgressReporter):
        pass

    storage, name = tune_dir.rsplit("/", 1)
    return tune.RunConfig(name=name, storage_path=storage, callbacks=[callback], verbose=0,
                          progress_reporter=Silent(),
                          failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(cfg)))


# ------------------------------------------------------------------------------------------ reporting


def _print_summary(cfg: SweepConfig, table, best, ui: str, parent: str) -> None:
    from .callback import _finite

    rows = [r for r in table.trials.values() if _finite(r.get(cfg.metric))]
    rows.sort(key=lambda r: r[cfg.metric], reverse=cfg.mode == "max")
    names = list(cfg.searched) + (["final_lr"] if cfg.scheduler.type == "pbt" else [])  # PBT: the lr it ended with
    print(f"\nleaderboard (top {min(10, len(rows))} of {len(table.trials)} by {cfg.metric}):")
    head = ["trial", "status", *names, "val_loss", "val_bpc", "chars/s", "mlflow run"]
    body = [[r["trial_id"], r["status"], *[_fmt(r.get(n)) for n in names], _fmt(r.get("val_loss")),
             _fmt(r.get("val_bpc")), f"{r['chars_per_sec']:,.0f}" if r.get("chars_per_sec") else "-",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_sweep(args.file)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(cfg.plan_text())
        return 0
    address = args.address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if not address or _is_loopback(address):
        # Ray swaps 127.0.0.1 for this machine's outward address unless told the cluster is single-host
        # (read when Ray is imported, so before any import of it)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        return run_sweep(cfg, address=address, resume=args.resume)
    except KeyboardInterrupt:  # Ctrl-C outside Tune's run (starting up, writing the summary)
        started = (cfg.output / "trials.parquet").exists() or (cfg.output / "tune").exists()
        print(f"\ninterrupted: finish with  python -m pipeline.sweep {cfg.source_path} --resume" if started
              else "\ninterrupted before any trial started; run the same command again", file=sys.stderr)
        return 130
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .tracking import TrackingError

        if isinstance(e, TrackingError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
