"""PBT's lineage of a trial, as one typed object: which run of the trial is current, where it branched off its
own past, and which trial it was cloned from. The driver's callback asks ``Lineage`` what a report means;
MLflow (``Tracker.record_lineage``: tags and steps to log again) and the tables (``ResultsTable.add_report``: rows
of a gone branch dropped, exploits.parquet) act on the answer.

Under PBT a trial is a chain of runs. A run starts at iteration c from a checkpoint: its own (a restart
after a failure, or ``--resume``) or another trial's (PBT's exploit step, a *clone*). Whatever the trial did
after c on an earlier run belongs to a branch that is gone. Each report of a run carries:

- ``run_token``: which run (a restart from the same iteration is another run);
- ``start_iteration``: c, where that run took over;
- ``exploit`` (the first report after a clone only): the source trial's position, the iteration and the
  options PBT changed, e.g. ``{"source": 3, "iteration": 500, "changes": {"learning_rate": [0.05, 0.06]}}``.

``run_fields`` and ``clone_fields`` write those fields (in the trainable), ``Lineage.observe`` reads them.
Imports neither Ray nor MLflow.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .vocab import trial_key

__all__ = ["Branch", "Exploit", "Lineage", "LineageEvent", "STALE", "clone_fields", "run_fields"]


def run_fields(*, start: int, token: str) -> dict[str, Any]:
    """The fields every report of one run of a trial carries."""
    return {"start_iteration": start, "run_token": token}


def clone_fields(*, source: int, iteration: int, old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The ``exploit`` field of the first report after PBT cloned trial ``source`` at ``iteration`` into this one:
    the options whose value changed from ``old`` (the source's) to ``new`` (this trial's now), seed aside."""
    changes = {k: [old[k], new[k]] for k in new if k != "seed" and old[k] != new[k]}
    return {"exploit": {"source": int(source), "iteration": int(iteration), "changes": changes}}


@dataclass(frozen=True)
class Exploit:
    """PBT cloned trial ``source_trial_id`` at ``iteration`` into trial ``trial_id``; ``number`` counts the clones
    into that trial (from 1) on its current branch."""

    trial_id: str
    iteration: int
    source_trial_id: str
    changes: str  # "learning_rate 0.05 -> 0.06, dropout 0.2 -> 0.24", "" when nothing changed
    number: int

    def row(self) -> dict[str, Any]:
        """Its row of exploits.parquet."""
        return {"trial_id": self.trial_id, "iteration": self.iteration, "source_trial_id": self.source_trial_id,
                "changes": self.changes}

    def text(self) -> str:
        return f"iteration {self.iteration}: cloned {self.source_trial_id}; {self.changes or 'no change'}"


@dataclass(frozen=True)
class Branch:
    """A new run of trial ``trial_id`` that starts at iteration ``start``: its history after ``start``, and the
    clones into it from ``start`` on, belonged to a branch that is gone."""

    trial_id: str
    start: int
    kept_exploits: int  # clones into the trial before `start`, which stay
    dropped_exploits: int  # clones at or after `start`, which go
    relog_after: int  # the last step kept: MLflow logs every later step again (-1: all of them)


@dataclass(frozen=True)
class LineageEvent:
    """What one report changes in the lineage (both None for an ordinary report)."""

    branch: Branch | None = None
    exploit: Exploit | None = None
    stale: bool = False  # a report of a run that a newer run of the same trial replaced: dropped


STALE = LineageEvent(stale=True)
NOTHING = LineageEvent()


class _Recorded(Protocol):
    """What the tables know: the clones recorded into a trial, and its history rows."""

    def exploits_of(self, trial_id: str) -> list[dict[str, Any]]: ...

    def history_of(self, trial_id: str) -> list[dict[str, Any]]: ...


class Lineage:
    """Reads the lineage fields of each report of a PBT sweep against what the tables recorded so far."""

    def __init__(self, recorded: _Recorded, *, enabled: bool) -> None:
        self.recorded, self.enabled = recorded, enabled
        self.runs_seen: dict[str, list[str]] = {}  # trial key -> the run tokens of its runs, newest last

    def observe(self, key: str, result: Mapping[str, Any]) -> LineageEvent:
        """The event a report of trial ``key`` brings; ``STALE`` for a late report of a run that was replaced (a run
        stopped for a clone may still deliver reports after its clone started)."""
        if not self.enabled or "run_token" not in result:
            return NOTHING
        branch = self._branch(key, str(result["run_token"]), int(result["start_iteration"]))
        if branch is STALE:
            return STALE
        exploit = self._exploit(key, result["exploit"], branch) if result.get("exploit") else None
        return LineageEvent(branch=branch, exploit=exploit) if branch or exploit else NOTHING

    def _branch(self, key: str, token: str, start: int) -> Branch | LineageEvent | None:
        seen = self.runs_seen.setdefault(key, [])
        if seen and seen[-1] == token:
            return None
        if token in seen:
            return STALE
        seen.append(token)
        mine = self.recorded.exploits_of(key)
        kept = sum(1 for e in mine if e["iteration"] < start)
        # MLflow logs again what comes after the history's last row that this run keeps: the run's first report
        # (at c, when it went on from its own newest checkpoint) is new to the history if the driver never got
        # it, and MLflow may then hold c only from a branch that is gone, so c itself must be logged too
        rows = [r["iteration"] for r in self.recorded.history_of(key) if r["iteration"] <= start]
        return Branch(trial_id=key, start=start, kept_exploits=kept, dropped_exploits=len(mine) - kept,
                      relog_after=max(rows, default=-1))

    def _exploit(self, key: str, clone: Mapping[str, Any], branch: Branch | None) -> Exploit | None:
        """The clone this report announces, or None when a restart repeats one already recorded."""
        changes = ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in clone.get("changes", {}).items())
        row = {"trial_id": key, "iteration": int(clone["iteration"]), "source_trial_id": trial_key(int(clone["source"])),
               "changes": changes}
        mine = [e for e in self.recorded.exploits_of(key) if branch is None or e["iteration"] < branch.start]
        if row in mine:
            return None
        return Exploit(**row, number=len(mine) + 1)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
