"""Parquet tables of a sweep: trials.parquet (one row per trial) and history.parquet (one row per report).

Explicit pyarrow schemas; every write goes to a temp file in the same folder and is renamed over the old
one, so a crash leaves the previous table or the new one, never a truncated file. The sweep file and the
package versions travel in the file metadata. The only module that writes Parquet.

The tables are rewritten when a trial ends; in between, every report and every new trial's starting values
are also appended to a small journal (`.history.jsonl` in the output folder, emptied by each write), so a
driver killed mid-sweep loses neither: `load_existing` (--resume) reads the tables and then the journal.

A table that does not read back (a disk fault, an edit) stops --resume with TableError, which names the file and
what moving it aside costs: trials.parquet's rows are rebuilt by the driver (pipeline.callback) from Tune's saved
state and history.parquet, history.parquet's rows from the metrics of the trials' MLflow runs
(pipeline.sweep).
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from rnncore.checkpoint import file_mode
from rnncore.config import FIELD_NAMES, FIELD_TYPES

if TYPE_CHECKING:
    from .lineage import LineageEvent

_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
TIMESTAMP = pa.timestamp("us", tz="UTC")

# every engine option in its own typed column, except `iterations`, which holds the iterations trained.
# A column that shares a name with an MLflow metric means the same thing: `val_loss` is the last report's, as
# MLflow shows a run's latest value; an aggregate over the reports says so in its name (`min_val_loss`,
# `mean_chars_per_sec`).
HPARAMS = [n for n in FIELD_NAMES if n != "iterations"]
TRIALS_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("status", pa.string()), ("mlflow_run_id", pa.string())]
    + [(n, _ARROW[FIELD_TYPES[n]]) for n in HPARAMS]
    + [("target_iterations", pa.int64()), ("iterations", pa.int64()), ("train_loss", pa.float64()),
       ("val_loss", pa.float64()), ("val_bpc", pa.float64()), ("min_val_loss", pa.float64()),
       ("mean_chars_per_sec", pa.float64()), ("wall_s", pa.float64()),
       ("started_at", TIMESTAMP), ("ended_at", TIMESTAMP), ("node", pa.string()), ("node_ip", pa.string()),
       ("sample", pa.string()), ("error", pa.string()), ("final_lr", pa.float64()), ("exploits", pa.int64())]
)
HISTORY_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("iteration", pa.int64()), ("train_loss", pa.float64()),
     ("val_loss", pa.float64()), ("val_bpc", pa.float64()), ("chars_per_sec", pa.float64()),
     ("elapsed_s", pa.float64()), ("lr", pa.float64()), ("exploited_from", pa.string())]
)
# PBT only: one row each time a trial went on from another trial's checkpoint with mutated hyperparameters
EXPLOITS_SCHEMA = pa.schema(
    [("trial_id", pa.string()), ("iteration", pa.int64()), ("source_trial_id", pa.string()),
     ("changes", pa.string())]
)


class TableError(Exception):
    """A table in the output folder cannot be read; the message names it and how to go on (exit code 2)."""


# what moving each table aside costs: --resume rebuilds it from what else the sweep keeps
REBUILT_FROM = {
    "trials.parquet": "its rows are rebuilt from Tune's saved state and history.parquet",
    "history.parquet": "its rows are rebuilt from the metrics of the trials' MLflow runs (elapsed_s is lost)",
    "exploits.parquet": "PBT's clone records are lost from the tables (the MLflow runs keep them as "
                        "pbt.exploit.* tags)",
}


def check_tables(output: Path) -> None:
    """Raise TableError naming the first table in ``output`` that does not read back whole."""
    for name in REBUILT_FROM:
        _read(Path(output) / name)


def _read(path: Path) -> list[dict[str, Any]]:
    """The rows of a table ([] when the file does not exist); TableError when it does not read back."""
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise TableError(f"{path} cannot be read ({type(e).__name__}: {first}); move it aside (or delete it) and "
                         f"run --resume again: {REBUILT_FROM[path.name]}") from None


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("rnnsweep", "numpy", "ray", "mlflow", "pandas", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class ResultsTable:
    """Rows kept in memory (small: one per trial and one per report) and flushed atomically."""

    def __init__(self, output: Path, *, sweep_text: str):
        self.output = Path(output)
        self.trials: dict[str, dict[str, Any]] = {}
        self.history: dict[tuple[str, int], dict[str, Any]] = {}
        self.exploits: list[dict[str, Any]] = []
        self.meta = {b"rnnsweep.sweep_yaml": sweep_text.encode(),
                     b"rnnsweep.versions": json.dumps(versions()).encode()}

    @property
    def trials_path(self) -> Path:
        return self.output / "trials.parquet"

    @property
    def history_path(self) -> Path:
        return self.output / "history.parquet"

    @property
    def exploits_path(self) -> Path:
        return self.output / "exploits.parquet"

    @property
    def journal_path(self) -> Path:
        return self.output / ".history.jsonl"

    def load_existing(self) -> None:
        """Pick up the rows of an interrupted sweep (for --resume), and drop the temp file of a write that a
        kill cut short (the table it was to replace is intact). TableError if a table does not read back."""
        for path in (self.trials_path, self.history_path, self.exploits_path):
            for tmp in self.output.glob(f".{path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        for row in _read(self.trials_path):
            self.trials[row["trial_id"]] = row
        for row in _read(self.history_path):
            self.history[(row["trial_id"], row["iteration"])] = row
        self.exploits = _read(self.exploits_path)
        if self.journal_path.exists():  # reports (and PBT branches) that arrived after the last write, in order
            names = set(HISTORY_SCHEMA.names)
            for line in self.journal_path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    if isinstance(row.get("start"), dict):  # a trial's starting values (start_trial)
                        tid = str(row["trial_id"])
                        self.trials.setdefault(tid, {"trial_id": tid, **row["start"]})
                        continue
                    key = (str(row["trial_id"]), int(row["iteration"]))
                except (ValueError, KeyError, TypeError, AttributeError):  # a line cut short by the kill
                    continue
                if isinstance(row.get("branch"), int):  # the first report of a PBT branch
                    self._branch(key[0], row["branch"])
                if isinstance(row.get("exploit"), dict):
                    self._add_exploit(row["exploit"])
                self.history.setdefault(key, {k: v for k, v in row.items() if k in names})

    def add_report(self, trial_id: str, row: Mapping[str, Any], *, lineage: LineageEvent | None = None) -> bool:
        """One history row, also appended to the journal. A report already recorded for this trial and
        iteration (repeated after a restart or a resume) is ignored: returns False.

        PBT (``lineage``, see pipeline.lineage): a branch that starts at iteration c drops the trial's rows after
        c and its clones from c on first; an exploit is a row of exploits.parquet. Report, branch and exploit
        share one journal line, so a kill keeps all or none."""
        journal: dict[str, Any] = {}
        if lineage is not None and lineage.branch is not None:
            self._branch(trial_id, lineage.branch.start)
            journal["branch"] = lineage.branch.start
        if lineage is not None and lineage.exploit is not None:
            exploit = lineage.exploit.row()
            self._add_exploit(exploit)
            journal["exploit"] = exploit
        key = (trial_id, int(row["iteration"]))
        if key in self.history:
            return False
        self.history[key] = {"trial_id": trial_id, **row}
        self._journal({**self.history[key], **journal})
        return True

    def _branch(self, trial_id: str, start: int) -> None:
        for key in [k for k in self.history if k[0] == trial_id and k[1] > start]:
            del self.history[key]
        self.exploits = [e for e in self.exploits if e["trial_id"] != trial_id or e["iteration"] < start]

    def _add_exploit(self, row: Mapping[str, Any]) -> None:
        if row not in self.exploits:  # a report repeated after a restart
            self.exploits.append(dict(row))

    def start_trial(self, trial_id: str, row: Mapping[str, Any]) -> None:
        """A new trial's row with the values it starts with (PBT may change them later), also appended to the
        journal: a resumed driver sees the trial's config as PBT left it, so only this row knows them."""
        self.set_trial(trial_id, row)
        self._journal({"trial_id": trial_id, "start": dict(row)})

    def _journal(self, line: Mapping[str, Any]) -> None:
        """Append one line to the journal (timestamps as ISO 8601 text)."""
        self.output.mkdir(parents=True, exist_ok=True)
        with open(self.journal_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=_iso) + "\n")

    def set_trial(self, trial_id: str, row: Mapping[str, Any]) -> None:
        self.trials[trial_id] = {**self.trials.get(trial_id, {}), "trial_id": trial_id, **row}

    def exploits_of(self, trial_id: str) -> list[dict[str, Any]]:
        """The PBT clones into this trial, in the order they were recorded."""
        return [e for e in self.exploits if e["trial_id"] == trial_id]

    def history_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [self.history[k] for k in sorted(k for k in self.history if k[0] == trial_id)]

    def write(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        trials = [self.trials[k] for k in sorted(self.trials)]
        history = [self.history[k] for k in sorted(self.history)]
        _write_atomic(_table(trials, TRIALS_SCHEMA, self.meta), self.trials_path)
        _write_atomic(_table(history, HISTORY_SCHEMA, self.meta), self.history_path)
        if self.exploits:
            _write_atomic(_table(self.exploits, EXPLOITS_SCHEMA, self.meta), self.exploits_path)
        try:  # everything in the journal is in history.parquet now
            self.journal_path.unlink()
        except FileNotFoundError:
            pass


def utc_now() -> datetime:
    """A timestamp for the `started_at` and `ended_at` columns."""
    return datetime.now(timezone.utc)


def _iso(x: Any) -> str:
    """json.dumps' fallback for the journal: a timestamp as ISO 8601 text (read back by _timestamp)."""
    if isinstance(x, datetime):
        return x.isoformat()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _timestamp(x: Any) -> datetime | None:
    """A timestamp column's value: a datetime as is, ISO text (from the journal) parsed; else None."""
    if isinstance(x, str):
        try:
            x = datetime.fromisoformat(x)
        except ValueError:
            return None
    return x if isinstance(x, datetime) else None


def _table(rows: list[Mapping[str, Any]], schema: pa.Schema, meta: dict[bytes, bytes]) -> pa.Table:
    cols = {f.name: [_timestamp(r.get(f.name)) if f.type == TIMESTAMP else r.get(f.name) for r in rows]
            for f in schema}
    return pa.table(cols, schema=schema).replace_schema_metadata(meta)


def _write_atomic(table: pa.Table, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would keep a teammate out
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
