"""Optimizers and learning-rate schedules, in place on one flat vector of parameters.

Every update first clips the gradient element-wise to [-clip, clip] (the seed's guard against exploding
gradients), then, with lr_t the scheduled rate and t the update's number counting from 1:
    adagrad (the seed's):   m += g²                                 p -= lr_t g / sqrt(m + eps)
    adam (Kingma & Ba):     m1 = β1 m1 + (1-β1) g,  m = β2 m + (1-β2) g²,  β = (0.9, 0.999)
                            p -= lr_t (m1 / (1-β1^t)) / (sqrt(m / (1-β2^t)) + 1e-8)
    rmsprop (char-rnn's):   m = 0.95 m + 0.05 g²                    p -= lr_t g / (sqrt(m) + 1e-8)
m is each optimizer's memory of squared gradients (TrainState.mem); Adam's first moment is TrainState.mom.
The gradient is spent by the update: it is used as scratch, so nothing is allocated.
lr, clip and eps are scalars, or arrays shaped like the flat vector when packed trials differ; lr holds
-learning_rate (the update adds lr * step).
"""
from __future__ import annotations

import math

import numpy as np

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
RMS_DECAY, RMS_EPS = 0.95, 1e-8


def adagrad(flat, g, m, tmp, lr, clip, eps, xp=np) -> None:
    """In place, all parameters at once: clip g, m += g*g, flat += -lr * g / sqrt(m + eps) (the seed's order)."""
    g.clip(-clip, clip, out=g)  # clip to mitigate exploding gradients (the method skips np.clip's wrapper)
    xp.multiply(g, g, out=tmp)
    m += tmp  # mem += dparam * dparam
    xp.add(m, eps, out=tmp)
    xp.sqrt(tmp, out=tmp)
    g *= lr  # lr holds -learning_rate; the gradient is spent, so it carries the step
    g /= tmp
    flat += g


def adam(flat, g, m1, m, tmp, lr, clip, t: int, xp=np) -> None:
    g.clip(-clip, clip, out=g)
    m1 *= BETA1
    xp.multiply(g, 1 - BETA1, out=tmp)
    m1 += tmp
    m *= BETA2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - BETA2
    m += tmp
    xp.sqrt(m, out=tmp)  # sqrt(m / (1 - β2^t)) + eps
    tmp *= 1 / math.sqrt(1 - BETA2 ** t)
    tmp += ADAM_EPS
    xp.divide(m1, tmp, out=g)
    g *= lr
    g *= 1 / (1 - BETA1 ** t)
    flat += g


def rmsprop(flat, g, m, tmp, lr, clip, xp=np) -> None:
    g.clip(-clip, clip, out=g)
    m *= RMS_DECAY
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - RMS_DECAY
    m += tmp
    xp.sqrt(m, out=tmp)
    tmp += RMS_EPS
    g *= lr
    g /= tmp
    flat += g


def lr_factor(schedule: str, warmup: int, iterations: int, it: int) -> float:
    """learning_rate's multiplier for the update made at iteration `it` (0-based): a linear warm-up over the
    first `warmup` updates, then 1 (constant) or a cosine from 1 down to 1/10 at `iterations`."""
    if it < warmup:
        return (it + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (it - warmup) / max(1, iterations - warmup)))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def learning_rate_at(cfg, iteration: int) -> float:
    """The learning rate of the update made at `iteration` (0-based) under cfg's schedule."""
    return cfg.learning_rate * lr_factor(cfg.lr_schedule, cfg.warmup, cfg.iterations, iteration)
