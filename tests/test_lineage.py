"""PBT's lineage as one object: what each report of a trial means, read against what the tables recorded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.lineage import STALE, Lineage, clone_fields, run_fields
from pipeline.results import ResultsTable


def report(it: int, token: str, start: int, **extra: Any) -> dict[str, Any]:
    return {"iteration": it, **run_fields(start=start, token=token), **extra}


def row(it: int) -> dict[str, Any]:
    return {"iteration": it, "train_loss": 3.0, "val_loss": 3.0, "val_bpc": 4.3, "chars_per_sec": 1e4,
            "elapsed_s": 1.0, "lr": 0.01, "exploited_from": None}


def test_a_run_branches_once_its_late_reports_are_stale_and_a_clone_is_numbered(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path, sweep_text="")
    lineage = Lineage(table, enabled=True)
    first = lineage.observe("t0001", report(100, "a", 0))
    assert first.branch is not None and (first.branch.start, first.branch.relog_after) == (0, -1)
    for it in (100, 200, 300):
        table.add_report("t0001", row(it), lineage=lineage.observe("t0001", report(it, "a", 0)) if it > 100 else first)
    assert lineage.observe("t0001", report(300, "a", 0)).branch is None  # the same run goes on

    clone = clone_fields(source=3, iteration=200, old={"learning_rate": 0.05, "seed": 1},
                         new={"learning_rate": 0.06, "seed": 2})
    event = lineage.observe("t0001", report(300, "b", 200, **clone))
    assert (event.branch.start, event.branch.relog_after, event.branch.dropped_exploits) == (200, 200, 0)
    assert event.exploit.row() == {"trial_id": "t0001", "iteration": 200, "source_trial_id": "t0003",
                                   "changes": "learning_rate 0.05 -> 0.06"}
    assert event.exploit.number == 1 and event.exploit.text() == "iteration 200: cloned t0003; learning_rate 0.05 -> 0.06"
    table.add_report("t0001", {**row(300), "lr": 0.06}, lineage=event)
    # the gone branch's 300 was dropped, the clone's 300 recorded in its place
    assert [(r["iteration"], r["lr"]) for r in table.history_of("t0001")] == [(100, 0.01), (200, 0.01), (300, 0.06)]
    assert table.exploits_of("t0001") == [event.exploit.row()]

    assert lineage.observe("t0001", report(400, "a", 0)) is STALE  # the replaced run, late

    # a restart from iteration 100, before the clone: the clone's branch is gone with its tag
    restart = lineage.observe("t0001", report(200, "c", 100))
    assert (restart.branch.kept_exploits, restart.branch.dropped_exploits, restart.branch.relog_after) == (0, 1, 100)
    table.add_report("t0001", row(200), lineage=restart)
    assert table.exploits_of("t0001") == [] and [r["iteration"] for r in table.history_of("t0001")] == [100, 200]


def test_a_restart_repeating_a_recorded_clone_records_it_once(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path, sweep_text="")
    lineage = Lineage(table, enabled=True)
    clone = clone_fields(source=0, iteration=100, old={"dropout": 0.1}, new={"dropout": 0.1})
    event = lineage.observe("t0002", report(200, "a", 100, **clone))
    assert event.exploit.changes == "" and event.exploit.text().endswith("no change")
    table.add_report("t0002", row(200), lineage=event)
    assert lineage.observe("t0002", report(200, "a", 100, **clone)).exploit is None  # the same run's report again
    # a new driver restarts the clone's run from the same checkpoint: its branch replaces the clone, which comes back
    again = Lineage(table, enabled=True).observe("t0002", report(200, "b", 100, **clone))
    assert (again.branch.start, again.branch.dropped_exploits, again.exploit.number) == (100, 1, 1)
    table.add_report("t0002", row(200), lineage=again)
    assert table.exploits_of("t0002") == [event.exploit.row()]


def test_without_pbt_reports_carry_no_lineage(tmp_path: Path) -> None:
    lineage = Lineage(ResultsTable(tmp_path, sweep_text=""), enabled=False)
    event = lineage.observe("t0000", report(100, "a", 0))
    assert event.branch is None and event.exploit is None and not event.stale
