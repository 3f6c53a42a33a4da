"""The trial plan a valid sweep file describes, as text: what ``--dry-run`` prints and the sweep logs.

``plan_text`` says how many trials run and why, which options are searched, fixed or left at their
defaults, and what the scheduler, searcher, resources and outputs are; ``notes`` holds advice on a valid
sweep that will likely not do what its author wants (shown, not enforced).
"""
from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from rnncore.config import FIELD_NAMES, TrainConfig
from rnncore.trainer import memory_bytes

from .sections import AshaScheduler, OptunaSearch, PbtScheduler, Scheduler
from .space import Domain
from .vocab import METRICS

if TYPE_CHECKING:
    from .config import SweepConfig

__all__ = ["WORKER_BYTES", "crowding_note", "machine_memory", "memory_problem", "notes", "plan_text",
           "trial_memory"]

# A trial's process besides its arrays: Python, numpy, Ray's worker and the corpus (measured: 250-300 MB RSS)
WORKER_BYTES = 300 << 20
# the options a trial's memory depends on (rnncore.trainer.memory_bytes): numeric ones grow it, the others differ
GROWING = ("hidden_size", "num_layers", "seq_length", "batch_size", "eval_streams", "dropout")
CHOSEN = ("cell", "optimizer", "dtype")
SHOWN = ("cell", "num_layers", "hidden_size", "seq_length", "batch_size", "dtype", "optimizer")


def plan_text(cfg: SweepConfig) -> str:
    """A human-readable plan: trials, fixed and searched values, scheduler, resources, outputs."""
    grid = [f"{k} ({len(d.values())})" for k, d in cfg.searched.items() if d.is_grid]
    count = f"{cfg.num_trials} trial{'s' if cfg.num_trials != 1 else ''}"
    if grid:
        count += f" = {cfg.grid_size} grid point(s) from {' x '.join(grid)} x num_samples {cfg.num_samples}"
    elif cfg.num_samples > 1:
        count += f" = num_samples {cfg.num_samples}"
    random_keys = [k for k, d in cfg.searched.items() if not d.is_grid]
    if random_keys:
        how = "proposed by TPE" if isinstance(cfg.search_alg, OptunaSearch) else "drawn anew"
        count += f"; {', '.join(random_keys)} {how} for each trial"
    width = max((len(k) for k in cfg.train), default=0)
    defaults = TrainConfig().to_dict()
    unset = [f"{k}={defaults[k]!r}" for k in FIELD_NAMES if k not in cfg.train]
    lines = [
        f"Sweep {cfg.name!r}" + (f" from {cfg.source_path}" if cfg.source_path else ""),
        f"  trials:     {count} (seed {cfg.seed})",
        f"  corpus:     {cfg.data.path} (val_fraction {cfg.data.val_fraction})",
        "  searched:" + ("" if cfg.searched else "   none"),
        *(f"    {k:<{width}}  {d.describe()}" for k, d in cfg.searched.items()),
        "  fixed:" + ("" if cfg.fixed else "      none"),
        *(f"    {k:<{width}}  {v!r}" for k, v in cfg.fixed.items()),
    ]
    if unset:
        lines.append(f"  defaults:   {', '.join(unset)}")
    lines += [
        f"  objective:  {cfg.mode} {cfg.metric} ({METRICS[cfg.metric][1]})",
        f"  search:     {_search_text(cfg)}",
        f"  scheduler:  {_scheduler_text(cfg.scheduler)}",
        f"  memory:     {_memory_text(cfg)}",
        f"  resources:  {cfg.resources.cpu:g} CPU, {cfg.resources.gpu:g} GPU per trial; "
        + (f"at most {cfg.max_concurrent_trials} at once" if cfg.max_concurrent_trials
           else "as many at once as resources allow"),
        f"  limits:     max_failures {cfg.max_failures} per trial; "
        + (f"time budget {cfg.time_budget_s:g} s" if cfg.time_budget_s else "no time budget"),
        f"  ray:        {cfg.ray.address or 'a new local instance'}"
        + (f"; storage {cfg.storage}" if cfg.storage else ""),
        f"  output:     {cfg.output}",
        f"  mlflow:     experiment {cfg.mlflow.experiment!r} at "
        + (cfg.mlflow.tracking_uri or "the default local store")
        + (f"; the best model registered as {cfg.mlflow.register_model!r}" if cfg.mlflow.register_model else ""),
        *(f"  note:       {n}" for n in notes(cfg)),
    ]
    return "\n".join(lines)


def trial_memory(cfg: SweepConfig) -> tuple[int, dict[str, Any]]:
    """The most memory one trial of the sweep can need (a packed sweep: one pack), in bytes, with the values that
    need it: rnncore.trainer.memory_bytes at the largest size each option takes, over every cell, optimizer and
    dtype the sweep can pick, plus WORKER_BYTES. Reads the corpus (its vocabulary size)."""
    V = cfg.corpus().vocab.size
    members = min(cfg.packing.max_trials, cfg.num_trials) if cfg.packing else 1
    base = cfg.base_values()
    top = {k: cfg.value_range(k)[1] for k in GROWING}
    chosen = [_values(cfg, k) for k in CHOSEN]
    best: tuple[int, dict[str, Any]] = (WORKER_BYTES, {})
    for combo in itertools.product(*chosen):
        values = {**top, **dict(zip(CHOSEN, combo))}
        try:
            need = memory_bytes(TrainConfig.from_dict({**base, **values}), V, members) + WORKER_BYTES
        except ValueError:  # a combination no trial can have (e.g. float16 with an option that refuses it)
            continue
        if need > best[0]:
            shown = {k: v for k, v in values.items() if k in SHOWN or v != getattr(TrainConfig, k)}
            best = (need, {**shown, **({"packed trials": members} if members > 1 else {})})
    return best


def memory_problem(cfg: SweepConfig, available: int, where: str) -> str | None:
    """Why a trial of the sweep cannot fit in ``available`` bytes (``where``: "the largest Ray node", ...), or
    None when it fits."""
    need, values = trial_memory(cfg)
    if need <= available:
        return None
    shown = ", ".join(f"{k} {v}" for k, v in values.items())
    ways = ["lower hidden_size, batch_size or seq_length" + (" (or packing.max_trials)" if cfg.packing else "")]
    if values.get("dtype") == "float64":
        ways.append("use dtype float32")
    return (f"train: a trial needs about {_gib(need)} of memory ({shown}), more than {where} has "
            f"({_gib(available)}); {', '.join(ways)}, or run on a node with more memory")


def crowding_note(cfg: SweepConfig, nodes: list[dict[str, float]]) -> str | None:
    """Advice when the trials that can run at once on one node (its CPUs over resources.cpu, at most
    max_concurrent_trials) need more memory together than the node has; ``nodes`` as Ray reports their
    resources ("CPU", "memory"). None when they fit: each trial alone fits (memory_problem checks that)."""
    if not cfg.resources.cpu:
        return None
    need, _ = trial_memory(cfg)
    runs = cfg.max_concurrent_trials or cfg.num_trials
    worst = None
    for node in nodes:
        at_once = min(int(node.get("CPU", 0) // cfg.resources.cpu), runs, cfg.num_trials)
        memory = int(node.get("memory", 0))
        if at_once > 1 and at_once * need > memory and (worst is None or at_once * need - memory > worst[2]):
            worst = (at_once, memory, at_once * need - memory)
    if worst is None:
        return None
    at_once, memory, _ = worst
    fits = max(1, memory // need)
    return (f"up to {at_once} trials at once on a node with {_gib(memory)} of memory need about "
            f"{_gib(at_once * need)} together; set max_concurrent_trials: {fits} (or raise resources.cpu) so the "
            "ones running together fit, or the kernel may kill their workers (retried as worker failures)")


def machine_memory() -> int:
    """This machine's memory, or the memory limit of the cgroup this process runs in (a container's, a job
    scheduler's) if that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _cgroup_limit_files():
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def _cgroup_limit_files() -> list[str]:
    """The memory-limit files of this process's cgroup, v2 (memory.max) and v1 (memory.limit_in_bytes)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max")
        elif "memory" in controllers.split(","):
            files.append(f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.limit_in_bytes")
    return files


def _values(cfg: SweepConfig, name: str) -> list[Any]:
    value = cfg.train.get(name, getattr(TrainConfig, name))
    return list(value.values()) if isinstance(value, Domain) else [value]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _memory_text(cfg: SweepConfig) -> str:
    try:
        need, values = trial_memory(cfg)
    except Exception:  # noqa: BLE001 - a corpus load_sweep did not read (check_corpus=False)
        return "not estimated (the corpus was not read)"
    what = "a pack" if cfg.packing else "a trial"
    return f"up to about {_gib(need)} for {what} (" + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"


def notes(cfg: SweepConfig) -> list[str]:
    """Advice on a valid sweep that will likely not do what its author wants (shown, not enforced)."""
    out = []
    if isinstance(cfg.scheduler, PbtScheduler) and (cfg.max_concurrent_trials or cfg.num_trials) < cfg.num_trials:
        out.append(f"PBT compares the trials that run at the same time, but at most {cfg.max_concurrent_trials} of "
                   f"the {cfg.num_trials} do; set max_concurrent_trials: {cfg.num_trials} (with resources.cpu "
                   "below 1 to share cores) so the whole population trains together")
    return out


def _scheduler_text(s: Scheduler) -> str:
    if isinstance(s, AshaScheduler):
        return (f"ASHA: grace_period {s.grace_period}, reduction_factor {s.reduction_factor:g}, "
                f"max_t {s.max_t} (iterations)")
    if isinstance(s, PbtScheduler):
        mutated = ", ".join(f"{k} {d.describe()}" for k, d in s.mutations.items())
        return (f"PBT: every {s.perturbation_interval} iterations the bottom {s.quantile_fraction:g} copy the "
                f"top (resample_probability {s.resample_probability:g}); mutates {mutated}")
    return "FIFO: every trial runs all its iterations"


def _search_text(cfg: SweepConfig) -> str:
    if isinstance(cfg.search_alg, OptunaSearch):
        seed = cfg.seed if cfg.search_alg.seed is None else cfg.search_alg.seed
        return (f"Optuna TPE (seed {seed}): the first {cfg.search_alg.startup_trials} trials drawn at random, "
                "then each proposed from the results so far")
    return "random: every grid point num_samples times, other searched values drawn at random"
