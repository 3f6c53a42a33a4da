"""The Ray Tune trainable: restore, loop over the engine, report. The only module importing Ray and rnncore.

Each report carries the metrics of one evaluation, the newest sample text (if any) and a checkpoint, so
ASHA can stop the trial and a restarted worker continues bit for bit from the newest report.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from typing import Any

import ray
from ray import tune

from rnncore import Corpus, TrainConfig, Trainer, train_loop
from rnncore import checkpoint as ckpt

CHECKPOINT_FILE = "checkpoint.npz"


def trial_index(trial_id: str) -> int:
    """Tune names trials <experiment-hash>_<00000>; the suffix counts trials in generation order."""
    return int(trial_id.rsplit("_", 1)[-1])


def trial_seed(sweep_seed: int, index: int) -> int:
    """A per-trial engine seed that depends only on the sweep seed and the trial's position."""
    digest = hashlib.sha256(f"rnnsweep:{sweep_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def train_config(base: dict[str, Any], config: dict[str, Any], seed: int, *, derive_seed: bool) -> TrainConfig:
    """The engine config of one trial: fixed values, then its searched values, then (unless the sweep file
    sets `train.seed` itself) the seed derived for it."""
    values = {**base, **config}
    if derive_seed:
        values["seed"] = seed
    return TrainConfig.from_dict(values)


def train_trial(config: dict[str, Any], *, corpus: Corpus, base: dict[str, Any], sweep_seed: int,
                derive_seed: bool) -> None:
    """One trial. `corpus` arrives once through Ray's object store; `base` holds the fixed options."""
    ctx = tune.get_context()
    index = trial_index(ctx.get_trial_id())
    seed = trial_seed(sweep_seed, index)
    cfg = train_config(base, config, seed, derive_seed=derive_seed)
    state = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = ckpt.load(os.path.join(d, CHECKPOINT_FILE)).state
    trainer = Trainer(cfg, corpus, state)
    node = ray.get_runtime_context().get_node_id()
    for pr in train_loop(trainer):
        val = pr.val_loss
        if val is None and not pr.diverged:
            val = trainer.evaluate()  # a sample-only boundary: Tune wants the metric in every report
        metrics = {
            "iteration": pr.iteration,
            "train_loss": _finite(pr.train_loss),
            "val_loss": _finite(val),
            "val_bpc": _finite(val / math.log(2)) if val is not None else math.inf,
            "chars_per_sec": pr.chars_per_sec,
            "elapsed_s": pr.elapsed_s,
            "diverged": pr.diverged,
            "sample": pr.sample or "",
            "node": node,
            "trial_index": index,
            "trial_seed": cfg.seed,
            "target_iterations": cfg.iterations,
        }
        with tempfile.TemporaryDirectory() as d:
            ckpt.save(os.path.join(d, CHECKPOINT_FILE), cfg, corpus.vocab, trainer.state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _finite(x: float | None) -> float:
    """Tune's schedulers compare metrics: a diverged value reports as +inf (the worst, in mode min)."""
    return math.inf if x is None or not math.isfinite(x) else float(x)
