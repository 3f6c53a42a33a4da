"""TrainState, Adagrad in place, one training step, and a loop that reports every eval_every iterations.

With batch_size B the training split is cut into B equal streams; all streams read at the same data
position p and wrap together. B = 1 is the seed's schedule exactly: p advances by seq_length, and the
hidden state and p reset when p + seq_length + 1 reaches the end of the data (and at iteration 0).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .config import TrainConfig
from .data import Corpus, check_fits, stream_length, window_index
from .model import Params, Workspace, evaluate, init_params, loss_and_grads, sample, advance

LN2 = math.log(2.0)
# A loss above this many nats/char means the model has blown up: guessing uniformly costs ln V (about 4 for
# English, 8 for Chinese), and the stable softmax keeps a blown-up model's loss finite, so NaN alone is too late.
DIVERGED_LOSS = 100.0


@dataclass
class TrainState:
    params: Params
    mem: Params  # Adagrad memories (sum of squared gradients), same shapes as params
    h: np.ndarray  # (B, H) hidden state carried from window to window
    p: int  # data position inside each stream
    iteration: int  # updates made so far
    smooth_loss: float  # nats/char, the seed's 0.999/0.001 running average
    rng: np.random.Generator  # the run's only source of randomness for training


def init_state(cfg: TrainConfig, vocab_size: int) -> TrainState:
    rng = np.random.default_rng(cfg.seed)
    params = init_params(cfg.hidden_size, vocab_size, rng, cfg.dtype, cfg.init_scale)
    return TrainState(params=params, mem=params.zeros_like(),
                      h=np.zeros((cfg.batch_size, cfg.hidden_size), cfg.dtype),
                      p=0, iteration=0, smooth_loss=math.log(vocab_size), rng=rng)


class Trainer:
    """Owns a config, a corpus, a state and the buffers; `step()` makes one Adagrad update."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus, state: TrainState | None = None):
        check_fits(corpus, cfg.seq_length, cfg.batch_size)
        self.cfg, self.corpus = cfg, corpus
        self.state = state or init_state(cfg, corpus.vocab.size)
        V, H = corpus.vocab.size, cfg.hidden_size
        if self.state.params.vocab_size != V or self.state.params.hidden_size != H:
            raise ValueError(f"state has H={self.state.params.hidden_size}, V={self.state.params.vocab_size} "
                             f"but the config and corpus say H={H}, V={V}")
        T, B = cfg.seq_length, cfg.batch_size
        self.ws = Workspace(T, B, H, V, cfg.dtype)
        self.L = stream_length(len(corpus.train), B)
        self.index = window_index(len(corpus.train), T, B)  # (T+1, B)
        self.xy = np.zeros((T + 1, B), corpus.train.dtype)
        self.grad_scale = 1.0 / B
        self.lr = np.dtype(cfg.dtype).type(cfg.learning_rate)
        self.tmp = np.zeros_like(self.state.params.flat)  # Adagrad scratch, so the update allocates nothing
        self.diverged = False

    def step(self) -> float:
        """One iteration; returns its loss in nats/char (the seed's loss / seq_length)."""
        cfg, s, ws = self.cfg, self.state, self.ws
        T, B = cfg.seq_length, cfg.batch_size
        if s.p + T + 1 >= self.L or s.iteration == 0:
            s.h.fill(0)  # wrap: start every stream over from a zero state
            s.p = 0
        np.take(self.corpus.train, self.index + s.p, out=self.xy)
        loss_sum = loss_and_grads(s.params, self.xy[:-1], self.xy[1:], s.h, ws, self.grad_scale)
        s.h[...] = ws.hs[-1]
        loss = loss_sum / (T * B)
        g, m, tmp = ws.grads.flat, s.mem.flat, self.tmp  # all five arrays at once
        np.clip(g, -cfg.clip, cfg.clip, out=g)  # clip to mitigate exploding gradients
        np.multiply(g, g, out=tmp)
        m += tmp  # mem += dparam * dparam
        np.add(m, cfg.adagrad_eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        g *= -self.lr  # the gradient is spent: reuse it for the step, in the seed's order
        g /= tmp
        s.params.flat += g  # param += -learning_rate * dparam / sqrt(mem + eps)
        s.p += T
        s.iteration += 1
        s.smooth_loss = s.smooth_loss * 0.999 + loss * 0.001
        if not loss < DIVERGED_LOSS:  # also true for NaN
            self.diverged = True
        return loss

    def run(self, n: int) -> np.ndarray:
        """Up to n iterations; stops at the first non-finite loss. Returns the per-iteration losses."""
        losses = np.empty(n)
        for i in range(n):
            losses[i] = self.step()
            if self.diverged:
                return losses[: i + 1]
        return losses

    def evaluate(self) -> float:
        """Validation loss in nats/char (NaN when there is no validation split)."""
        if len(self.corpus.val) < 2:
            return float("nan")
        return evaluate(self.state.params, self.corpus.val, self.cfg.eval_streams)

    def sample(self, length: int | None = None, temperature: float | None = None,
               prime: str | None = None, seed: int | None = None) -> str:
        """Text from the current weights. Without a prime it continues stream 0 from where training is,
        like the seed; its own Generator (from seed, else cfg.seed and the iteration) leaves training alone."""
        cfg, s, vocab = self.cfg, self.state, self.corpus.vocab
        rng = np.random.default_rng([cfg.seed, s.iteration] if seed is None else seed)
        if prime:
            ids = vocab.encode(prime)
            h = advance(s.params, None, ids[:-1])
            out = sample(s.params, h, int(ids[-1]), length or cfg.sample_length, rng, temperature or cfg.temperature)
            return prime + vocab.decode(out)
        seed_ix = int(self.corpus.train[min(s.p, self.L - 1)])
        out = sample(s.params, s.h[0], seed_ix, length or cfg.sample_length, rng, temperature or cfg.temperature)
        return vocab.decode(out)


@dataclass
class Progress:
    iteration: int
    train_loss: float  # smoothed, nats/char
    last_loss: float  # loss of the latest iteration, nats/char
    val_loss: float | None  # nats/char; None between evaluations
    val_bpc: float | None  # bits/char
    chars_per_sec: float  # training characters per second since the previous report
    elapsed_s: float  # training + evaluation time of this loop
    losses: np.ndarray  # per-iteration losses since the previous report
    sample: str | None  # text, at every sample_every iterations and at the end
    diverged: bool
    done: bool


def train_loop(trainer: Trainer) -> Iterator[Progress]:
    """Train to cfg.iterations, yielding at every multiple of eval_every or sample_every and at the end.

    Boundaries depend only on the iteration count, so a run resumed from any report lands on the same ones.
    """
    cfg, s = trainer.cfg, trainer.state
    chars_per_iter = cfg.seq_length * cfg.batch_size
    t_start = time.perf_counter()
    while s.iteration < cfg.iterations and not trainer.diverged:
        it = s.iteration
        stops = [cfg.iterations, (it // cfg.eval_every + 1) * cfg.eval_every]
        if cfg.sample_every:
            stops.append((it // cfg.sample_every + 1) * cfg.sample_every)
        t0 = time.perf_counter()
        losses = trainer.run(min(stops) - it)
        dt = time.perf_counter() - t0
        done = s.iteration >= cfg.iterations or trainer.diverged
        val = None
        if (s.iteration % cfg.eval_every == 0 or done) and not trainer.diverged:
            val = trainer.evaluate()
        want_sample = done or (cfg.sample_every and s.iteration % cfg.sample_every == 0)
        text = trainer.sample() if want_sample and not trainer.diverged else None
        yield Progress(iteration=s.iteration, train_loss=s.smooth_loss, last_loss=float(losses[-1]),
                       val_loss=val, val_bpc=None if val is None else val / LN2,
                       chars_per_sec=len(losses) * chars_per_iter / max(dt, 1e-9),
                       elapsed_s=time.perf_counter() - t_start, losses=losses, sample=text,
                       diverged=trainer.diverged, done=done)
