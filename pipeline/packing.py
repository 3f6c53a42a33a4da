"""Packed trials: the sweep's trials drawn up front and grouped into packs that train as one computation.

Trials can share a pack when every engine option that fixes an array shape or the loop's schedule agrees
(the options rnncore.config declares of kind "shape", SHAPE_KEYS); the others are the scalars a packed member
keeps for itself.
"""
from __future__ import annotations

from typing import Any

from rnncore.config import SHAPE_KEYS

from .config import SweepConfig


def expand_trials(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The searched values of every trial, in order: Ray Tune's own variant generator (grid x random,
    repeated num_samples times), seeded by the sweep seed, so the same file gives the same trials."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    space = {name: d.to_tune() for name, d in cfg.searched.items()}
    rng = np.random.default_rng(cfg.seed)
    trials = []
    for _ in range(cfg.num_samples):
        for _, spec in generate_variants(space, random_state=rng):
            trials.append(dict(spec))
    return trials


def make_packs(trials: list[dict[str, Any]], base: dict[str, Any], max_trials: int) -> list[list[int]]:
    """Indices of trials grouped by their shape options, each group cut into packs of at most max_trials."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        values = {**base, **t}
        groups.setdefault(tuple(values[k] for k in SHAPE_KEYS), []).append(i)
    packs = []
    for members in groups.values():
        packs.extend(members[j: j + max_trials] for j in range(0, len(members), max_trials))
    return sorted(packs)
