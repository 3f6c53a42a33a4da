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
from .model import Params, Workspace, advance, evaluate, init_params, loss_and_grads, sample, to_numpy

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


def array_module_for(device: str):
    """numpy for "cpu"; CuPy for "gpu" (or "auto" when CuPy sees a GPU). A clear error when it can't."""
    if device == "cpu":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
        why = "CuPy sees no GPU"
    except Exception as e:  # ImportError, or CUDA errors without a driver
        why = f"CuPy is not usable ({type(e).__name__}: {e})"
    if device == "auto":
        return np
    raise ValueError(f"device=gpu needs CuPy and a CUDA GPU, but {why}; install the GPU extra "
                     "(pip install '.[gpu]') on a machine with a GPU, or set device: cpu")


def adagrad(flat, g, m, tmp, lr, clip, eps, xp=np) -> None:
    """In place, all parameters at once: clip g, m += g*g, flat += -lr * g / sqrt(m + eps) (the seed's order).
    lr, clip and eps are scalars, or arrays shaped like flat when packed trials differ. tmp: scratch like flat."""
    g.clip(-clip, clip, out=g)  # clip to mitigate exploding gradients (the method skips np.clip's wrapper)
    xp.multiply(g, g, out=tmp)
    m += tmp  # mem += dparam * dparam
    xp.add(m, eps, out=tmp)
    xp.sqrt(tmp, out=tmp)
    g *= lr  # lr holds -learning_rate; the gradient is spent, so it carries the step
    g /= tmp
    flat += g


def to_device(state: TrainState, xp) -> TrainState:
    if xp is np:
        return state
    P, M = state.params, state.mem
    return TrainState(params=Params(xp.asarray(P.flat), P.hidden_size, P.vocab_size),
                      mem=Params(xp.asarray(M.flat), M.hidden_size, M.vocab_size), h=xp.asarray(state.h),
                      p=state.p, iteration=state.iteration, smooth_loss=state.smooth_loss, rng=state.rng)


def host_state(state: TrainState) -> TrainState:
    """A numpy view (CPU) or copy (GPU) of a state, for checkpoints and sampling."""
    P, M = state.params, state.mem
    return TrainState(params=Params(to_numpy(P.flat), P.hidden_size, P.vocab_size),
                      mem=Params(to_numpy(M.flat), M.hidden_size, M.vocab_size), h=to_numpy(state.h),
                      p=state.p, iteration=state.iteration, smooth_loss=state.smooth_loss, rng=state.rng)


class Trainer:
    """Owns a config, a corpus, a state and the buffers; `step()` makes one Adagrad update."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus, state: TrainState | None = None):
        check_fits(corpus, cfg.seq_length, cfg.batch_size)
        self.cfg, self.corpus = cfg, corpus
        self.xp = xp = array_module_for(cfg.device)
        self.state = to_device(state or init_state(cfg, corpus.vocab.size), xp)
        V, H = corpus.vocab.size, cfg.hidden_size
        if self.state.params.vocab_size != V or self.state.params.hidden_size != H:
            raise ValueError(f"state has H={self.state.params.hidden_size}, V={self.state.params.vocab_size} "
                             f"but the config and corpus say H={H}, V={V}")
        T, B = cfg.seq_length, cfg.batch_size
        self.ws = Workspace(T, B, H, V, cfg.dtype, None, xp)
        self.L = stream_length(len(corpus.train), B)
        self.train_ids = xp.asarray(corpus.train)
        self.streams = self.train_ids[: B * self.L].reshape(B, self.L).T  # (L, B) view: stream b is column b
        self.xy = self.streams[: T + 1]  # (T+1, B) window at p: inputs [:-1], targets [1:]; a view, set by step
        self.grad_scale = 1.0 / B
        self.lr = np.dtype(cfg.dtype).type(-cfg.learning_rate)
        self.tmp = self.state.params.zeros_like().flat  # Adagrad scratch, so the update allocates nothing
        self.diverged = False

    def step(self) -> float:
        """One iteration; returns its loss in nats/char (the seed's loss / seq_length)."""
        cfg, s, ws = self.cfg, self.state, self.ws
        T, B = cfg.seq_length, cfg.batch_size
        if s.p + T + 1 >= self.L or s.iteration == 0:
            s.h.fill(0)  # wrap: start every stream over from a zero state
            s.p = 0
        self.xy = xy = self.streams[s.p: s.p + T + 1]
        loss_sum = loss_and_grads(s.params, xy[:-1], xy[1:], s.h, ws, self.grad_scale)
        s.h[...] = ws.hs[-1]
        loss = loss_sum / (T * B)
        adagrad(s.params.flat, ws.grads.flat, s.mem.flat, self.tmp, self.lr, cfg.clip, cfg.adagrad_eps, self.xp)
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
        return float(evaluate(self.state.params, self.corpus.val, self.cfg.eval_streams))

    def sample(self, length: int | None = None, temperature: float | None = None,
               prime: str | None = None, seed: int | None = None) -> str:
        """Text from the current weights. Without a prime it continues stream 0 from where training is,
        like the seed; its own Generator (from seed, else cfg.seed and the iteration) leaves training alone."""
        cfg, s, vocab = self.cfg, host_state(self.state), self.corpus.vocab
        rng = np.random.default_rng([cfg.seed, s.iteration] if seed is None else seed)
        if prime:
            ids = vocab.encode(prime)
            h = advance(s.params, None, ids[:-1])
            out = sample(s.params, h, int(ids[-1]), length or cfg.sample_length, rng, temperature or cfg.temperature)
            return prime + vocab.decode(out)
        seed_ix = int(self.corpus.train[min(s.p, self.L - 1)])
        out = sample(s.params, s.h[0], seed_ix, length or cfg.sample_length, rng, temperature or cfg.temperature)
        return vocab.decode(out)


PACK_KEYS = ("hidden_size", "seq_length", "batch_size", "dtype", "device")  # what packed trials must share


class PackedTrainer:
    """K trials whose arrays have the same shapes, trained as one batched computation.

    Each member keeps its own weights, Adagrad memory, hidden state, learning rate, clip, eps and seed;
    the data position is shared (same corpus, T and B). A member that diverges or is stopped is frozen:
    its final state is kept, its slot is zeroed with learning rate 0, and the others never notice.
    """

    def __init__(self, cfgs: list[TrainConfig], corpus: Corpus, states: list[TrainState] | None = None):
        c0 = cfgs[0]
        for c in cfgs[1:]:
            diff = [k for k in PACK_KEYS if getattr(c, k) != getattr(c0, k)]
            if diff:
                raise ValueError(f"packed trials must share {', '.join(PACK_KEYS)}; these differ: {', '.join(diff)}")
        check_fits(corpus, c0.seq_length, c0.batch_size)
        states = states or [init_state(c, corpus.vocab.size) for c in cfgs]
        if len({(st.p, st.iteration) for st in states}) != 1:
            raise ValueError("packed trials must be at the same iteration and data position")
        self.cfgs, self.corpus, self.K = cfgs, corpus, len(cfgs)
        self.xp = xp = array_module_for(c0.device)
        T, B, H, V, K = c0.seq_length, c0.batch_size, c0.hidden_size, corpus.vocab.size, len(cfgs)
        self.params = Params.stack([st.params for st in states], xp)
        self.mem = Params.stack([st.mem for st in states], xp)
        self.h = xp.asarray(np.stack([to_numpy(st.h) for st in states]))  # (K, B, H)
        self.p, self.iteration = states[0].p, states[0].iteration
        self.smooth_loss = np.array([st.smooth_loss for st in states], np.float64)  # (K,)
        self.rngs = [st.rng for st in states]
        self.ws = Workspace(T, B, H, V, c0.dtype, K, xp)
        self.L = stream_length(len(corpus.train), B)
        self.train_ids = xp.asarray(corpus.train)
        self.index = xp.asarray(window_index(len(corpus.train), T, B))
        self.xy = xp.zeros((T + 1, B), corpus.train.dtype)
        self.grad_scale = 1.0 / B
        self.lr = self._per_member([-c.learning_rate for c in cfgs])
        self.clip = self._per_member([c.clip for c in cfgs])
        self.eps = self._per_member([c.adagrad_eps for c in cfgs])
        self.tmp = self.params.zeros_like().flat
        self.active = np.ones(K, bool)
        self.diverged = np.zeros(K, bool)
        self.frozen: dict[int, TrainState] = {}  # final states of members no longer training

    def _per_member(self, values: list[float]):
        """A scalar when all members agree, else an array shaped like the flat parameters."""
        dtype = np.dtype(self.cfgs[0].dtype).type
        if len(set(values)) == 1:
            return dtype(values[0])
        P = Params.zeros(self.params.hidden_size, self.params.vocab_size, self.cfgs[0].dtype, self.K, self.xp)
        v = self.xp.asarray(np.array(values, dtype=self.cfgs[0].dtype))
        for a in P.arrays():
            a[...] = v.reshape(self.K, 1, 1)
        return P.flat

    def step(self) -> np.ndarray:
        """One iteration of every member; returns the (K,) losses in nats/char (NaN for frozen members)."""
        c0, ws, xp = self.cfgs[0], self.ws, self.xp
        T, B = c0.seq_length, c0.batch_size
        was_active = self.active.copy()
        if self.p + T + 1 >= self.L or self.iteration == 0:
            self.h.fill(0)
            self.p = 0
        xp.take(self.train_ids, self.index + self.p, out=self.xy)
        loss_sum = loss_and_grads(self.params, self.xy[:-1], self.xy[1:], self.h, ws, self.grad_scale)
        self.h[...] = ws.hs[-1]
        loss = to_numpy(loss_sum) / (T * B)  # (K,)
        adagrad(self.params.flat, ws.grads.flat, self.mem.flat, self.tmp, self.lr, self.clip, self.eps, xp)
        self.p += T
        self.iteration += 1
        self.smooth_loss = np.where(self.active, self.smooth_loss * 0.999 + loss * 0.001, self.smooth_loss)
        for k in np.flatnonzero(self.active & ~(loss < DIVERGED_LOSS)):
            self.diverged[k] = True
            self.freeze(k)
        return np.where(was_active, loss, np.nan)

    def freeze(self, k: int) -> None:
        """Stop member k (diverged, or stopped early by a scheduler) without disturbing the others."""
        if not self.active[k]:
            return
        self.frozen[k] = self.member_state(k)
        self.active[k] = False
        if isinstance(self.lr, np.generic):  # from now on the members' learning rates differ
            self.lr = self._per_member([-c.learning_rate for c in self.cfgs])
        for P, value in ((self.params, 0.0), (self.mem, 1.0)):  # a clean, inert slot: no NaN/inf to carry
            for a in P.arrays():
                a[k] = value
        for a in Params(self.lr, self.params.hidden_size, self.params.vocab_size, self.K).arrays():
            a[k] = 0
        self.h[k] = 0

    def member_state(self, k: int) -> TrainState:
        """Member k's state as a single-trial numpy TrainState (its checkpoint)."""
        if k in self.frozen:
            return self.frozen[k]
        return TrainState(params=self.params.member(k), mem=self.mem.member(k), h=to_numpy(self.h[k]).copy(),
                          p=self.p, iteration=self.iteration, smooth_loss=float(self.smooth_loss[k]),
                          rng=self.rngs[k])

    def run(self, n: int) -> np.ndarray:
        """n iterations (fewer if every member stops); returns the (n, K) losses."""
        out = np.full((n, self.K), np.nan)
        for i in range(n):
            if not self.active.any():
                return out[:i]
            out[i] = self.step()
        return out

    def evaluate(self) -> np.ndarray:
        """(K,) validation losses in nats/char (NaN for frozen members)."""
        if len(self.corpus.val) < 2:
            return np.full(self.K, np.nan)
        val = evaluate(self.params, self.corpus.val, self.cfgs[0].eval_streams)
        return np.where(self.active, val, np.nan)


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


def next_boundary(cfg: TrainConfig, iteration: int) -> int:
    """The next iteration at which a loop reports: a multiple of eval_every or sample_every, or the end."""
    stops = [cfg.iterations, (iteration // cfg.eval_every + 1) * cfg.eval_every]
    if cfg.sample_every:
        stops.append((iteration // cfg.sample_every + 1) * cfg.sample_every)
    return min(stops)


def train_loop(trainer: Trainer) -> Iterator[Progress]:
    """Train to cfg.iterations, yielding at every multiple of eval_every or sample_every and at the end.

    Boundaries depend only on the iteration count, so a run resumed from any report lands on the same ones.
    """
    cfg, s = trainer.cfg, trainer.state
    chars_per_iter = cfg.seq_length * cfg.batch_size
    t_start = time.perf_counter()
    while s.iteration < cfg.iterations and not trainer.diverged:
        t0 = time.perf_counter()
        losses = trainer.run(next_boundary(cfg, s.iteration) - s.iteration)
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
