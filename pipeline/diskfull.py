"""A full disk, wherever a sweep writes (its output folder, a local MLflow store): the errors that mean it, and
the one message the driver prints when it stops the sweep for it.

The sweep then stops as on Ctrl-C: a trial whose checkpoint cannot be written reports so and waits to be stopped
(pipeline.trainable) instead of failing and being retried; the driver's callback stops Tune at the first table,
journal or report that cannot be written (pipeline.callback); the driver prints ``message`` and exits 130. After
space is freed, ``--resume`` finishes the sweep from each trial's newest complete checkpoint. Imports neither Ray
nor MLflow.
"""
from __future__ import annotations

import errno
import os

__all__ = ["DISK_FULL", "describe", "disk_full", "message"]

# ENOSPC: no space left; EDQUOT: a disk quota used up; EFBIG: past the file-size limit (ulimit -f)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SQLITE_FULL = "database or disk is full"  # sqlite's SQLITE_FULL, which carries no errno


def disk_full(error: BaseException | None) -> BaseException | None:
    """The error in ``error``'s chain (itself, its __cause__ or __context__) that says the disk is full, else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error
        if SQLITE_FULL in str(error)[:2000]:
            return error
        error = error.__cause__ or error.__context__
    return None


def describe(error: BaseException, where: str | None = None) -> str:
    """What could not be written, in a few words: "no space left on device writing /out/trials.parquet" (the
    error's file, else ``where``)."""
    code = getattr(error, "errno", None)
    what = os.strerror(code) if code in DISK_FULL else SQLITE_FULL
    where = getattr(error, "filename", None) or where
    return f"{what[:1].lower()}{what[1:]}" + (f" writing {where}" if where else "")


def message(what: str, *, resume_command: str) -> str:
    """The driver's one line when a full disk stopped the sweep (``what`` from ``describe``)."""
    return (f"error: {what}; the trials were stopped and kept as on Ctrl-C; free space, then finish with  "
            f"{resume_command}")
