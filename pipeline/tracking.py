"""MLflow adapter: one experiment per sweep, a parent run, one child run per trial. The only module of the pipeline
importing MLflow (``pipeline/mlflow_model.py`` is the logged model's own code, which MLflow loads with the model).

Runs are found again by tags (`rnnsweep.sweep_id` on the parent, `trial_id` on children), so a restarted
trial or a resumed sweep continues its own run instead of opening a second one.

What a run shows:
- every run: the corpus as its dataset input (name, digest, source path, size, vocabulary and split).
- a child: the trial's params, its metrics by iteration, `rnnsweep.status` (pipeline.vocab's status) and the
  MLflow status it maps to (RUN_STATUS): a trial stopped early by ASHA or the time budget ended normally
  (FINISHED, with a `stop_reason`); KILLED is an interruption, FAILED an error or a divergence.
- the parent: the sweep's params and search space (`space.<option>`), and `best_val_loss` / `best_val_bpc`,
  the metrics of the best trial so far by pipeline.vocab's ranking rule, logged each time a trial ends (step
  = how many trials have ended), so the chart shows the sweep converging; the tag `best_trial` names it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, Mapping

from .vocab import CLOSED

if TYPE_CHECKING:
    from .lineage import LineageEvent

SWEEP_TAG = "rnnsweep.sweep_id"
STATUS_TAG = "rnnsweep.status"  # a trial's status, one of pipeline.vocab.STATUSES
TRIAL_TAG = "trial_id"
# a trial's status -> the MLflow status its run ends with
RUN_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "interrupted": "KILLED"}
BEST_METRICS = ("val_loss", "val_bpc")  # logged on the parent as best_<name>: the best trial's value
DATASET_CONTEXT = "training"  # the corpus's role in every run (MLflow's mlflow.data.context input tag)
# Set (unless the user set them) before this module first uses MLflow:
MLFLOW_ENV = {
    # with a tracking server, MLflow prints two "View run/experiment at: URL" lines per ended run; the driver's
    # progress line and summary (which names the server) replace them
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # nor progress bars for artifact transfers (shown once tqdm is installed): a few small files each
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # a server that went away fails a call within ~10 s (3 retries, 1 + 2 + 4 s of backoff plus jitter), not after
    # MLflow's default of 7 retries with doubling backoff (~4 minutes); the driver then stops the sweep as Ctrl-C
    # does (pipeline.callback). 30 s for one request's connect or read, not 120.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _quiet_mlflow() -> None:
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    # a database store that fails a call (full disk, locked, broken) logs the SQL error with its traceback before
    # raising it; the caller reports the failure itself, in one line (pipeline.callback, pipeline.sweep)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message says which URI and what to do."""


def store_errors() -> tuple[type[BaseException], ...]:
    """What a tracking call raises when the store cannot be used (a server gone or refusing, a broken database):
    MLflow's own exception, and the HTTP, database and OS errors under it."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, requests.RequestException, SQLAlchemyError, OSError)


def failure_text(error: BaseException) -> str:
    """A failed tracking call in a few words: the OS's reason when there is one ("[Errno 111] Connection refused"),
    else the first line of the message, shortened."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] [^'\")\\]+", text)
    if found:
        return found.group(0).strip()
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return first if len(first) <= 160 else first[:157] + "..."


def resolve_uri(uri: str | None) -> str:
    """The tracking URI in force: the file's, else MLFLOW_TRACKING_URI, else a local store in the working dir."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


# the URI schemes MLflow opens a tracking store for (checked against MLflow 3.17, mlflow.tracking._tracking_service
# .utils); a plugin adds its own as an entry point of the group mlflow.tracking_store
STORE_SCHEMES = ("", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                 "uc")


def check_server(uri: str, timeout_s: float = 7.0) -> None:
    """Fail at once unless MLflow can keep runs at ``uri`` (check_store); for http(s) URIs, fail within timeout_s
    unless the server answers its /health endpoint (7 s: with the driver's start-up, a dead server is reported
    within 10 s)."""
    check_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=max(0.5, min(3.0, deadline - time.monotonic()))) as r:
                if r.status == 200:
                    return
        except (OSError, socket.timeout) as e:
            last = e
        time.sleep(0.5)
    raise TrackingError(f"MLflow tracking server {uri} did not answer within {timeout_s:.0f} s ({last}); "
                        "start it (docker compose up mlflow) or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI")


def check_store(uri: str) -> None:
    """TrackingError for a URI MLflow has no store for, or a local sqlite store that cannot be written: MLflow
    says so only once the driver has started Ray, in a 14- to 43-line traceback."""
    fix = "fix mlflow.tracking_uri in the sweep file, or MLFLOW_TRACKING_URI"
    scheme = urllib.parse.urlparse(uri).scheme.lower().split("+")[0]  # postgresql+psycopg2: a driver
    if len(scheme) > 1 and scheme not in STORE_SCHEMES and scheme not in _plugin_schemes():
        raise TrackingError(f"MLflow tracking URI must be one MLflow keeps runs under (http://, https://, sqlite:///, "
                            f"postgresql://, mysql://, mssql://, file:, databricks), but got {uri[:200]!r}; {fix}, "
                            "e.g. http://host:5000 or sqlite:///mlflow.db")
    database = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if not database or database == ":memory:":
        return
    path = os.path.abspath(database)
    folder = os.path.dirname(path)
    problem = (f"its folder {folder} does not exist" if not os.path.exists(folder) else
               f"{folder} is not a folder" if not os.path.isdir(folder) else
               f"its folder {folder} is not writable" if not os.access(folder, os.W_OK | os.X_OK) else
               f"{path} is not writable" if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK) else None)
    if problem:
        raise TrackingError(f"MLflow tracking URI {uri[:200]} must name a sqlite file MLflow can write, but "
                            f"{problem}; {fix}, e.g. sqlite:///mlflow.db in a folder you can write")
    broken = _not_sqlite(path) if os.path.isfile(path) and os.path.getsize(path) > 0 else None
    if broken:
        raise TrackingError(f"MLflow tracking URI {uri[:200]} must name a sqlite file MLflow can write, but {path} "
                            f"is not one that reads ({broken}); move it aside (MLflow starts a new store there) or "
                            f"{fix}")


def _not_sqlite(path: str) -> str | None:
    """Why the existing file ``path`` is no readable SQLite database (a corrupt or foreign file), else None."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True,
                                                timeout=10)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {e.name for e in entry_points(group="mlflow.tracking_store")}


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


class StoreWarmup:
    """A new local sqlite store, prepared while the driver starts Ray (call prepare() in a background thread).

    MLflow builds a new store's tables with ~3 s of migrations. The first time, prepare() builds them in a
    private temp folder; install() then also keeps an empty copy (no experiments) as a template in the user's
    cache (STORE_CACHE_ENV, else $XDG_CACHE_HOME/rnnsweep, else ~/.cache/rnnsweep), one per MLflow version,
    so later sweeps copy it instead. MLflow adds the Default experiment when it opens a store without one.
    The store is put where the URI points only by install(), after the sweep's checks passed: bad input
    still leaves no store behind (discard() removes the temp folder). Best effort: if anything goes wrong
    here, the Tracker creates the store in place, as it would anyway."""

    def __init__(self, uri: str):
        self._db = _new_sqlite_path(uri)
        self._tmp: str | None = None
        self._built: str | None = None
        self._template: str | None = None  # where a new template goes (install), when none was found
        self._cancel = threading.Event()

    def prepare(self) -> None:
        """MLflow's import (~2 s) and the new store's tables; blocking, meant for a background thread."""
        try:
            _quiet_mlflow()
            import mlflow
            from mlflow.tracking import MlflowClient

            if self._db is None or self._cancel.is_set():
                return
            self._tmp = tempfile.mkdtemp(prefix="rnnsweep-mlflow-")
            template = os.path.join(_cache_dir(), f"mlflow-{mlflow.__version__}-store.db")
            if os.path.exists(template):
                try:
                    path = os.path.join(self._tmp, "copied.db")
                    shutil.copyfile(template, path)
                    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
                    self._built = path
                    return
                except Exception:  # noqa: BLE001 - a damaged template: build the tables, and replace it
                    pass
            self._template = template
            path = os.path.join(self._tmp, "mlflow.db")
            # the tables, and the Default experiment MLflow would create in place (its artifact root is
            # resolved against this process's working directory, not the database's folder)
            MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
            self._built = path
        except Exception:  # noqa: BLE001 - best effort, see the class docstring
            self._built = None

    def install(self) -> None:
        """Put the prepared store in place unless one exists there by now (prepare() must have returned)."""
        if self._built and self._db and not os.path.exists(self._db):
            tmp = f"{self._db}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(self._built, tmp)
                os.link(tmp, self._db)  # atomic, and never replaces a store another driver created meanwhile
            except OSError:  # a missing folder, a filesystem without hard links: MLflow creates it in place
                pass
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        if self._built and self._template:
            _save_template(self._built, self._template)
        self.discard()

    def discard(self) -> None:
        """Drop the prepared store (idempotent): the sweep stopped before it needed one, or install() ran."""
        self._cancel.set()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = self._built = None


STORE_CACHE_ENV = "RNNSWEEP_CACHE_DIR"


def _cache_dir() -> str:
    root = os.environ.get(STORE_CACHE_ENV)
    if root:
        return root
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rnnsweep")


def _save_template(built: str, template: str) -> None:
    """An empty copy of a freshly built store (its experiments removed), written atomically; best effort."""
    import sqlite3

    tmp = None
    try:
        os.makedirs(os.path.dirname(template), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(template), prefix=".store.", suffix=".db")
        os.close(fd)
        shutil.copyfile(built, tmp)
        con = sqlite3.connect(tmp)
        try:
            with con:
                con.execute("DELETE FROM experiment_tags")
                con.execute("DELETE FROM experiments")
        finally:
            con.close()
        os.replace(tmp, template)
    except Exception:  # noqa: BLE001 - a read-only home, a schema this code does not know: no template
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _new_sqlite_path(uri: str) -> str | None:
    """The file of a plain local sqlite URI whose store does not exist yet; None for anything else."""
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    path = uri[len("sqlite:///"):]
    if not path or path == ":memory:":
        return None
    path = os.path.abspath(path)
    return None if os.path.exists(path) else path


class Tracker:
    """Thin wrapper over MlflowClient with the sweep's run layout."""

    def __init__(self, *, uri: str, experiment: str, sweep_id: str, corpus: Any = None):
        """``corpus`` (an rnncore Corpus), when given, is logged as the dataset input of every run created."""
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri, self.sweep_id = uri, sweep_id
        self.dataset = corpus_input(corpus) if corpus is not None else None
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except Exception:  # created meanwhile by another driver
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}  # trial_id tag -> run id, the parent's existing child runs (resume)
        self.open_children: set[str] = set()  # trial_id tags of those runs not ended with a closed status (resume)
        self.last_step: dict[str, int] = {}  # run id -> highest step logged, so a repeated report is not re-logged

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def start_sweep(self, *, name: str, params: Mapping[str, Any], sweep_text: str, resume: bool) -> str:
        """The parent run: reattached on resume, else new (an earlier sweep with the same id keeps its run).

        Child runs carry the sweep tag too: the parent is the run with the tag and no parent of its own."""
        found = self._find(f"tags.`{SWEEP_TAG}` = '{self.sweep_id}' and tags.`mlflow.parentRunId` IS NULL") \
            if resume else None
        if found:
            self.parent_id = found
            self.client.update_run(found, status="RUNNING")
            self.children = self._children(found)
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={SWEEP_TAG: self.sweep_id})
            self.parent_id = run.info.run_id
            self.client.log_batch(self.parent_id, params=_params(params))
            self._log_dataset(self.parent_id)
            self.client.log_text(self.parent_id, sweep_text, "sweep.yaml")
        return self.parent_id

    def _children(self, parent_id: str) -> dict[str, str]:
        """trial_id tag -> run id of the parent's child runs (the oldest wins if a trial has two)."""
        out: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token,
                                           filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                           order_by=["attributes.start_time DESC"])
            for r in page:
                if TRIAL_TAG in r.data.tags:
                    out[r.data.tags[TRIAL_TAG]] = r.info.run_id
                    # (newest first, so the run kept, the oldest, decides)
                    if r.info.status == "RUNNING" or r.data.tags.get(STATUS_TAG) not in CLOSED:
                        self.open_children.add(r.data.tags[TRIAL_TAG])
                    else:
                        self.open_children.discard(r.data.tags[TRIAL_TAG])
            token = page.token
            if not token:
                return out

    def trial_run(self, *, trial_id: str, name: str, params: Mapping[str, Any]) -> str:
        """The child run of a trial: reattached when the parent already has one for this trial, else created.

        Children are looked up once per driver (start_sweep); a run created by this driver is kept by the caller."""
        found = self.children.get(trial_id)
        if found:
            self.client.update_run(found, status="RUNNING")
            rows = self.metric_rows(found)
            self.last_step[found] = rows[-1]["iteration"] if rows else -1
            return found
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={TRIAL_TAG: trial_id, "mlflow.parentRunId": self.parent_id,
                                           SWEEP_TAG: self.sweep_id})
        self.client.log_batch(run.info.run_id, params=_params(params))
        self._log_dataset(run.info.run_id)
        self.children[trial_id] = run.info.run_id
        self.last_step[run.info.run_id] = -1
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> bool:
        """All metrics of one report in one request; non-finite values (divergence) are left out.

        A step at or below the run's highest logged step is a report repeated after a restart or a resume
        (the trial continued from an older checkpoint): nothing is logged and False is returned."""
        from mlflow.entities import Metric

        if step <= self.last_step.get(run_id, -1):
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)
        if run_id in self.last_step:
            self.last_step[run_id] = step
        return True

    def metric_rows(self, run_id: str) -> list[dict[str, Any]]:
        """A run's metrics as rows of the history, one per step: ``{"iteration": step, name: value, ...}``
        (to rebuild a history.parquet that was moved aside; the last is where a reattached run goes on)."""
        rows: dict[int, dict[str, Any]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                rows.setdefault(int(m.step), {"iteration": int(m.step)})[key] = m.value
        return [rows[step] for step in sorted(rows)]

    def delete_tags(self, run_id: str, keys: list[str]) -> None:
        for key in keys:
            try:
                self.client.delete_tag(run_id, key)
            except Exception:  # noqa: BLE001 - a tag that was never set (a kill came in between)
                pass

    def record_lineage(self, run_id: str, event: LineageEvent) -> None:
        """PBT: a new branch of the trial (``event.branch``) drops the tags of the clones it undoes and logs the
        steps after its start again, next to the old branch's values; a clone (``event.exploit``) is a tag
        ``pbt.exploit.NNN`` ("iteration 500: cloned t0003; learning_rate 0.05 -> 0.06"). ``pbt.exploits`` counts
        the clones of the current branch."""
        tags: dict[str, Any] = {}
        if event.branch:
            b = event.branch
            if b.dropped_exploits:
                self.delete_tags(run_id, [f"pbt.exploit.{n:03d}" for n in
                                          range(b.kept_exploits + 1, b.kept_exploits + b.dropped_exploits + 1)])
                tags["pbt.exploits"] = b.kept_exploits
            if run_id in self.last_step:
                self.last_step[run_id] = min(self.last_step[run_id], b.relog_after)
        if event.exploit:
            tags |= {f"pbt.exploit.{event.exploit.number:03d}": event.exploit.text(),
                     "pbt.exploits": event.exploit.number}
        if tags:
            self.set_tags(run_id, tags)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_file(self, run_id: str, local_path: str, artifact_dir: str) -> None:
        self.client.log_artifact(run_id, local_path, artifact_dir)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:  # one request, not one per tag
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """End a trial's run: ``status`` is the trial's (pipeline.vocab.STATUSES; tagged `rnnsweep.status`), the run
        ends with the MLflow status RUN_STATUS maps it to."""
        if status not in RUN_STATUS:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUS)}, but got {status!r}")
        self.set_tags(run_id, {STATUS_TAG: status, **(tags or {})})
        self.client.set_terminated(run_id, status=RUN_STATUS[status])

    def log_best(self, best: Mapping[str, Any], *, step: int) -> None:
        """The best trial so far on the parent: ``best_val_loss`` and ``best_val_bpc`` at ``step`` (how many trials
        have ended), and the tags `best_trial` and `best_run_id`."""
        # (log_metrics leaves out what is not a finite number)
        self.log_metrics(self.parent_id, {f"best_{k}": best.get(k) for k in BEST_METRICS}, step)
        self._tag_best(best)

    def _tag_best(self, best: Mapping[str, Any]) -> None:
        self.set_tags(self.parent_id, {"best_trial": best.get("trial_id", ""),
                                       "best_run_id": best.get("mlflow_run_id", "")})

    def finish_sweep(self, *, status: str, best: Mapping[str, Any] | None, files: list[str]) -> None:
        """status: the parent run's MLflow status (FINISHED, or KILLED for an interrupted sweep). ``best`` sets the
        best-trial tags again (the metrics were logged as each trial ended)."""
        if best:
            self._tag_best(best)
        for f in files:
            if os.path.exists(f):
                self.client.log_artifact(self.parent_id, f, "results")
        self.client.set_terminated(self.parent_id, status=status)

    def _log_dataset(self, run_id: str) -> None:
        if self.dataset is not None:
            self.client.log_inputs(run_id, datasets=[self.dataset])


def corpus_input(corpus: Any):
    """An rnncore Corpus as an MLflow dataset input, for the runs table's Dataset column: named after its file,
    with the first 10 hex digits of the file's SHA-256 as digest (MLflow keeps digests short; the parent's
    `corpus_sha256` param has all of them), the file's path as a local source, and as profile its size in
    characters, its vocabulary and its split."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    train, val = len(corpus.train), len(corpus.val)
    profile = {"chars": train + val, "vocab_size": corpus.vocab.size, "train_chars": train, "val_chars": val}
    dataset = Dataset(name=os.path.basename(corpus.path), digest=corpus.sha256[:10], source_type="local",
                      source=json.dumps({"uri": os.path.abspath(corpus.path)}), profile=json.dumps(profile))
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=DATASET_CONTEXT)])


def _params(d: Mapping[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in d.items()]


# ---- used by pipeline.report and pipeline.sample
# Read-only consumers of a finished (or running) sweep's runs: find the sweep's parent run, log the report to it,
# fetch a trial's checkpoint. Each raises TrackingError with the store's URI and what to pass instead.


def open_store(uri: str, timeout_s: float = 5.0):
    """An MlflowClient for an existing store: a server that answers, or a sqlite file that exists."""
    check_server(uri, timeout_s=timeout_s)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise TrackingError(f"no MLflow store at {uri[len('sqlite:///'):]}; pass --tracking-uri, or set "
                            "MLFLOW_TRACKING_URI to the store the sweep logged to")
    _quiet_mlflow()  # no progress bar on the sampled text's stderr
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_parent_run(uri: str, run_ids: list[str]) -> str | None:
    """The sweep's parent run: the `mlflow.parentRunId` tag of the first of its trials' runs in the store."""
    client = open_store(uri)
    for rid in run_ids:
        try:
            parent = client.get_run(str(rid)).data.tags.get("mlflow.parentRunId")
        except Exception:  # noqa: BLE001 - a deleted run, another store: try the next trial
            continue
        if parent:
            return parent
    return None


def log_files(uri: str, run_id: str, paths: list[str], artifact_dir: str) -> None:
    """Log local files under artifact_dir of a run (the report's files on the sweep's parent run)."""
    client = open_store(uri)
    for path in paths:
        client.log_artifact(run_id, path, artifact_dir)


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: str) -> str:
    """Download one artifact of a run into dst, from wherever the run's artifacts live; the local path."""
    client = open_store(uri, timeout_s=10.0)
    try:
        client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException: run not in this store
        raise TrackingError(f"MLflow run {run_id} is not in the store at {uri} ({type(e).__name__}); pass the "
                            "sweep's store with --tracking-uri or MLFLOW_TRACKING_URI") from None
    try:
        path = client.download_artifacts(run_id, artifact_path, dst)
    except Exception as e:  # noqa: BLE001 - missing artifact: MlflowException or OSError by store
        raise TrackingError(f"MLflow run {run_id} has no {artifact_path} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'not found'})") from None
    if not os.path.isfile(path):
        raise TrackingError(f"MLflow run {run_id} has no {artifact_path}")
    return path


# ---- the best model (used by pipeline.sweep and pipeline.sample)
# The best trial's checkpoint as an MLflow model (pipeline/mlflow_model.py, a python_function model logged as
# code): logged on the trial's own run at its last iteration, so the model carries the run's hyperparameters and
# final metrics, and registered under the sweep file's mlflow.register_model (a new version per sweep).

MODEL_NAME = "best_model"  # the logged model's name
MODEL_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlflow_model.py")
RNNCORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rnncore")


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """MLflow's model logging and loading use the global tracking URI: set it for the block, then put it back."""
    _quiet_mlflow()
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before)


def log_best_model(uri: str, trial: Mapping[str, Any], *, parent_run_id: str | None,
                   register_as: str | None = None) -> str:
    """Log `trial`'s checkpoint (a trials-table row with mlflow_run_id, trial_id, iterations) as an MLflow model
    on its run, register it as `register_as` when given, and tag the parent run with where it is. Returns the
    model's URI: ``models:/NAME/VERSION`` when registered, else ``models:/<model id>``."""
    import warnings

    import numpy as np

    run_id = str(trial["mlflow_run_id"])
    with _fluent_uri(uri) as mlflow:
        from mlflow.models import Model, infer_signature

        from .mlflow_model import CHECKPOINT, PARAMS

        signature = infer_signature(["ROMEO:"], ["ROMEO: and more text"], params=PARAMS)
        # created here, in the run's experiment: Model.log would put it in the active (else Default) experiment
        client = mlflow.MlflowClient(uri)
        run = client.get_run(run_id)
        model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                           params=run.data.params, tags={TRIAL_TAG: trial["trial_id"]},
                                           model_type="char-rnn")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no input example": the signature says what goes in and out
            info = Model.log(
                None, model_id=model.model_id, flavor=mlflow.pyfunc, run_id=run_id, step=int(trial["iterations"]),
                python_model=MODEL_CODE, code_paths=[RNNCORE_DIR], signature=signature,
                artifacts={CHECKPOINT: f"runs:/{run_id}/model/checkpoint.npz"},
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
                registered_model_name=register_as)
    model_uri = (f"models:/{register_as}/{info.registered_model_version}" if register_as
                 else f"models:/{info.model_id}")
    if parent_run_id:
        client.set_tag(parent_run_id, "best_model", model_uri)
    return model_uri


def download_model_checkpoint(uri: str, model_uri: str, dst: str) -> tuple[str, dict[str, str]]:
    """The checkpoint of a model logged by log_best_model (``models:/NAME/VERSION`` or ``models:/<model id>``),
    downloaded into dst, and what the model says about its origin (trial_id, run_id)."""
    open_store(uri, timeout_s=10.0)
    with _fluent_uri(uri) as mlflow:
        from mlflow.models import Model

        from .mlflow_model import CHECKPOINT

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst)
            meta = Model.load(local)
        except Exception as e:  # noqa: BLE001 - MlflowException: no such model or version in this store
            raise TrackingError(f"no MLflow model {model_uri} in the store at {uri} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else 'not found'}); pass the store with "
                                "--tracking-uri or MLFLOW_TRACKING_URI") from None
        artifacts = meta.flavors.get("python_function", {}).get("artifacts", {})
        if CHECKPOINT not in artifacts:
            raise TrackingError(f"MLflow model {model_uri} is not an rnnsweep model (no {CHECKPOINT} artifact)")
        origin = {"run_id": meta.run_id or ""}
        if meta.model_id:
            origin["trial_id"] = mlflow.MlflowClient(uri).get_logged_model(meta.model_id).tags.get(TRIAL_TAG, "")
    return os.path.join(local, artifacts[CHECKPOINT]["path"]), origin
