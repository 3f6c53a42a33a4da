"""Every private or developer API of Ray that rnnsweep uses, in one place. Checked against Ray 2.60.0 (the version
pyproject.toml pins); ``problems()`` says which of them the installed Ray lacks, and a test fails on any.

| what | where in Ray | why rnnsweep needs it |
| --- | --- | --- |
| environment variables (``PROCESS_ENV``, ``LOOPBACK_ENV``) | read by Ray and Tune at import or start | Tune's own tables and per-trial CSV/JSON/TensorBoard loggers would duplicate the driver's progress line, MLflow and Parquet; Ray otherwise swaps 127.0.0.1 for the machine's outward address |
| ``ray.init(_node_ip_address=..., _system_config=...)`` | private arguments of ``ray.init`` | a node on loopback only; no workers prestarted and no metrics collection (CPU a small machine needs for trials) |
| ``ray._private.parameter.RayParams`` (``no_monitor``, ``include_log_monitor``) | private | ``ray start`` has flags to leave out the autoscaler and log monitors; ``ray.init`` does not (``lean_local_node``) |
| ``Tuner._local_tuner._run_config`` | private | ``Tuner.restore`` takes no ``run_config``: a resumed sweep needs its own callback (``restore_tuner``) |
| ``PopulationBasedTraining._trial_state``, ``._perturbation_interval`` | private | Tune saves no scheduler state: a trial resumed by ``--resume`` keeps its place in PBT's schedule (``keep_pbt_schedule``) |
| ``tune.get_context().get_storage()`` (``storage_filesystem``, ``experiment_fs_path``, ``trial_fs_path``) | developer API | a restarted trial finds its newest complete checkpoint, also in folders Tune's saved state no longer knows (``trial_folders``); a trial writes each checkpoint in its own folder of the output, not in the system's temp folder, where a killed worker would leave it (``trial_folder``) |
| ``Trial.storage.trial_dir_name``, ``Trial.error_file`` | developer API (``Trial``) | a trial's position when its id is random (Optuna); a failed trial's error text |
| ``tuner_internal._TUNER_PKL``, the ``CKPT_FILE_TMPL`` of ``TuneController``, ``BasicVariantGenerator``, ``SearchGenerator``, ``Searcher``, ``CallbackList`` | private | the files of Tune's saved state, which Tune writes in place: one cut short by a full disk is rewritten or set aside before ``--resume`` restores (``repair_saved_state``, ``can_restore``) |
| the logger ``ray.tune.execution.experiment_state`` | internal | Tune logs a failure to save its state and goes on; on a full disk the sweep stops instead (``on_state_save_error``) |

Imports Ray only inside its functions, so the driver can set ``PROCESS_ENV`` before Ray loads.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "CHECKED_VERSION", "LOCAL_SYSTEM_CONFIG", "LOOPBACK_ENV", "PROCESS_ENV", "error_text", "keep_pbt_schedule",
    "can_restore", "lean_local_node", "on_state_save_error", "problems", "repair_saved_state", "restore_tuner", "set_process_env", "silent_reporter",
    "trial_dir_name",
    "trial_folder", "trial_folders",
]

CHECKED_VERSION = "2.60.0"

# Read by Ray and Tune when they are imported or started, so set before the driver imports Ray.
PROCESS_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the driver's progress line replaces Tune's tables
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard per trial: MLflow and Parquet hold it
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
}
# With a local or loopback cluster: Ray swaps 127.0.0.1 for this machine's outward address unless told the
# cluster is single-host.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# A local node: no workers prestarted for the driver (Tune's trial actors have a runtime env of their own and
# start new workers anyway; two idle processes importing Ray cost a core-second each) and no metrics
# collection (it only feeds Ray's dashboard, which a local sweep does not start).
LOCAL_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_metrics_collection": False}


def set_process_env(*, loopback: bool) -> None:
    """Put ``PROCESS_ENV`` (and ``LOOPBACK_ENV`` for a local or loopback Ray) in this process's environment,
    keeping any value the user set. Call before importing Ray."""
    for key, value in {**PROCESS_ENV, **(LOOPBACK_ENV if loopback else {})}.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def lean_local_node() -> Iterator[None]:
    """A local Ray node started inside this block runs without its autoscaler monitor (a fixed single node has
    nothing to scale) and its log monitor (it forwards worker output to the driver: log_to_driver=False).
    Together they cost about two core-seconds while the sweep starts and a per cent of a core while it runs.
    With a Ray whose RayParams lacks the two settings, the node starts as ray.init makes it."""
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


class RestoreError(RuntimeError):
    """This Ray restores Tune runs in a way rnnsweep does not support."""


def restore_tuner(tune_dir: str, *, trainable: Any, param_space: dict[str, Any], run_config: Any) -> Any:
    """Tune's saved run (trial ids, configs, statuses, newest checkpoints) with this driver's ``run_config``.
    A restored Tuner would otherwise run with the RunConfig pickled at its start, holding the callback of a
    driver that is gone."""
    from ray import tune

    tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True,
                               param_space=param_space)
    local = getattr(tuner, "_local_tuner", None)
    if local is None or not hasattr(local, "_run_config"):
        import ray

        raise RestoreError(f"--resume: this Ray version ({ray.__version__}) restores Tune runs in a way rnnsweep "
                           f"does not support (checked with {CHECKED_VERSION}); pin that version in pyproject.toml")
    local._run_config = run_config
    return tuner


def _state_files() -> dict[str, str]:
    """Tune's saved-state file names (a pattern with {} for the driver's session) -> how each is read."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.search.searcher import Searcher

    return {TuneController.CKPT_FILE_TMPL: "json", BasicVariantGenerator.CKPT_FILE_TMPL: "pickle",
            SearchGenerator.CKPT_FILE_TMPL: "pickle", Searcher.CKPT_FILE_TMPL: "pickle",
            CallbackList.CKPT_FILE_TMPL: "pickle"}


def repair_saved_state(tune_dir: str, *, fresh: Callable[[], Any]) -> list[str]:
    """Make Tune's saved state in the local folder ``tune_dir`` readable again after a full disk cut a file of it
    short (Tune writes them in place); returns a note per file mended.

    - ``tuner.pkl`` (what the Tuner was made with) that does not unpickle is written anew by ``fresh()``, which
      makes a new Tuner with this sweep's trainable and configs: its constructor writes that file, and only that.
    - Each driver saves its trials, its search algorithm's and its callbacks' state in files named after its
      session. When one of them does not read back, all of that session's are renamed ``*.unreadable``: Tune
      then restores an earlier driver's state (or none: ``can_restore``), and each trial goes on from its newest
      complete checkpoint (``trial_folders``)."""
    import fnmatch
    import json
    import pickle

    import ray.cloudpickle as cloudpickle
    from ray.tune.impl.tuner_internal import _TUNER_PKL

    notes = []
    path = os.path.join(tune_dir, _TUNER_PKL)
    if os.path.exists(path) and not _reads(path, pickle.load, "rb"):
        fresh()
        notes.append(f"{path} was cut short (a full disk?); written again")
    names = os.listdir(tune_dir)
    sessions: dict[str, list[str]] = {}  # session -> its state files
    broken: set[str] = set()
    for pattern, kind in _state_files().items():
        head, tail = pattern.split("{}")
        for name in fnmatch.filter(names, pattern.format("*")):
            session = name[len(head):len(name) - len(tail)]
            sessions.setdefault(session, []).append(name)
            read = json.load if kind == "json" else cloudpickle.load
            if not _reads(os.path.join(tune_dir, name), read, "r" if kind == "json" else "rb"):
                broken.add(session)
    for session in sorted(broken):
        for name in sessions[session]:
            os.replace(os.path.join(tune_dir, name), os.path.join(tune_dir, name + ".unreadable"))
        notes.append(f"Tune's state saved at {session} in {tune_dir} was cut short (a full disk?); set aside as "
                     f"*-{session}.*.unreadable, so each trial goes on from its newest complete checkpoint")
    return notes


def _reads(path: str, read: Callable[[Any], Any], mode: str) -> bool:
    try:
        with open(path, mode) as f:
            read(f)
        return True
    except Exception:  # noqa: BLE001 - a file cut short raises one of several
        return False


def can_restore(tune_dir: str) -> bool:
    """Whether ``tune_dir`` holds a Tune run to restore: the Tuner's file and a saved experiment state (a driver
    stopped before Tune saved one, or whose state was set aside, restarts its trials from their checkpoints)."""
    import fnmatch

    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    return tune.Tuner.can_restore(tune_dir) and bool(
        fnmatch.filter(os.listdir(tune_dir), TuneController.CKPT_FILE_TMPL.format("*")))


STATE_SAVING_LOGGER = "ray.tune.execution.experiment_state"  # logs (and swallows) a failure to save Tune's state


class _StateSaveHook(logging.Filter):
    """Hands the error of each record Tune logs about saving its state to ``handler``; drops those it took."""

    def __init__(self, handler: Callable[[BaseException], bool]):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not self.handler(error)


def on_state_save_error(handler: Callable[[BaseException], bool]) -> None:
    """Call ``handler(error)`` when Tune fails to save its state (its syncer logs the error and goes on); a record
    the handler returns True for is not logged. Replaces the handler an earlier call set."""
    logger = logging.getLogger(STATE_SAVING_LOGGER)
    for f in [f for f in logger.filters if isinstance(f, _StateSaveHook)]:
        logger.removeFilter(f)
    logger.addFilter(_StateSaveHook(handler))


def keep_pbt_schedule(pbt: Any, trial: Any, done: int) -> None:
    """A trial that comes back with ``done`` iterations (``--resume``) was last perturbed at the latest multiple
    of the perturbation interval, not never: PBT then does not perturb it at its first report."""
    state = pbt._trial_state[trial]
    state.last_perturbation_time = done - done % pbt._perturbation_interval
    state.last_train_time = done


def trial_folders(ctx: Any) -> tuple[Any, list[str]] | None:
    """(filesystem, folders) of every folder the running trial has had in the sweep's storage, or None outside a
    Tune session. A trial resumed before Tune saved its folder gets a new one (the name holds a timestamp); the
    trial id, stable across resumes, finds the older ones."""
    import pyarrow.fs as pafs

    try:
        storage = ctx.get_storage()
        fs, exp = storage.storage_filesystem, storage.experiment_fs_path
    except Exception:  # noqa: BLE001 - not in a Tune session
        return None
    tag = f"_{ctx.get_trial_id()}_"
    return fs, [i.path for i in fs.get_file_info(pafs.FileSelector(exp, allow_not_found=True))
                if i.type == pafs.FileType.Directory and tag in posixpath.basename(i.path)]


def trial_folder(ctx: Any) -> str:
    """The running trial's own folder: in the sweep's storage when that is a local disk (the output folder's
    tune/<trial folder>), else Tune's working folder for the trial on this node."""
    try:
        storage = ctx.get_storage()
        if storage.storage_filesystem.type_name == "local":
            return storage.trial_fs_path
    except Exception:  # noqa: BLE001 - not in a Tune session
        pass
    return ctx.get_trial_dir()


def trial_dir_name(trial: Any) -> str:
    """The name of a Tune trial's folder, ``<trainable>_<id>_<n>_<values>_<date>`` ("" if it has none yet)."""
    return getattr(getattr(trial, "storage", None), "trial_dir_name", None) or ""


def error_text(trial: Any) -> str:
    """The last line of a failed trial's error file."""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        text = Path(path).read_text(errors="replace").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else text
    return "trial failed (no error file)"


def silent_reporter() -> Any:
    """A Tune progress reporter that never reports: the driver prints its own progress line."""
    from ray.tune.progress_reporter import ProgressReporter

    class Silent(ProgressReporter):
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

    return Silent()


def problems() -> list[str]:
    """What the installed Ray lacks of the above (empty when every use still fits)."""
    import ray
    from ray import tune
    from ray._private import parameter
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining

    found = []
    if ray.__version__ != CHECKED_VERSION:
        found.append(f"Ray {ray.__version__} is installed; these uses were checked with {CHECKED_VERSION}")
    init_source = inspect.getsource(ray.init)  # private arguments come through **kwargs
    found += [f"ray.init takes no {a}" for a in ("_node_ip_address", "_system_config")
              if f'kwargs.pop("{a}"' not in init_source]
    ray_params = set(inspect.signature(parameter.RayParams.__init__).parameters)
    found += [f"RayParams has no {a}" for a in ("no_monitor", "include_log_monitor") if a not in ray_params]
    if "run_config" in inspect.signature(tune.Tuner.restore).parameters:
        found.append("Tuner.restore takes run_config now: pass it there instead of setting _local_tuner._run_config")
    from ray.tune.impl.tuner_internal import TunerInternal

    if "_run_config" not in inspect.getsource(TunerInternal.__init__):
        found.append("TunerInternal keeps no _run_config")
    pbt = PopulationBasedTraining(time_attr="iteration", perturbation_interval=10, hyperparam_mutations={"x": [1, 2]})
    found += [f"PopulationBasedTraining has no {a}" for a in ("_trial_state", "_perturbation_interval")
              if not hasattr(pbt, a)]
    from ray.tune.schedulers.pbt import _PBTTrialState

    found += [f"PBT's trial state has no {a}" for a in ("last_perturbation_time", "last_train_time")
              if a not in inspect.getsource(_PBTTrialState.__init__)]
    context = getattr(tune, "get_context", None)
    from ray.train._internal.storage import StorageContext

    if context is None or not hasattr(ray.train.context.TrainContext, "get_storage"):
        found.append("Tune's context has no get_storage()")
    found += [f"StorageContext has no {a}"
              for a in ("storage_filesystem", "experiment_fs_path", "trial_dir_name", "trial_fs_path")
              if a not in inspect.getsource(StorageContext)]
    found += [f"Trial has no {a}" for a in ("storage", "error_file") if not hasattr(Trial, a)
              and a not in inspect.getsource(Trial.__init__)]
    from ray.tune.impl import tuner_internal

    if getattr(tuner_internal, "_TUNER_PKL", None) != "tuner.pkl":
        found.append("Tune's saved Tuner is no longer tuner_internal._TUNER_PKL = 'tuner.pkl'")
    try:
        patterns = _state_files()
    except (ImportError, AttributeError) as e:
        found.append(f"Tune's saved-state file names moved ({e})")
    else:
        found += [f"Tune's state file {p} has no {{}} for the session" for p in patterns if p.count("{}") != 1]
    from ray.tune.execution import experiment_state

    if experiment_state.logger.name != STATE_SAVING_LOGGER or "failed with exception" not in inspect.getsource(
            experiment_state):
        found.append(f"Tune no longer logs a failure to save its state to {STATE_SAVING_LOGGER}")
    return found
