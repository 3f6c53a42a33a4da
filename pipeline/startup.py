"""The driver's speed tricks, behind one seam: work that overlaps the waits of a sweep's start and end.

A sweep's start is CPU-bound on a small machine, and most of it is waiting: ``ray.init`` waits for Ray's
processes, ``ray.shutdown`` waits for them to exit. What the driver needs besides Ray is done in those waits:

- ``Startup``: one thread imports Tune and the pipeline, then MLflow, and prepares a new local store's
  tables from a cached template (``tracking.StoreWarmup``: ~3 s of migrations the first time, a file copy
  after), while ``ray.init`` waits on the other core.
- ``warm_up_report``: the report's plotting library loads while the first trials start.
- ``report_while``: the report is drawn while Ray shuts down.
- ``freeze_at_exit``: Python's final garbage collection would walk every object of Ray, MLflow, pandas and
  matplotlib (~2 s after the work is done); frozen objects are skipped, and the OS frees the memory anyway.

``bench/sweep.py`` measures what a sweep costs over plain rnncore runs with all of them in place.
"""
from __future__ import annotations

import atexit
import gc
import importlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .tracking import StoreWarmup

__all__ = ["Startup", "freeze_at_exit", "report_while", "warm_up_report"]


class Startup:
    """The driver's start-up work that needs no Ray, in one thread while ``ray.init`` waits for Ray's processes:
    Tune's and the pipeline's imports, then MLflow's import and a new store's tables (``StoreWarmup``).

    ``ready()`` waits for it; ``install_store()`` puts the prepared store in place once the sweep's checks have
    passed; ``discard()`` (also on leaving a ``with`` block) removes anything prepared and not installed."""

    def __init__(self, tracking_uri: str) -> None:
        self._warmup = StoreWarmup(tracking_uri)
        self._thread = threading.Thread(target=self._run, name="rnnsweep-startup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for name in ("ray.tune", f"{__package__}.callback", f"{__package__}.results", f"{__package__}.trainable"):
            try:  # imported here to be ready later; the driver imports them again, where any error shows
                importlib.import_module(name)
            except Exception:  # noqa: BLE001
                break
        self._warmup.prepare()

    def ready(self) -> None:
        self._thread.join()

    def install_store(self) -> None:
        self._warmup.install()

    def discard(self) -> None:
        """Skip the store if not begun, wait, remove what was prepared and not installed."""
        self._warmup.discard()
        self._thread.join()
        self._warmup.discard()

    def __enter__(self) -> "Startup":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def warm_up_report() -> None:
    """Load the report's plotting library in a background thread (the driver mostly waits while trials start)."""

    def run() -> None:
        try:
            from .report import warm_up

            warm_up()
        except Exception:  # noqa: BLE001 - only a head start; the report itself shows any error
            pass

    threading.Thread(target=run, name="rnnsweep-report-warmup", daemon=True).start()


def report_while(shutdown: Callable[[], None], output: Path, *, tracking_uri: str) -> Path:
    """Write the sweep's report while ``shutdown`` (Ray's) runs; returns the report's folder."""
    from .report import write_report

    with ThreadPoolExecutor(1, thread_name_prefix="report") as pool:
        report = pool.submit(write_report, output, tracking_uri=tracking_uri)
        shutdown()
        return report.result()


def freeze_at_exit() -> None:
    atexit.register(gc.freeze)
