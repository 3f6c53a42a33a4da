"""The Ray Tune search algorithm and trial scheduler a sweep file names (`search_alg:`, `scheduler:`).

    search_alg: {type: random}   grid points x num_samples, ranges drawn at random (Tune's BasicVariantGenerator)
    search_alg: {type: optuna}   Optuna's TPE proposes each trial from the results so far (OptunaSearch)
    scheduler:  {type: fifo}     every trial runs all its iterations
    scheduler:  {type: asha}     asynchronous successive halving stops the worst trials early
    scheduler:  {type: pbt}      Population Based Training: the worst trials continue from the best ones'
                                 checkpoints with mutated hyperparameters

Times are engine iterations (the `iteration` every report carries). Imports Ray: the driver imports this
module only once it starts a sweep.
"""
from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from rnncore.config import check_value, coerce

from . import raycompat
from .config import AshaScheduler, OptunaSearch, PbtScheduler, SweepConfig


def search_alg(cfg: SweepConfig):
    """The Tune search algorithm, holding `max_concurrent_trials` itself (Tune ignores its own
    max_concurrent_trials once a search algorithm is given)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if isinstance(cfg.search_alg, OptunaSearch):
        import optuna
        from ray.tune.search.optuna import OptunaSearch as TuneOptuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise; the progress line says it

        seed = cfg.seed if cfg.search_alg.seed is None else cfg.search_alg.seed
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.search_alg.startup_trials)
        searcher = TuneOptuna(metric=cfg.metric, mode=cfg.mode, sampler=sampler)
        # Tune asks a searcher for a trial only when one can start, so without a limit the free resources bound it
        if cfg.max_concurrent_trials:
            return ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent_trials)
        return searcher
    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials or 0)


def scheduler(cfg: SweepConfig):
    s = cfg.scheduler
    if isinstance(s, AshaScheduler):
        return ASHAScheduler(time_attr="iteration", max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if isinstance(s, PbtScheduler):
        return _FinalReportPBT(
            time_attr="iteration", perturbation_interval=s.perturbation_interval, burn_in_period=s.burn_in_period,
            hyperparam_mutations=mutations(cfg), quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability, custom_explore_fn=KeepValid(cfg), log_config=False)
    return FIFOScheduler()


class _FinalReportPBT(PopulationBasedTraining):
    """Tune's PBT with two changes. It leaves a trial's last report alone: cloned there, the trial would have
    nothing left to train and would end holding its source's results and checkpoint as its own. And a trial
    resumed by --resume (Tune does not save a scheduler's state) keeps its place in the perturbation schedule
    instead of being perturbed at its first report."""

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        done = int((trial.last_result or {}).get("iteration", 0))
        if done:
            raycompat.keep_pbt_schedule(self, trial, done)

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("iteration", 0) >= result.get("target_iterations", float("inf")):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def mutations(cfg: SweepConfig) -> dict[str, Any]:
    """PBT's hyperparam_mutations: Tune domains (a choice stays a list: PBT then steps to a neighbour)."""
    assert isinstance(cfg.scheduler, PbtScheduler)
    return {k: list(d.values()) if d.is_categorical else d.to_tune() for k, d in cfg.scheduler.mutations.items()}


class KeepValid:
    """PBT's custom_explore_fn. Tune scales a mutated number by 1.2 or 0.8 with no bound, and repeated copies
    compound it, so a dropout of 0.9 would become 1.08 and fail its trial. A perturbed value that breaks its
    option's rule goes to the nearest end of its mutation range (whose ends load_sweep checked against the rule)."""

    def __init__(self, cfg: SweepConfig) -> None:
        assert isinstance(cfg.scheduler, PbtScheduler)
        self.ranges = {k: d.extremes() for k, d in cfg.scheduler.mutations.items() if not d.is_categorical}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.ranges.items():
            try:
                check_value(name, config[name])
            except ValueError:
                config[name] = coerce(name, min(max(config[name], low), high))
        return config


def checkpoints_to_keep(cfg: SweepConfig) -> int | None:
    """Checkpoints kept per trial: 2, or all of them under PBT. PBT clones a top trial's checkpoint some time
    after choosing it, while that trial goes on saving; and PBT's save request registers a function trainable's
    newest checkpoint a second time, so pruning deletes that folder twice and Tune logs an error (Ray 2.60)."""
    return None if isinstance(cfg.scheduler, PbtScheduler) else 2
