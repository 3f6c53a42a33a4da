"""Smarter search: Optuna's TPE (`search_alg: optuna`) and Population Based Training (`scheduler: pbt`).

- The sweep file: both load (the string form `search_alg: optuna` too) and build the Tune objects they name;
  bad combinations exit 2 naming the key, creating nothing; --dry-run shows the search, the PBT scheduler
  and the concurrency note.
- Optuna end to end: one row, one MLflow child per trial, keyed t0000.. although Optuna's trial ids are
  random; the learning rates are the ones Optuna's seeded TPE proposes, in generation order.
- PBT end to end: trials clone each other's checkpoints; every exploit is in exploits.parquet, in the history
  (`exploited_from`, and `lr` changing there by a PBT factor), in trials.parquet (`final_lr`, `exploits`),
  in MLflow (tags `pbt.exploit.NNN`, `pbt.exploits`, metric `lr`) and in the logged final checkpoint.
- --resume after the driver was killed (Optuna: SIGKILL; PBT: Ctrl-C after an exploit): the sweep ends with
  one row and one MLflow child per trial, none RUNNING, and its report.

Every Ray run has a clean environment and a private RAY_TMPDIR (conftest.py); helpers come from helpers.py
(sweep files, tables), test_sweep.py (running a sweep, MLflow) and test_faults.py (background driver, killing a
run's leftovers by PID).
"""
from __future__ import annotations

import copy
import os
import re
import signal
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import edit, read_history, read_trials, write_sweep
from test_faults import Driver, kill_run_processes
from test_sweep import CORPUS_CHARS, PARENT_TAG, Mlflow, SweepRun, run_sweep

LR_RANGE = (0.001, 0.5)
PBT_FACTORS = (1.2, 0.8)  # Ray's default perturbation_factors

# Optuna: 5 trials, 2 at a time, ASHA. The searcher's seed (11) differs from the sweep's (0): the first
# proposes the values, the second derives the trials' training seeds.
OPTUNA: dict[str, Any] = {
    "name": "optuna",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {
        "hidden_size": {"choice": [8, 16]},
        "learning_rate": {"loguniform": [0.005, 0.5]},
        "seq_length": 16,
        "batch_size": 4,
        "dtype": "float32",
        "iterations": 200,
        "eval_every": 100,
        "sample_every": 0,
        "sample_length": 20,
    },
    "num_samples": 5,
    "seed": 0,
    "search_alg": {"type": "optuna", "seed": 11},
    "scheduler": {"type": "asha", "grace_period": 100, "reduction_factor": 2},
    "max_concurrent_trials": 2,
    "output": "out",
}

# PBT: a population of 4 trains together (4 at once on half a CPU each); learning rates spread over 2.7
# decades, so the bottom half is clearly worse at the first perturbation and clones the top half. With
# resample_probability 0 every new learning rate is the source's times 1.2 or 0.8, exactly.
PBT: dict[str, Any] = {
    "name": "pbt",
    "data": {"path": "corpus.txt", "val_fraction": 0.1},
    "train": {
        "hidden_size": 16,
        "learning_rate": {"loguniform": list(LR_RANGE)},
        "seq_length": 16,
        "batch_size": 4,
        "dtype": "float32",
        "iterations": 400,
        "eval_every": 50,
        "sample_every": 200,
        "sample_length": 20,
    },
    "num_samples": 4,
    "seed": 0,
    "scheduler": {"type": "pbt", "perturbation_interval": 100,
                  "mutations": {"learning_rate": {"loguniform": list(LR_RANGE)}},
                  "quantile_fraction": 0.5, "resample_probability": 0.0, "burn_in_period": 0},
    "max_concurrent_trials": 4,
    "resources": {"cpu": 0.5},
    "output": "out",
}

EXPLOITS_TYPES = {"trial_id": pa.string(), "iteration": pa.int64(), "source_trial_id": pa.string(),
                  "changes": pa.string()}


# ---------------------------------------------------------------------------------------------- helpers


def _change(sweep: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `sweep` with keys like scheduler__perturbation_interval set (None removes the key)."""
    return edit(**changes)(copy.deepcopy(sweep))


def _ids(n: int) -> list[str]:
    return [f"t{i:04d}" for i in range(n)]


def _changes_text(changes: str) -> dict[str, tuple[float, float]]:
    """'learning_rate 0.08 -> 0.097' -> {'learning_rate': (0.08, 0.097)}."""
    out = {}
    for part in filter(None, (p.strip() for p in changes.split(","))):
        m = re.fullmatch(r"(\w+) (\S+) -> (\S+)", part)
        assert m, f"unreadable change {part!r} in {changes!r}"
        out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def assert_pbt_consistent(out: Path, num_trials: int, iterations: int, eval_every: int,
                          resample_probability: float) -> pd.DataFrame:
    """The tables of a finished PBT sweep agree with each other; returns the exploits (at least one)."""
    t, h = read_trials(out), read_history(out)
    assert (out / "exploits.parquet").exists(), "no trial was exploited: the test proves nothing"
    schema = pq.read_schema(out / "exploits.parquet")
    assert {n: schema.field(n).type for n in schema.names} == EXPLOITS_TYPES
    hschema = pq.read_schema(out / "history.parquet")
    assert hschema.field("lr").type == pa.float64() and hschema.field("exploited_from").type == pa.string()
    tschema = pq.read_schema(out / "trials.parquet")
    assert tschema.field("final_lr").type == pa.float64() and tschema.field("exploits").type == pa.int64()
    ex = pd.read_parquet(out / "exploits.parquet")  # in the order they were recorded
    assert len(ex) >= 1
    assert not ex.duplicated().any(), ex

    assert list(t["trial_id"]) == _ids(num_trials)
    assert (t["status"] == "finished").all(), t[["trial_id", "status"]]
    assert (t["iterations"] == iterations).all()
    # one row per report, every eval_every iterations, after the branches were replaced; a trial skips
    # iterations only where it cloned a trial that was ahead of it (the source trained those)
    for tid in t["trial_id"]:
        its = list(h.loc[h["trial_id"] == tid, "iteration"])
        assert its[0] == eval_every and its[-1] == iterations and all(i % eval_every == 0 for i in its), (tid, its)
        for before, after in zip(its, its[1:]):
            if after != before + eval_every:
                assert after > before and ((ex["trial_id"] == tid) & (ex["iteration"] == after - eval_every)).any(), \
                    (tid, before, after, ex)
    assert h["lr"].notna().all()
    assert ex["trial_id"].isin(t["trial_id"]).all() and ex["source_trial_id"].isin(t["trial_id"]).all()
    assert (ex["trial_id"] != ex["source_trial_id"]).all()
    assert (ex["iteration"] % eval_every == 0).all() and ex["iteration"].between(eval_every, iterations - 1).all()

    lr = {(r.trial_id, r.iteration): r.lr for r in h.itertuples()}
    first_after = {}
    for k, row in enumerate(ex.itertuples()):
        rows = h[(h["trial_id"] == row.trial_id) & (h["iteration"] > row.iteration)]
        assert len(rows), row
        nxt = rows.iloc[0]
        later = ex.iloc[k + 1:]
        if ((later["trial_id"] == row.trial_id) & (later["iteration"] < nxt["iteration"])).any():
            continue  # cloned again before this branch's first report survived: that branch is gone
        first_after[(row.trial_id, int(nxt["iteration"]))] = row.source_trial_id
        assert nxt["exploited_from"] == row.source_trial_id, (row, nxt)
        source_lr = lr[(row.source_trial_id, row.iteration)]  # the lr of the checkpoint that was cloned
        new_lr = nxt["lr"]
        changed = _changes_text(row.changes)
        assert set(changed) == {"learning_rate"}, row.changes
        old_txt, new_txt = changed["learning_rate"]
        assert old_txt == pytest.approx(source_lr, rel=1e-3) and new_txt == pytest.approx(new_lr, rel=1e-3), row
        perturbed = any(new_lr == pytest.approx(source_lr * f, rel=1e-9) for f in PBT_FACTORS)
        if resample_probability == 0:
            assert perturbed, (row, source_lr, new_lr)
        else:
            assert perturbed or LR_RANGE[0] <= new_lr <= LR_RANGE[1], (row, source_lr, new_lr)
    # exploited_from marks exactly the first report after each exploit; lr changes nowhere else
    marked = {(r.trial_id, r.iteration): r.exploited_from for r in h.itertuples() if isinstance(r.exploited_from, str)}
    assert marked == first_after
    for tid, rows in h.groupby("trial_id"):
        for (it0, lr0), (it1, lr1) in zip(zip(rows["iteration"], rows["lr"]), list(zip(rows["iteration"], rows["lr"]))[1:]):
            if (tid, it1) not in first_after:
                assert lr1 == lr0, (tid, it0, it1, lr0, lr1)
    # trials.parquet: the starting value, the final one, the count
    tt = t.set_index("trial_id")
    for tid, rows in h.groupby("trial_id"):
        assert tt.loc[tid, "final_lr"] == rows["lr"].iloc[-1], tid
        if (tid, eval_every) not in first_after:
            assert tt.loc[tid, "learning_rate"] == rows["lr"].iloc[0], tid
        assert tt.loc[tid, "exploits"] == (ex["trial_id"] == tid).sum(), tid
        # the row's final numbers are the trial's own last report (not those of a trial it was cloned from)
        last = rows.iloc[-1]
        own = (tt.loc[tid, "iterations"], tt.loc[tid, "train_loss"], tt.loc[tid, "val_loss"])
        assert own == (last["iteration"], last["train_loss"], last["val_loss"]), \
            f"{tid}: trials.parquet has iterations/train_loss/val_loss {own}, its last report " \
            f"{(last['iteration'], last['train_loss'], last['val_loss'])}\n{h[h['iteration'] == last['iteration']]}"
    return ex


def assert_mlflow_pbt(run: Mlflow, out: Path, tmp_path: Path) -> None:
    """Tags, metric `lr` and the final checkpoint of every child run agree with the tables."""
    from rnncore import checkpoint

    t = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    h = pd.read_parquet(out / "history.parquet")
    ex = pd.read_parquet(out / "exploits.parquet").sort_values(["trial_id", "iteration"], ignore_index=True)
    assert sorted(run.children) == sorted(t.index)
    assert len(run.parents) == 1 and run.parents[0].info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in run.runs), [r.info.status for r in run.runs]
    for tid, child in run.children.items():
        assert child.info.run_id == t.loc[tid, "mlflow_run_id"]
        assert child.data.tags[PARENT_TAG] == run.parents[0].info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["rnnsweep.status"] == "finished"
        assert float(child.data.params["learning_rate"]) == t.loc[tid, "learning_rate"]  # the starting value
        mine = ex[ex["trial_id"] == tid]
        tags = child.data.tags
        if len(mine):
            assert tags["pbt.exploits"] == str(len(mine)), tid
            for n, row in enumerate(mine.itertuples(), 1):
                text = tags[f"pbt.exploit.{n:03d}"]
                assert text == f"iteration {row.iteration}: cloned {row.source_trial_id}; {row.changes}", text
            assert f"pbt.exploit.{len(mine) + 1:03d}" not in tags
        else:
            assert "pbt.exploits" not in tags and not any(k.startswith("pbt.exploit.") for k in tags), tid
        # metric lr: every reported step, with the history's value among those logged there (a rewound run
        # logs the steps of the new branch next to the old branch's; MLflow keeps the steps of a branch that
        # a clone from a trial further ahead left behind, which the history drops)
        rows = h[h["trial_id"] == tid]
        logged: dict[int, list[float]] = {}
        for m in run.client.get_metric_history(child.info.run_id, "lr"):
            logged.setdefault(m.step, []).append(m.value)
        assert set(rows["iteration"]) <= set(logged), (tid, sorted(logged))
        assert max(logged) == rows["iteration"].max(), (tid, sorted(logged))
        for it, value in zip(rows["iteration"], rows["lr"]):
            assert value in logged[it], (tid, it, value, logged[it])
        # the final checkpoint: the last iteration, trained at the learning rate in force at the end
        local = Path(run.client.download_artifacts(child.info.run_id, "model/checkpoint.npz", str(tmp_path / tid)))
        cp = checkpoint.load(local)
        assert cp.state.iteration == t.loc[tid, "iterations"]
        assert (cp.cfg.seed, cp.cfg.learning_rate) == (t.loc[tid, "seed"], t.loc[tid, "final_lr"]), \
            f"{tid}: the logged checkpoint has seed {cp.cfg.seed}, learning_rate {cp.cfg.learning_rate}; the trial's " \
            f"seed is {t.loc[tid, 'seed']}, its final lr {t.loc[tid, 'final_lr']}"


def wait_for_text(driver: Driver, path: Path, text: str, what: str, timeout: float = 240) -> None:
    def seen() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except OSError:
            return False

    driver.wait_until(what, seen, timeout=timeout)


def assert_resumed_sweep_complete(cwd: Path, experiment: str, num_trials: int, iterations: int) -> pd.DataFrame:
    out = cwd / "out"
    t = read_trials(out)
    assert list(t["trial_id"]) == _ids(num_trials)
    assert set(t["status"]) <= {"finished", "stopped"}, t[["trial_id", "status"]]
    h = pd.read_parquet(out / "history.parquet")
    assert not h.duplicated(["trial_id", "iteration"]).any()
    assert set(h["trial_id"]) == set(t["trial_id"])
    for row in t.itertuples():
        its = list(h.loc[h["trial_id"] == row.trial_id, "iteration"].sort_values())
        assert its and its[-1] == row.iterations, (row.trial_id, its)
        if row.status == "finished":
            assert row.iterations == iterations
    m = Mlflow.read(f"sqlite:///{cwd / 'mlflow.db'}", experiment=experiment)
    assert len(m.parents) == 1 and m.parents[0].info.status == "FINISHED"
    assert sorted(m.children) == list(t["trial_id"])
    assert len(m.runs) == 1 + num_trials
    assert all(r.info.status != "RUNNING" for r in m.runs), [(r.data.tags.get("trial_id"), r.info.status) for r in m.runs]
    assert set(t["mlflow_run_id"]) == {r.info.run_id for r in m.children.values()}
    report = out / "report" / "report.md"
    assert report.exists() and report.stat().st_size > 0
    return t


# ------------------------------------------------------------------------------------- the sweep file


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus_text) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(corpus_text(CORPUS_CHARS), encoding="utf-8")
    return tmp_path


def _load(folder: Path, sweep: dict[str, Any] | str):
    from pipeline.config import load_sweep

    return load_sweep(write_sweep(folder, sweep))


def test_optuna_sweeps_load_in_both_forms(workspace: Path) -> None:
    from pipeline.config import OptunaSearch, RandomSearch

    cfg = _load(workspace, OPTUNA)
    assert isinstance(cfg.search_alg, OptunaSearch) and cfg.search_alg.seed == 11
    assert cfg.num_trials == 5

    text = yaml.safe_dump(_change(OPTUNA, search_alg=None), sort_keys=False) + "search_alg: optuna\n"
    cfg = _load(workspace, text)
    assert isinstance(cfg.search_alg, OptunaSearch) and cfg.search_alg.seed is None
    assert "Optuna TPE (seed 0)" in cfg.plan_text()  # the sweep's seed when the searcher has none

    cfg = _load(workspace, _change(OPTUNA, search_alg=None))
    assert isinstance(cfg.search_alg, RandomSearch)
    assert isinstance(_load(workspace, _change(OPTUNA, search_alg="random")).search_alg, RandomSearch)


def test_pbt_sweep_loads_with_its_defaults(workspace: Path) -> None:
    from pipeline.config import PbtScheduler

    cfg = _load(workspace, PBT)
    s = cfg.scheduler
    assert isinstance(s, PbtScheduler)
    assert (s.perturbation_interval, s.quantile_fraction, s.resample_probability, s.burn_in_period) == (100, 0.5, 0, 0)
    assert list(s.mutations) == ["learning_rate"]
    assert s.mutations["learning_rate"].kind == "loguniform"
    assert cfg.notes() == []  # the whole population runs at once

    cfg = _load(workspace, _change(PBT, scheduler__quantile_fraction=None, scheduler__resample_probability=None,
                                   scheduler__burn_in_period=None,
                                   scheduler__mutations={"learning_rate": {"loguniform": [0.01, 0.1]},
                                                         "clip": {"uniform": [1.0, 10.0]},
                                                         "temperature": {"choice": [0.5, 1.0]}}))
    s = cfg.scheduler
    assert (s.quantile_fraction, s.resample_probability, s.burn_in_period) == (0.25, 0.25, 0)
    assert sorted(s.mutations) == ["clip", "learning_rate", "temperature"]


def _draws_of(seed: int, startup: int) -> list[float]:
    """The first values a TPE sampler seeded so proposes for a float in [0, 1) (no results: random draws)."""
    import optuna

    return _ask(optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))


def _draws(searcher) -> list[float]:
    """The same for the sampler inside a Tune OptunaSearch (a copy of it: the searcher stays unused)."""
    return _ask(copy.deepcopy(searcher._sampler))


def _ask(sampler) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    return [study.ask(fixed_distributions=dist).params["x"] for _ in range(3)]


def test_the_tune_objects_follow_the_file(workspace: Path) -> None:
    """What pipeline.search hands Tune (imports Ray, starts nothing)."""
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch as TuneOptuna

    from pipeline import search

    cfg = _load(workspace, OPTUNA)
    alg = search.search_alg(cfg)
    assert isinstance(alg, ConcurrencyLimiter) and alg.max_concurrent == 2
    assert isinstance(alg.searcher, TuneOptuna) and alg.searcher.metric == "val_loss" and alg.searcher.mode == "min"
    assert _draws(alg.searcher) == _draws_of(seed=11, startup=10)  # seeded by search_alg.seed, 10 random draws first
    assert isinstance(search.scheduler(cfg), ASHAScheduler)
    assert search.checkpoints_to_keep(cfg) == 2

    bare = search.search_alg(_load(workspace, _change(OPTUNA, max_concurrent_trials=None, search_alg="optuna",
                                                      seed=4, metric="val_bpc")))
    assert isinstance(bare, TuneOptuna) and bare.metric == "val_bpc"
    assert _draws(bare) == _draws_of(seed=4, startup=10)  # the sweep's seed
    assert _draws(bare) != _draws_of(seed=11, startup=10)
    few = search.search_alg(_load(workspace, _change(OPTUNA, search_alg={"type": "optuna", "startup_trials": 2})))
    assert few.searcher._sampler._n_startup_trials == 2

    cfg = _load(workspace, PBT)
    assert isinstance(search.search_alg(cfg), BasicVariantGenerator)
    pbt = search.scheduler(cfg)
    assert isinstance(pbt, PopulationBasedTraining)
    assert pbt._time_attr == "iteration" and pbt._perturbation_interval == 100
    assert pbt._quantile_fraction == 0.5 and pbt._resample_probability == 0
    lr = pbt._hyperparam_mutations["learning_rate"]
    assert (lr.lower, lr.upper) == LR_RANGE
    assert search.checkpoints_to_keep(cfg) is None

    cfg = _load(workspace, _change(PBT, train__learning_rate=0.05, scheduler__mutations={
        "learning_rate": {"loguniform": [0.01, 0.1]}, "temperature": {"choice": [0.5, 1.0]}}))
    space = cfg.tune_space()
    assert space["learning_rate"] == 0.05 and space["temperature"] == 1.0  # mutated keys at their start value
    assert search.mutations(cfg)["temperature"] == [0.5, 1.0]


def test_a_perturbed_value_keeps_its_rule(workspace: Path) -> None:
    """Tune scales a mutated number by 1.2 or 0.8 without bound; a value that breaks its option's rule (dropout
    reaching 1) goes to the end of its mutation range, and one that keeps it (a learning rate above its range)
    is left alone."""
    from ray.tune.schedulers.pbt import _explore

    from pipeline import search

    cfg = _load(workspace, _change(PBT, train__dropout=0.5, scheduler__mutations={
        "learning_rate": {"loguniform": list(LR_RANGE)}, "dropout": {"uniform": [0.0, 0.9]}}))
    keep = search.scheduler(cfg)._custom_explore_fn
    assert keep({"learning_rate": 0.6, "dropout": 1.08}) == {"learning_rate": 0.6, "dropout": 0.9}
    assert keep({"learning_rate": 0.1, "dropout": 0.5}) == {"learning_rate": 0.1, "dropout": 0.5}
    config, seen = {"learning_rate": 0.4, "dropout": 0.5}, []
    for _ in range(6):  # Tune's own explore step, always scaling up: 0.6, 0.72, 0.864, then 1.04 -> 0.9
        config, _ = _explore(config, search.mutations(cfg), 0.0, (1.2,), keep)
        seen.append(round(config["dropout"], 6))
    assert seen == [0.6, 0.72, 0.864, 0.9, 0.9, 0.9] and config["learning_rate"] > LR_RANGE[1]


_OPT_BAD = _change(OPTUNA, train__iterations=100, train__eval_every=50)
_PBT_BAD = _change(PBT)

# id, the sweep, key the message names, further words in it
BAD_CASES = [
    pytest.param(_change(_OPT_BAD, train__hidden_size={"grid_search": [8, 16]}), "train.hidden_size.grid_search",
                 ["choice: [8, 16]", "optuna"], id="optuna_with_grid_search"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"hidden_size": {"choice": [8, 16]}}),
                 "scheduler.mutations.hidden_size", ["cannot change", "search it under train:", "learning_rate"],
                 id="mutating_hidden_size"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"learning_rat": {"loguniform": [0.01, 0.1]}}),
                 "scheduler.mutations.learning_rat", ["unknown option", "'learning_rate'"], id="unknown_mutation_key"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"learning_rate": 0.1}), "scheduler.mutations.learning_rate",
                 ["search domain"], id="mutation_not_a_domain"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"learning_rate": {"grid_search": [0.01, 0.1]}}),
                 "scheduler.mutations.learning_rate", ["search domain"], id="mutation_grid"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"dropout": {"uniform": [0.0, 1.0]}}),
                 "scheduler.mutations.dropout.uniform", ["largest value must be in [0, 1)", "use 0 for none"],
                 id="mutation_range_breaks_the_rule"),
    pytest.param(_change(_PBT_BAD, scheduler__mutations={"seed": {"randint": [0, 9]}}), "scheduler.mutations.seed",
                 ["cannot change", "when a trial starts", "search it under train:"], id="mutating_a_start_option"),
    pytest.param(_change(_PBT_BAD, scheduler__perturbation_interval=75), "scheduler.perturbation_interval",
                 ["multiple of train.eval_every=50", "75"], id="interval_not_a_multiple_of_eval_every"),
    pytest.param(_change(_PBT_BAD, scheduler__perturbation_interval=400), "scheduler.perturbation_interval",
                 [">= iterations=400"], id="interval_not_below_iterations"),
    pytest.param(_change(_PBT_BAD, num_samples=1), "num_samples", ["population", "at least 2"], id="pbt_population_1"),
    pytest.param(_change(_PBT_BAD, train__eval_every={"choice": [50, 100]}), "train.eval_every", ["fixed", "pbt"],
                 id="pbt_with_searched_eval_every"),
    pytest.param(_change(_OPT_BAD, search_alg={"type": "optna"}), "search_alg.type", ["'optna'", "'optuna'"],
                 id="unknown_search_alg_type"),
    pytest.param(_change(_OPT_BAD, search_alg="optna"), "search_alg.type", ["'optna'", "'optuna'"],
                 id="unknown_search_alg_string"),
    pytest.param(_change(_OPT_BAD, search_alg={"type": "optuna", "seed": -1}), "search_alg.seed", [">= 0"],
                 id="negative_searcher_seed"),
    pytest.param(_change(_OPT_BAD, scheduler={"type": "fifo"}, packing={"max_trials": 2}), "packing",
                 ["optuna", "search_alg: random"], id="optuna_with_packing"),
    pytest.param(_change(_PBT_BAD, search_alg="optuna"), "search_alg", ["PBT", "search_alg: random"],
                 id="optuna_with_pbt"),
]


@pytest.mark.parametrize("sweep, key, words", BAD_CASES)
def test_bad_search_settings_exit_2_and_create_nothing(sweep: dict, key: str, words: list[str], tmp_path: Path,
                                                       run_module, cli_env, fresh_ray_tmpdir, corpus_text, snapshot,
                                                       proc_text) -> None:
    sweep_file = write_sweep(tmp_path, sweep, corpus_text(CORPUS_CHARS))
    before = snapshot(tmp_path)
    proc = run_module("pipeline.sweep", sweep_file.name, cwd=tmp_path, env=cli_env(ray_tmp=fresh_ray_tmpdir),
                      timeout=120)
    assert proc.returncode == 2, proc_text(proc)
    assert proc.stderr.startswith("error:") and proc.stderr.count("error:") == 1, proc_text(proc)
    problems = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 1, proc_text(proc)  # the one thing wrong, nothing else
    assert problems[0].startswith(f"- {key}: "), proc_text(proc)
    for word in words:
        assert word in problems[0], proc_text(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert snapshot(tmp_path) == before  # no output folder, no mlflow.db, no mlruns
    assert list(fresh_ray_tmpdir.iterdir()) == []  # Ray never started


def test_dry_run_shows_the_search_the_pbt_scheduler_and_the_concurrency_note(
        tmp_path: Path, run_module, cli_env, fresh_ray_tmpdir, corpus_text, snapshot, proc_text) -> None:
    (tmp_path / "opt").mkdir()
    (tmp_path / "pbt").mkdir()
    opt_file = write_sweep(tmp_path / "opt", OPTUNA, corpus_text(CORPUS_CHARS))
    pbt_file = write_sweep(tmp_path / "pbt", _change(PBT, max_concurrent_trials=2), corpus_text(CORPUS_CHARS))
    full_file = write_sweep(tmp_path / "pbt", PBT, corpus_text(CORPUS_CHARS), name="full.yaml")
    before = snapshot(tmp_path)
    env = cli_env(ray_tmp=fresh_ray_tmpdir)

    proc = run_module("pipeline.sweep", opt_file.name, "--dry-run", cwd=opt_file.parent, env=env, timeout=120)
    assert proc.returncode == 0, proc_text(proc)
    assert re.search(r"^\s+search:\s+Optuna TPE \(seed 11\)", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s+scheduler:\s+ASHA", proc.stdout, re.M), proc.stdout
    assert "at most 2 at once" in proc.stdout and "note:" not in proc.stdout + proc.stderr

    proc = run_module("pipeline.sweep", pbt_file.name, "--dry-run", cwd=pbt_file.parent, env=env, timeout=120)
    assert proc.returncode == 0, proc_text(proc)
    out = proc.stdout
    assert re.search(r"^\s+search:\s+random", out, re.M), out
    line = re.search(r"^\s+scheduler:\s+(PBT.*)$", out, re.M)
    assert line, out
    for words in ("every 100 iterations", "bottom 0.5", "resample_probability 0", "learning_rate loguniform"):
        assert words in line.group(1), line.group(1)
    note = re.search(r"^\s+note:\s+(.*)$", out, re.M)
    assert note, out
    assert "at most 2 of the 4" in note.group(1) and "max_concurrent_trials: 4" in note.group(1)

    proc = run_module("pipeline.sweep", full_file.name, "--dry-run", cwd=full_file.parent, env=env, timeout=120)
    assert proc.returncode == 0, proc_text(proc)
    assert "PBT" in proc.stdout and "note:" not in proc.stdout + proc.stderr  # the population trains together

    assert snapshot(tmp_path) == before
    assert list(fresh_ray_tmpdir.iterdir()) == []


# ----------------------------------------------------------------------------------------- optuna e2e


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory, run_module, corpus_text, proc_text) -> SweepRun:
    run = run_sweep(run_module, tmp_path_factory.mktemp("optuna"), OPTUNA, corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    return run


def _optuna_proposals(n: int, seed: int, startup: int, space: dict[str, Any]) -> list[dict[str, Any]]:
    """What Optuna's TPE, seeded as OptunaSearch seeds it, proposes first (its startup trials, drawn before
    any result counts), for Tune domains `space`."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch as TuneOptuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = TuneOptuna.convert_search_space(space)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
                                direction="minimize")
    return [study.ask(fixed_distributions=dists).params for _ in range(n)]


@pytest.mark.slow
def test_optuna_sweep_has_one_row_and_run_per_trial_in_proposal_order(optuna_sweep: SweepRun) -> None:
    from pipeline.config import load_sweep
    from pipeline.trainable import trial_seed

    t, h = optuna_sweep.trials(), optuna_sweep.history()
    assert list(t["trial_id"]) == _ids(5)
    assert set(t["status"]) <= {"finished", "stopped"} and (t["status"] == "finished").any()
    lo, hi = OPTUNA["train"]["learning_rate"]["loguniform"]
    assert t["learning_rate"].between(lo, hi).all() and t["learning_rate"].nunique() == 5
    assert set(t["hidden_size"]) <= {8, 16}
    # the training seeds come from the sweep's seed and the trial's position, not from Optuna's random id
    assert list(t["seed"]) == [trial_seed(0, i) for i in range(5)]
    # t000k holds Optuna's k-th proposal (seed 11): the search is Optuna's, and the keys follow its order
    cfg = load_sweep(optuna_sweep.sweep_file)
    assert cfg.search_alg.startup_trials >= 5  # all five are TPE's random startup draws: no timing involved
    want = _optuna_proposals(5, 11, cfg.search_alg.startup_trials, {k: d.to_tune() for k, d in cfg.searched.items()})
    assert [(p["hidden_size"], p["learning_rate"]) for p in want] == list(zip(t["hidden_size"], t["learning_rate"]))
    # Optuna names the trials: random ids, no <hash>_<00000> counter
    folders = [p.name for p in (optuna_sweep.output / "tune").glob("train_trial_*")]
    assert len(folders) == 5 and not any(re.match(r"train_trial_[0-9a-f]+_\d{5}_", f) for f in folders), folders

    # every report says the learning rate in force, which Optuna's trials never change
    assert h["lr"].notna().all() and h["exploited_from"].isna().all()
    for row in t.itertuples():
        rows = h[h["trial_id"] == row.trial_id]
        assert list(rows["iteration"]) == list(range(100, row.iterations + 1, 100)), row.trial_id
        assert (rows["lr"] == row.learning_rate).all() and row.final_lr == row.learning_rate
        assert row.exploits == 0
    assert not (optuna_sweep.output / "exploits.parquet").exists()
    for noise in ("Traceback", "[I 20", "[W 20", "Trial status"):
        assert noise not in optuna_sweep.proc.stdout + optuna_sweep.proc.stderr, noise


@pytest.mark.slow
def test_optuna_sweep_mlflow_children_carry_trial_ids_params_and_lr(optuna_sweep: SweepRun) -> None:
    m, t, h = optuna_sweep.mlflow(), optuna_sweep.trials(), optuna_sweep.history()
    assert len(m.parents) == 1 and m.parents[0].info.status == "FINISHED"
    assert m.parents[0].data.params["num_trials"] == "5"
    assert sorted(m.children) == list(t["trial_id"]) and len(m.runs) == 6
    assert all(r.info.status != "RUNNING" for r in m.runs)
    for row in t.itertuples():
        run = m.children[row.trial_id]
        assert run.info.run_id == row.mlflow_run_id
        assert run.data.tags["trial_id"] == row.trial_id and run.data.tags[PARENT_TAG] == m.parents[0].info.run_id
        assert run.info.run_name.startswith(f"{row.trial_id}-h{row.hidden_size}-lr")
        p = run.data.params
        assert float(p["learning_rate"]) == row.learning_rate and int(p["hidden_size"]) == row.hidden_size
        assert int(p["seed"]) == row.seed
        assert run.info.status == "FINISHED" and run.data.tags["rnnsweep.status"] == row.status
        lr = sorted(m.client.get_metric_history(run.info.run_id, "lr"), key=lambda x: x.step)
        rows = h[h["trial_id"] == row.trial_id]
        assert [(x.step, x.value) for x in lr] == [(it, row.learning_rate) for it in rows["iteration"]]


# -------------------------------------------------------------------------------------------- PBT e2e


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory, run_module, corpus_text, proc_text) -> SweepRun:
    run = run_sweep(run_module, tmp_path_factory.mktemp("pbt"), PBT, corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    return run


@pytest.mark.slow
def test_pbt_exploits_are_recorded_consistently_in_the_tables(pbt_sweep: SweepRun) -> None:
    ex = assert_pbt_consistent(pbt_sweep.output, 4, 400, 50, resample_probability=0.0)
    assert (ex["iteration"] % 100 == 0).all(), ex  # at perturbation_interval boundaries
    for row in ex.itertuples():  # the console says it
        assert f"{row.trial_id}: PBT copied {row.source_trial_id} at iteration {row.iteration}" in pbt_sweep.proc.stdout
    assert "note:" not in pbt_sweep.proc.stderr  # the whole population ran at once
    for noise in ("Traceback", "WARNING", "ERROR"):
        assert noise not in pbt_sweep.proc.stdout + pbt_sweep.proc.stderr, noise


@pytest.mark.slow
def test_pbt_exploits_are_in_mlflow_and_the_final_checkpoints(pbt_sweep: SweepRun, tmp_path: Path) -> None:
    assert_mlflow_pbt(pbt_sweep.mlflow(), pbt_sweep.output, tmp_path)
    assert (pbt_sweep.output / "report" / "report.md").exists()


@pytest.mark.slow
def test_pbt_with_a_smaller_concurrency_warns_and_still_runs(tmp_path: Path, run_module, corpus_text,
                                                             proc_text) -> None:
    """max_concurrent_trials below the population: a note on stderr, and the sweep still completes."""
    sweep = _change(PBT, name="pbt2", num_samples=3, max_concurrent_trials=2, resources={"cpu": 1},
                    train__iterations=200, scheduler__resample_probability=0.25)
    run = run_sweep(run_module, tmp_path, sweep, corpus_text(CORPUS_CHARS))
    assert run.proc.returncode == 0, proc_text(run.proc)
    notes = [line for line in run.proc.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "at most 2 of the 3" in notes[0], proc_text(run.proc)
    t = run.trials()
    assert list(t["trial_id"]) == _ids(3) and (t["status"] == "finished").all()
    assert (t["final_lr"].notna()).all()


# ----------------------------------------------------------------------------------------------- resume


def _driver_env(cli_env, short_tmp) -> tuple[dict[str, str], Path]:
    ray_tmp = short_tmp()
    return cli_env(ray_tmp=ray_tmp), ray_tmp


def _interrupt_and_resume(cwd: Path, sweep: dict[str, Any], corpus: str, env: dict[str, str], ray_tmp: Path,
                          ready: Callable[[Driver], None], sig: signal.Signals) -> tuple[Driver, Driver, int]:
    """Start the sweep, wait for `ready`, stop the driver with `sig`, clean up what it left, run --resume."""
    sweep_file = write_sweep(cwd, sweep, corpus)
    run = Driver(cwd, env, sweep_file.name, name="run")
    try:
        ready(run)
        if sig == signal.SIGINT:
            os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            os.kill(run.proc.pid, signal.SIGKILL)  # the driver alone: Ray's processes are orphaned
        rc = run.wait(timeout=120)
    finally:
        run.kill_group()
        kill_run_processes(ray_tmp, cwd)
    resumed = Driver(cwd, env, sweep_file.name, "--resume", name="resume")
    try:
        resumed.wait(timeout=400)
    finally:
        resumed.kill_group()
        kill_run_processes(ray_tmp, cwd)
    return run, resumed, rc


@pytest.mark.slow
def test_optuna_sweep_resumes_after_the_driver_was_killed(tmp_path: Path, cli_env, short_tmp, corpus_text) -> None:
    """SIGKILL while the third trial trains (one at a time), then --resume."""
    sweep = _change(OPTUNA, name="optres", num_samples=4, max_concurrent_trials=1, scheduler={"type": "fifo"},
                    train__iterations=3000, train__eval_every=500)
    env, ray_tmp = _driver_env(cli_env, short_tmp)
    journal = tmp_path / "out" / ".history.jsonl"

    def ready(run: Driver) -> None:
        wait_for_text(run, journal, '"trial_id": "t0002", "iteration"', "a report of t0002")

    run, resumed, rc = _interrupt_and_resume(tmp_path, sweep, corpus_text(CORPUS_CHARS), env, ray_tmp, ready,
                                             signal.SIGKILL)
    assert rc == -signal.SIGKILL, run.describe()
    assert resumed.proc.returncode == 0, resumed.describe()
    t = assert_resumed_sweep_complete(tmp_path, "optres", 4, 3000)
    assert (t["status"] == "finished").all()
    assert t["learning_rate"].nunique() == 4
    h = pd.read_parquet(tmp_path / "out" / "history.parquet")
    for row in t.itertuples():
        assert list(h.loc[h["trial_id"] == row.trial_id, "iteration"].sort_values()) == list(range(500, 3001, 500))
        assert (h.loc[h["trial_id"] == row.trial_id, "lr"] == row.learning_rate).all()


def test_pbt_run_from_a_checkpoint_the_old_driver_never_reported_is_logged_to_mlflow(workspace: Path) -> None:
    """Before a stop, trial t0002 trained on to 500 (reported and logged to MLflow) while PBT was cloning another
    trial into it at 300; the clone's run reported 400, wrote its checkpoint at 500, and the driver stopped
    before that report came. After --resume the trial goes on from that checkpoint and sends its report first:
    new to the history, and MLflow holds step 500 only from the branch the clone replaced, so it is logged."""
    from pipeline.callback import SweepCallback
    from pipeline.lineage import Branch, Exploit, LineageEvent
    from pipeline.results import ResultsTable
    from pipeline.tracking import Tracker

    class Client:  # MLflow's side of Tracker.log_metrics
        def __init__(self) -> None:
            self.batches: list[tuple[str, dict[str, float]]] = []

        def log_batch(self, run_id, metrics=()):
            self.batches.append((run_id, {m.key: (m.step, m.value) for m in metrics}))

    class Run:  # the reattached run: MLflow's highest step is the left-behind branch's 500
        def __init__(self) -> None:
            self.client, self.last_step = Client(), {}

        def trial_run(self, *, trial_id, name, params):
            self.last_step["run-2"] = 500
            return "run-2"

    tracker = Run()
    tracker.log_metrics = Tracker.log_metrics.__get__(tracker)
    tracker.record_lineage = Tracker.record_lineage.__get__(tracker)
    table = ResultsTable(workspace / "out", sweep_text="")
    old, new = 0.00129, 0.00428

    def row(it: int, lr: float) -> dict[str, Any]:
        return {"iteration": it, "train_loss": 3.0, "val_loss": 3.0, "val_bpc": 4.3, "chars_per_sec": 1e4,
                "lr": lr, "elapsed_s": it / 100, "exploited_from": None}

    for it in (100, 200, 300, 400, 500):  # the old driver's history of t0002, then the clone's branch from 300
        table.add_report("t0002", row(it, old))
    clone = LineageEvent(branch=Branch(trial_id="t0002", start=300, kept_exploits=0, dropped_exploits=0,
                                       relog_after=300),
                         exploit=Exploit(trial_id="t0002", iteration=300, source_trial_id="t0001", changes="", number=1))
    table.add_report("t0002", {**row(400, new), "exploited_from": "t0001"}, lineage=clone)
    callback = SweepCallback(cfg=_load(workspace, PBT), tracker=tracker, table=table)
    trial = type("Trial", (), {"trial_id": "pbt_00002", "config": {"learning_rate": new}})()
    report = {**row(500, new), "run_token": "after-resume", "start_iteration": 500}
    callback._record(trial, report)

    assert sorted(r["iteration"] for r in table.history_of("t0002")) == [100, 200, 300, 400, 500]
    assert table.history[("t0002", 500)]["lr"] == new
    assert tracker.client.batches == [("run-2", {"train_loss": (500, 3.0), "val_loss": (500, 3.0),
                                                 "val_bpc": (500, 4.3), "chars_per_sec": (500, 1e4),
                                                 "lr": (500, new)})]
    callback._record(trial, report)  # the same report again (a restart from the same checkpoint): logged once
    assert len(tracker.client.batches) == 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_pbt_sweep_resumes_after_the_driver_was_stopped(how: str, tmp_path: Path, cli_env, short_tmp,
                                                        corpus_text) -> None:
    """Ctrl-C (Tune saves its state, the tables are written) or SIGKILL (the newest reports and exploits are
    only in the journal) once a trial was exploited, then --resume: the exploits before and after the stop are
    all recorded, the tables and MLflow agree as in an uninterrupted sweep."""
    # iterations not a multiple of perturbation_interval: no perturbation at the final report (see the e2e test)
    sweep = _change(PBT, name="pbtres", train__iterations=2000, train__eval_every=100, train__sample_every=1000,
                    scheduler__perturbation_interval=300, scheduler__resample_probability=0.25)
    env, ray_tmp = _driver_env(cli_env, short_tmp)
    journal = tmp_path / "out" / ".history.jsonl"

    def ready(run: Driver) -> None:
        wait_for_text(run, journal, '"exploit"', "an exploit")

    sig = {"sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[how]
    run, resumed, rc = _interrupt_and_resume(tmp_path, sweep, corpus_text(CORPUS_CHARS), env, ray_tmp, ready, sig)
    assert rc == (130 if how == "sigint" else -signal.SIGKILL), run.describe()
    assert resumed.proc.returncode == 0, resumed.describe()
    assert_resumed_sweep_complete(tmp_path, "pbtres", 4, 2000)
    assert_pbt_consistent(tmp_path / "out", 4, 2000, 100, resample_probability=0.25)
    assert_mlflow_pbt(Mlflow.read(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="pbtres"), tmp_path / "out",
                      tmp_path / "dl")
