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

Imports Ray only inside its functions, so the driver can set ``PROCESS_ENV`` before Ray loads.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKED_VERSION", "LOCAL_SYSTEM_CONFIG", "LOOPBACK_ENV", "PROCESS_ENV", "error_text", "keep_pbt_schedule",
    "lean_local_node", "problems", "restore_tuner", "set_process_env", "silent_reporter", "trial_dir_name",
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
    return found
