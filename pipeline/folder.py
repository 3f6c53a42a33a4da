"""A sweep's output folder: one driver at a time, and --resume only for the sweep that started there.

- ``lock``: an exclusive kernel lock on ``<output>/.lock`` (holding the driver's PID) while a driver runs; a second
  driver exits instead of mixing its runs and rows into the first one's. It ends with its process, so a killed
  driver never leaves a stale lock. ``refuse_if_in_use`` checks it without writing anything.
- ``check``: the folder against --resume, and a resumed sweep against what it started with.
- ``record_identity``: what a sweep starts with (its sweep file and corpus) in ``<output>/sweep.json``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Iterator

from .config import SweepConfig
from .sweepfile import parse_yaml

__all__ = ["FolderError", "IDENTITY_FILE", "LOCK_FILE", "check", "holds_sweep", "identity", "identity_changes",
           "lock", "record_identity", "refuse_if_in_use"]

LOCK_FILE = ".lock"  # held by the running driver (see lock)
IDENTITY_FILE = "sweep.json"  # the sweep file and corpus a sweep started with


class FolderError(Exception):
    """The output folder cannot take this run (in use, no sweep to resume, a changed sweep); exit code 2."""


def refuse_if_in_use(cfg: SweepConfig) -> None:
    """Exit early, touching nothing, when a running driver holds the output folder's lock."""
    path = cfg.output.resolve() / LOCK_FILE
    if path.exists():
        with open(path) as f:
            _take(f, cfg)  # released again when the file closes


def _take(f, cfg: SweepConfig) -> None:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        raise FolderError(f"output folder {cfg.output} is in use by another sweep driver (PID {holder}); "
                          "wait for it to end (or stop it), or set `output:` to a new folder") from None


@contextlib.contextmanager
def lock(cfg: SweepConfig) -> Iterator[None]:
    """An exclusive lock on the output folder (``.lock``, holding the driver's PID) while this driver runs: a
    second driver on the same folder exits instead of mixing its runs and rows into this one's. The lock is the
    kernel's (flock): it ends with the process, so a killed driver never leaves a stale one. A sweep refused
    (bad input, an unusable tracking server) leaves the folder as it found it."""
    output = cfg.output.resolve()
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_FILE
    new_lock = not path.exists()
    try:
        with open(path, "a+") as f:
            try:
                _take(f, cfg)
            except FolderError:
                new_lock = False
                raise
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            try:
                yield
            except Exception:  # refused or failed: a lock file this driver made goes (an empty new folder too)
                if new_lock:
                    path.unlink()
                raise
    finally:
        if created and output.exists() and not any(output.iterdir()):
            output.rmdir()


def check(cfg: SweepConfig, *, resume: bool) -> str:
    """Check the output folder against --resume, and a resumed sweep against what it started with (the sweep
    file and the corpus, recorded in IDENTITY_FILE) and its tables (they must read back). Writes nothing.
    Returns the folder of Tune's own state."""
    output = cfg.output.resolve()
    has_run = holds_sweep(cfg)
    if has_run and not resume:
        raise FolderError(f"output folder {cfg.output} already holds a sweep; add --resume to finish it, "
                          "or set `output:` to a new folder")
    if resume and not has_run:
        raise FolderError(f"--resume: {cfg.output} holds no sweep to resume; run without --resume to start one")
    recorded = output / IDENTITY_FILE
    if resume and recorded.exists():
        changed = identity_changes(json.loads(recorded.read_text(encoding="utf-8")), identity(cfg))
        if changed:
            raise FolderError(f"--resume: {'; '.join(changed)} since the sweep in {cfg.output} started, so its trials "
                              f"would not continue what they began; restore the sweep file as it was (the text it "
                              f"started with is in {recorded}) and the corpus, or set `output:` to a new folder to "
                              "start a new sweep")
    if resume:
        from .results import TableError, check_tables

        try:
            check_tables(output)
        except TableError as e:
            raise FolderError(f"--resume: {e}") from None
    return (cfg.storage.rstrip("/") + "/" + cfg.name) if cfg.storage else str(output / "tune")


def holds_sweep(cfg: SweepConfig) -> bool:
    """Whether the output folder holds a sweep that started (a table, or Tune's state kept there): one --resume
    finishes and a plain run refuses."""
    output = cfg.output.resolve()
    return any((output / t).exists() for t in ("trials.parquet", "history.parquet")) or \
        (not cfg.storage and (output / "tune").exists())


def record_identity(cfg: SweepConfig) -> None:
    """Record what the sweep starts with (once: a resumed sweep keeps the first record)."""
    path = cfg.output.resolve() / IDENTITY_FILE
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(identity(cfg), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def identity(cfg: SweepConfig) -> dict[str, Any]:
    """What a sweep's trials depend on: its sweep file (as parsed: comments and layout aside) and its corpus."""
    corpus = cfg.corpus()
    return {"sweep_text": cfg.source_text, "sweep": parse_yaml(cfg.source_text, cfg.source_path),
            "corpus": {"path": str(cfg.data.path), "sha256": corpus.sha256,
                       "characters": int(len(corpus.train) + len(corpus.val))}}


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words: the sweep file's changed keys, the corpus's size and digest."""
    changes = []
    keys = _changed_keys(old.get("sweep"), new["sweep"])
    if keys:
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        changes.append(f"the sweep file changed ({shown})")
    was, now = old.get("corpus", {}), new["corpus"]
    if was.get("sha256") not in (None, now["sha256"]):
        changes.append(f"the corpus changed ({was.get('characters')} characters, sha256 {was['sha256'][:12]}… then; "
                       f"{now['characters']} characters, sha256 {now['sha256'][:12]}… now)")
    return changes


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two parsed YAML documents (added and removed ones too)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*old, *(k for k in new if k not in old)]:
            where = f"{prefix}{key}"
            if key not in new:
                out.append(f"{where} removed")
            elif key not in old:
                out.append(f"{where} added")
            else:
                out += _changed_keys(old[key], new[key], f"{where}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
