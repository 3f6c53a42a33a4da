"""The sweep file's rules across keys and the disk: what no single key can check on its own.

``across_keys`` runs after each key was validated on its own (``pipeline.config``), and each rule runs only
when its inputs are valid, so a broken key causes one problem, not a cascade. It reads the corpus (through
``SweepConfig.corpus``) and checks that the output and storage folders can be created; it creates nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rnncore.config import TrainConfig, check_together
from rnncore.data import CorpusError, check_fits

from .sections import AshaScheduler, FifoScheduler, OptunaSearch, PbtScheduler
from .space import Domain
from .vocab import METRICS

if TYPE_CHECKING:
    from .config import SweepConfig

__all__ = ["across_keys"]

Problem = tuple[str, str]  # (dotted key, "rule, but got value; fix")


def across_keys(cfg: SweepConfig, broken: set[str], check_corpus: bool) -> list[Problem]:
    """The rules that tie keys together, and the disk; each runs only when its inputs are valid."""
    problems: list[Problem | None] = []
    if not {"metric", "mode"} & broken and cfg.mode != METRICS[cfg.metric][0]:
        want = METRICS[cfg.metric][0]
        problems.append(("mode", f"{cfg.metric} is a loss, so mode must be {want}, but got mode={cfg.mode!r}; "
                                 f"use mode: {want}"))
    if not {"metric", "data"} & broken and cfg.metric.startswith("val_") and cfg.data.val_fraction == 0:
        problems.append(("metric", f"{cfg.metric} needs a validation split, but got data.val_fraction=0; "
                                   "set val_fraction: 0.1, or use metric: train_loss"))
    device = cfg.train.get("device", TrainConfig.device)
    devices = set(device.values()) if isinstance(device, Domain) else {device}
    if "gpu" in devices and not {"train.device", "resources"} & broken and cfg.resources.gpu == 0:
        problems.append(("train.device", "device gpu needs a GPU for each trial, but got resources.gpu=0; "
                                         "set resources: {cpu: 1, gpu: 0.25} (a share of a GPU), or device: auto"))
    if isinstance(cfg.search_alg, OptunaSearch) and "search_alg" not in broken:
        problems += [(f"train.{name}.grid_search", "search_alg optuna draws every searched value itself and cannot "
                      f"run a grid, but got grid_search {list(d.values())}; write choice: {list(d.values())} "
                      "instead, or use search_alg: random")
                     for name, d in cfg.searched.items() if d.is_grid and f"train.{name}" not in broken]
        if isinstance(cfg.scheduler, PbtScheduler) and "scheduler" not in broken:
            problems.append(("search_alg", "PBT makes its own trials from the population, so it cannot take search "
                                           "alg optuna; use search_alg: random with scheduler pbt, or another scheduler"))
    if "scheduler" not in broken:
        problems += _scheduler_problems(cfg, broken)
    if cfg.packing is not None and not {"packing", "scheduler"} & broken and \
            not isinstance(cfg.scheduler, FifoScheduler):
        problems.append(("packing", "packed trials run with scheduler fifo (a pack trains its members together), "
                                    f"but got scheduler {cfg.scheduler.type}; set scheduler: fifo or remove packing"))
    elif cfg.packing is not None and not {"packing", "search_alg"} & broken and \
            isinstance(cfg.search_alg, OptunaSearch):
        problems.append(("packing", "packed trials are drawn up front, but search_alg optuna proposes each trial "
                                    "from the results so far; remove packing, or use search_alg: random"))
    if not {"train.warmup", "train.iterations"} & broken:
        problems.append(_together_problem(cfg))
    if check_corpus and "data" not in broken:
        problems.append(_corpus_problem(cfg, broken))
    if "output" not in broken:
        problems.append(_folder_problem("output", cfg.output))
    if "storage" not in broken and cfg.storage and "://" not in cfg.storage:
        problems.append(_folder_problem("storage", Path(cfg.storage)))
    return [p for p in problems if p is not None]


def _scheduler_problems(cfg: SweepConfig, broken: set[str]) -> list[Problem]:
    """ASHA stops trials at iterations the sweep reaches; PBT perturbs at reports, in a population of trials."""
    s, fewest = cfg.scheduler, cfg.value_range("iterations")[0]
    if isinstance(s, AshaScheduler) and "train.iterations" not in broken:
        if s.grace_period > fewest:
            return [("scheduler.grace_period", f"must be <= the smallest possible iterations, but got grace_period="
                                               f"{s.grace_period} > iterations={fewest}; lower grace_period or raise "
                                               "iterations")]
        if s.max_t is not None and s.grace_period > s.max_t:
            return [("scheduler.max_t", f"must be >= grace_period, but got max_t={s.max_t} < grace_period="
                                        f"{s.grace_period}; raise max_t or leave it out")]
    if not isinstance(s, PbtScheduler):
        return []
    problems: list[Problem] = []
    if cfg.num_trials < 2 and "num_samples" not in broken:
        problems.append(("num_samples", f"PBT needs a population of at least 2 trials, but the sweep has "
                                        f"{cfg.num_trials}; raise num_samples (4 or more is usual)"))
    eval_every = cfg.train.get("eval_every", TrainConfig.eval_every)
    if isinstance(eval_every, Domain):
        problems.append(("train.eval_every", "must be fixed with scheduler pbt (trials are compared at the same "
                                             f"iterations), but got {eval_every}; write one value"))
    elif "train.eval_every" not in broken and s.perturbation_interval % eval_every:
        problems.append(("scheduler.perturbation_interval",
                         f"must be a multiple of train.eval_every={eval_every} (trials report and checkpoint "
                         f"there), but got {s.perturbation_interval}; use e.g. {2 * eval_every}"))
    if "train.iterations" not in broken and s.perturbation_interval + s.burn_in_period >= fewest:
        problems.append(("scheduler.perturbation_interval",
                         f"must leave room to perturb before the last iteration, but got perturbation_interval="
                         f"{s.perturbation_interval} (+ burn_in_period {s.burn_in_period}) >= iterations="
                         f"{fewest}; lower it or raise train.iterations"))
    problems += [(f"train.{name}.grid_search", f"{name} is mutated by PBT, so its starting values are drawn, not a "
                                               "grid; use choice or a range instead")
                 for name in s.mutations if name in cfg.searched and cfg.searched[name].is_grid]
    return problems


def _together_problem(cfg: SweepConfig) -> Problem | None:
    """The engine's rules that tie options together (rnncore.config.check_together), for the worst trial the
    sweep can make: the largest warmup with the fewest iterations."""
    warmup, iterations = cfg.value_range("warmup")[1], cfg.value_range("iterations")[0]
    problem = check_together({**cfg.base_values(), "warmup": warmup, "iterations": iterations})
    if problem is None:
        return None
    searched = [f"the {end} {k}" for end, k in (("largest", "warmup"), ("fewest", "iterations")) if k in cfg.searched]
    if searched:  # "rule, but got value; fix": say where the values come from before the fix
        rule_value, _, fix = problem.partition("; ")
        problem = f"{rule_value} ({' and '.join(searched)} the search can draw); {fix}"
    return "train.warmup", problem


def _corpus_problem(cfg: SweepConfig, broken: set[str]) -> Problem | None:
    """The corpus must read as UTF-8 text, and the largest window must fit its training split."""
    try:
        corpus = cfg.corpus()
    except CorpusError as e:
        return "data.path", str(e)
    if {"train.seq_length", "train.batch_size"} & broken:
        return None
    seq_length, batch_size = cfg.value_range("seq_length")[1], cfg.value_range("batch_size")[1]
    try:
        check_fits(corpus, seq_length, batch_size)
    except CorpusError as e:
        return "train.seq_length", (f"the largest seq_length={seq_length} with the largest batch_size={batch_size} "
                                    f"does not fit: {e}")
    return None


def _folder_problem(key: str, path: Path) -> Problem | None:
    """A folder that can be used or created: if it exists, a writable folder; else under one."""
    if path.exists():
        if not path.is_dir():
            return key, f"must be a folder, but got {path}, which is an existing file; choose another path"
        if not os.access(path, os.W_OK | os.X_OK):
            return key, f"must be a writable folder, but got {path}, which is read-only; fix its permissions"
        return None
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return key, f"must be creatable, but got {path}, inside the file {ancestor}; choose another path"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return key, f"must be creatable, but got {path}, and {ancestor} is not writable; choose a folder you can write"
    return None
