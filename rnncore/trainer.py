"""TrainState, one training step for one trial or K packed trials, and a loop that reports every eval_every.

With batch_size B the training split is cut into B equal streams; all streams read at the same data
position p and wrap together. B = 1 is the seed's schedule exactly: p advances by seq_length, and the
hidden state and p reset when p + seq_length + 1 reaches the end of the data (and at iteration 0).

A step: the window at p, dropout masks from the run's Generator (when dropout > 0), the model's forward and
backward (rnncore.model), then the optimizer (rnncore.optim) at the scheduled learning rate. Packed trials
(PackedTrainer) take the same step with a leading trial axis on every array.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import optim
from .cells import CELLS
from .config import SHAPE_KEYS, TrainConfig
from .data import Corpus, Vocab, check_fits, stream_length
from .model import Params, Workspace, advance, evaluate, init_params, loss_and_grads, sample, to_numpy

LN2 = math.log(2.0)
# A loss above this many nats/char means the model has blown up: guessing uniformly costs ln V (about 4 for
# English, 8 for Chinese), and the stable softmax keeps a blown-up model's loss finite, so NaN alone is too late.
DIVERGED_LOSS = 100.0


@dataclass
class TrainState:
    params: Params
    mem: Params  # the optimizer's memory of squared gradients (Adagrad's sum, Adam's and RMSprop's average)
    h: np.ndarray  # (B, S*H) carried state: every layer's h (and an LSTM's c), from window to window
    p: int  # data position inside each stream
    iteration: int  # updates made so far (the schedule's position and Adam's step count)
    smooth_loss: float  # nats/char, the seed's 0.999/0.001 running average
    rng: np.random.Generator  # the run's only source of randomness for training: weights, then dropout masks
    mom: Params | None = None  # Adam's first moment; None for the other optimizers


def init_state(cfg: TrainConfig, vocab_size: int) -> TrainState:
    rng = np.random.default_rng(cfg.seed)
    params = init_params(cfg.hidden_size, vocab_size, rng, cfg.dtype, cfg.init_scale, cfg.cell, cfg.num_layers)
    return TrainState(params=params, mem=params.zeros_like(), h=np.zeros((cfg.batch_size, cfg.state_size), cfg.dtype),
                      p=0, iteration=0, smooth_loss=math.log(vocab_size), rng=rng,
                      mom=params.zeros_like() if cfg.optimizer == "adam" else None)


def memory_bytes(cfg: TrainConfig, vocab_size: int, members: int = 1) -> int:
    """About the most memory a Trainer of `cfg` (or a PackedTrainer of `members` such trials) holds, in bytes,
    counted from the arrays it allocates; no allocation is made. Per member, in units of the dtype:

        P = the parameter count (Params.size)
        state:      weights, optimizer memory (Adam: and its moment), the update's scratch        3 P (Adam 4 P)
        a window:   per layer 4 T B H (rnn) or (2G + 5) T B H + G H H (gated: gates, Whh^T per block),
                    the first layer's G V H table (gated), the output's 2 T B V, its own gradients P;
                    training's window also L T B H of the backward pass's temporaries
        evaluation: a window of (Tc, eval_streams), Tc as rnncore.model.evaluate chunks the split, and its
                    logits 3 Tc S V
        dropout:    masks and masked outputs, 2 L T B H
        a report:   a host copy of the state for the checkpoint, P (packed trials)

    Against the peak resident memory a process gains training and evaluating (Python and numpy not counted):
    0.97-1.27 times it for the rnn, LSTM and GRU models of tests/test_engine_io.py (110 MiB to 1 GiB), 0.89-1.18
    for models up to 6 GiB."""
    H, L, T, B, V = cfg.hidden_size, cfg.num_layers, cfg.seq_length, cfg.batch_size, vocab_size
    G = CELLS[cfg.cell].G
    P = Params.size(H, V, None, cfg.cell, L)
    gated = G > 1

    def window(T: int, B: int) -> int:
        per_layer = ((2 * G + 5) * T * B * H + G * H * H) if gated else 4 * T * B * H
        return L * per_layer + (G * V * H if gated else 0) + 2 * T * B * V + (V * G * H if gated else 0) + P

    S = cfg.eval_streams
    Tc = max(1, min(256, (1 << 22) // max(1, S * V * members)))
    state = (4 if cfg.optimizer == "adam" else 3) * P
    training = window(T, B) + L * T * B * H + (2 * L * T * B * H if cfg.dropout > 0 else 0)
    evaluation = window(Tc, S) + 3 * Tc * S * V
    units = state + training + evaluation + (P if members > 1 else 0)
    return members * units * np.dtype(cfg.dtype).itemsize


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


def _on(P: Params | None, xp, to) -> Params | None:
    return None if P is None else P.like(to(P.flat))


def to_device(state: TrainState, xp) -> TrainState:
    if xp is np:
        return state
    return TrainState(params=_on(state.params, xp, xp.asarray), mem=_on(state.mem, xp, xp.asarray),
                      h=xp.asarray(state.h), p=state.p, iteration=state.iteration, smooth_loss=state.smooth_loss,
                      rng=state.rng, mom=_on(state.mom, xp, xp.asarray))


def host_state(state: TrainState) -> TrainState:
    """A numpy view (CPU) or copy (GPU) of a state, for checkpoints and sampling."""
    return TrainState(params=_on(state.params, np, to_numpy), mem=_on(state.mem, np, to_numpy), h=to_numpy(state.h),
                      p=state.p, iteration=state.iteration, smooth_loss=state.smooth_loss, rng=state.rng,
                      mom=_on(state.mom, np, to_numpy))


def check_state(cfg: TrainConfig, vocab_size: int, state: TrainState) -> None:
    """A state that does not fit the config is a clear error (not a shape traceback)."""
    P = state.params
    have = dict(cell=P.cell, num_layers=P.num_layers, hidden_size=P.hidden_size, vocab=P.vocab_size)
    want = dict(cell=cfg.cell, num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, vocab=vocab_size)
    if have != want:
        diff = ", ".join(f"{k}={have[k]} but the config says {k}={want[k]}" for k in have if have[k] != want[k])
        raise ValueError(f"the state's model does not fit: {diff}; train with the checkpoint's own options, "
                         "or start fresh")
    if state.h.shape[-1] != cfg.state_size or state.h.shape[-2] != cfg.batch_size:
        raise ValueError(f"the state's hidden state has shape {state.h.shape}, but batch_size={cfg.batch_size} "
                         f"needs ({cfg.batch_size}, {cfg.state_size}); resume with the batch size it was saved with")
    if (state.mom is None) != (cfg.optimizer != "adam"):
        raise ValueError(f"the state's optimizer memory does not fit optimizer={cfg.optimizer}; resume with the "
                         "optimizer it was saved with")


def unprimed_start(h: np.ndarray | None, vocab: Vocab, rng: np.random.Generator) -> tuple[np.ndarray | None, int]:
    """Where a sample without a prime starts: stream 0's carried state h[0] (h: the (B, S*H) state of a trainer
    or a checkpoint; None, a file of weights only: a zero state) and a newline (a random character if the text
    has none). Training-time samples, rnncore.sample, pipeline.sample and the served model all start here.

    Why not a zero state: training starts a window from one only at iteration 0 and when the streams wrap (every
    stream_length / seq_length iterations: 2,509 for Tiny Shakespeare at B = 16, T = 25), so a model trained for
    fewer iterations never learned what follows it. Measured at B = 16, 400 iterations: validation loss 2.51
    nats/char from the carried state, 3.27 over the first 5 characters after a zero state; and fed a newline there,
    every seed sampled rare capitals and symbols ("$3$Q3QZ&Y$EKNZS33XX..."). The seed samples from hprev, its one
    stream's carried state, too.
    """
    seed_ix = vocab.stoi["\n"] if "\n" in vocab.stoi else int(rng.integers(vocab.size))
    return (None if h is None else h[0]), seed_ix


class _Stepper:
    """What one trial and K packed trials share: the window schedule, the buffers, dropout and the update.
    Subclasses keep `state` (a TrainState; packed: stacked arrays, (K,) smooth losses, one rng per member)."""

    cfg: TrainConfig
    state: TrainState

    def _setup(self, cfg: TrainConfig, corpus: Corpus, K: int | None) -> None:
        check_fits(corpus, cfg.seq_length, cfg.batch_size)
        self.corpus, self.K = corpus, K
        self.xp = xp = array_module_for(cfg.device)
        T, B, H, V = cfg.seq_length, cfg.batch_size, cfg.hidden_size, corpus.vocab.size
        self.ws = Workspace(T, B, H, V, cfg.dtype, K, xp, cfg.cell, cfg.num_layers)
        self.L = stream_length(len(corpus.train), B)
        self.train_ids = xp.asarray(corpus.train)
        self.streams = self.train_ids[: B * self.L].reshape(B, self.L).T  # (L, B) view: stream b is column b
        self.xy = self.streams[: T + 1]  # (T+1, B) window at p: inputs [:-1], targets [1:]; a view, set by step
        self.grad_scale = 1.0 / B
        self.flat_rate = cfg.lr_schedule == "constant" and cfg.warmup == 0  # the seed's: no schedule to compute

    def step(self):
        """One iteration; returns its loss in nats/char (the seed's loss / seq_length), (K,) when packed."""
        cfg, s, ws = self.cfg, self.state, self.ws
        T, B = cfg.seq_length, cfg.batch_size
        if s.p + T + 1 >= self.L or s.iteration == 0:
            s.h.fill(0)  # wrap: start every stream over from a zero state
            s.p = 0
        self.xy = xy = self.streams[s.p: s.p + T + 1]
        masks = self._masks() if self.dropout else None
        loss_sum = loss_and_grads(s.params, xy[:-1], xy[1:], s.h, ws, self.grad_scale, masks)
        ws.final_into(s.h)
        loss = (loss_sum if self.K is None else to_numpy(loss_sum)) / (T * B)
        self._update(s)
        s.p += T
        s.iteration += 1
        return self._after(loss)

    def _update(self, s: TrainState) -> None:
        cfg, g, xp = self.cfg, self.ws.grads.flat, self.xp
        f = 1.0 if self.flat_rate else optim.lr_factor(cfg.lr_schedule, cfg.warmup, cfg.iterations, s.iteration)
        lr = self.lr if f == 1.0 else self.lr * f
        if cfg.optimizer == "adagrad":
            optim.adagrad(s.params.flat, g, s.mem.flat, self.tmp, lr, self.clip, self.eps, xp)
        elif cfg.optimizer == "adam":
            optim.adam(s.params.flat, g, s.mom.flat, s.mem.flat, self.tmp, lr, self.clip, s.iteration + 1, xp)
        else:
            optim.rmsprop(s.params.flat, g, s.mem.flat, self.tmp, lr, self.clip, xp)

    def _draw_masks(self, rngs, rates, shape, dtype):
        """Dropout masks, (L, T, [K,] B, H): rng.random(...) >= rate, scaled by 1 / (1 - rate); None if off."""
        if not any(r > 0 for r in rates):
            return None
        if self.K is None:
            keep = rngs[0].random(shape) >= rates[0]
            return self.xp.asarray((keep / (1.0 - rates[0])).astype(dtype))
        m = np.ones(shape[:2] + (self.K,) + shape[2:], dtype)
        for k, (rng, r) in enumerate(zip(rngs, rates)):
            if r > 0 and rng is not None:
                m[:, :, k] = (rng.random(shape) >= r) / (1.0 - r)
        return self.xp.asarray(m)


class Trainer(_Stepper):
    """Owns a config, a corpus, a state and the buffers; `step()` makes one update."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus, state: TrainState | None = None):
        self.cfg = cfg
        self._setup(cfg, corpus, None)
        state = state or init_state(cfg, corpus.vocab.size)
        check_state(cfg, corpus.vocab.size, state)
        self.state = to_device(state, self.xp)
        dtype = np.dtype(cfg.dtype).type
        self.lr, self.clip, self.eps = dtype(-cfg.learning_rate), cfg.clip, cfg.adagrad_eps
        self.tmp = self.state.params.zeros_like().flat  # optimizer scratch, so the update allocates nothing
        self.dropout = cfg.dropout > 0
        self.diverged = False

    def _masks(self):
        cfg = self.cfg
        if cfg.dropout == 0:
            return None
        shape = (cfg.num_layers, cfg.seq_length, cfg.batch_size, cfg.hidden_size)
        return self._draw_masks([self.state.rng], [cfg.dropout], shape, cfg.dtype)

    def _after(self, loss: float) -> float:
        s = self.state
        s.smooth_loss = s.smooth_loss * 0.999 + loss * 0.001
        if not loss < DIVERGED_LOSS:  # also true for NaN
            self.diverged = True
        return loss

    @property
    def stopped(self) -> bool:
        return self.diverged

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
        """Text from the current weights. Without a prime it starts from stream 0's carried state, like the seed
        (unprimed_start, shared with rnncore.sample); its own Generator (from seed, else cfg.seed and the
        iteration) leaves training alone."""
        cfg, s, vocab = self.cfg, host_state(self.state), self.corpus.vocab
        rng = np.random.default_rng([cfg.seed, s.iteration] if seed is None else seed)
        if prime:
            ids = vocab.encode(prime)
            h = advance(s.params, None, ids[:-1])
            out = sample(s.params, h, int(ids[-1]), length or cfg.sample_length, rng, temperature or cfg.temperature)
            return prime + vocab.decode(out)
        h, seed_ix = unprimed_start(s.h, vocab, rng)
        return vocab.decode(sample(s.params, h, seed_ix, length or cfg.sample_length, rng,
                                   temperature or cfg.temperature))


class PackedTrainer(_Stepper):
    """K trials whose arrays have the same shapes, trained as one batched computation.

    Each member keeps its own weights, optimizer memory, hidden state, learning rate, clip, eps, dropout and
    seed; the options of kind SHAPE (rnncore.config) are shared, and so is the data position. A member that
    diverges or is stopped is frozen: its final state is kept, its slot is zeroed with learning rate 0, and
    the others never notice.
    """

    def __init__(self, cfgs: list[TrainConfig], corpus: Corpus, states: list[TrainState] | None = None):
        c0 = cfgs[0]
        for c in cfgs[1:]:
            diff = [k for k in SHAPE_KEYS if getattr(c, k) != getattr(c0, k)]
            if diff:
                raise ValueError(f"packed trials must share {', '.join(SHAPE_KEYS)}; these differ: {', '.join(diff)}")
        self.cfg, self.cfgs = c0, cfgs
        self._setup(c0, corpus, len(cfgs))
        states = states or [init_state(c, corpus.vocab.size) for c in cfgs]
        for c, st in zip(cfgs, states):
            check_state(c, corpus.vocab.size, st)
        if len({(st.p, st.iteration) for st in states}) != 1:
            raise ValueError("packed trials must be at the same iteration and data position")
        xp, K = self.xp, len(cfgs)
        self.state = TrainState(
            params=Params.stack([st.params for st in states], xp), mem=Params.stack([st.mem for st in states], xp),
            h=xp.asarray(np.stack([to_numpy(st.h) for st in states])),  # (K, B, S*H)
            p=states[0].p, iteration=states[0].iteration,
            smooth_loss=np.array([st.smooth_loss for st in states], np.float64),  # (K,)
            rng=None, mom=Params.stack([st.mom for st in states], xp) if c0.optimizer == "adam" else None)
        self.rngs = [st.rng for st in states]
        self.lr = self._per_member([-c.learning_rate for c in cfgs])
        self.clip = self._per_member([c.clip for c in cfgs])
        self.eps = self._per_member([c.adagrad_eps for c in cfgs])
        self.tmp = self.state.params.zeros_like().flat
        self.dropout = any(c.dropout > 0 for c in cfgs)
        self.active = np.ones(K, bool)
        self.diverged = np.zeros(K, bool)
        self.frozen: dict[int, TrainState] = {}  # final states of members no longer training

    # the packed state under its own names
    params = property(lambda self: self.state.params)
    mem = property(lambda self: self.state.mem)
    h = property(lambda self: self.state.h)
    p = property(lambda self: self.state.p)
    iteration = property(lambda self: self.state.iteration)
    smooth_loss = property(lambda self: self.state.smooth_loss)

    def _per_member(self, values: list[float]):
        """A scalar when all members agree, else an array shaped like the flat parameters."""
        dtype = np.dtype(self.cfg.dtype).type
        if len(set(values)) == 1:
            return dtype(values[0])
        P = self.state.params.zeros_like()
        v = self.xp.asarray(np.array(values, dtype=self.cfg.dtype))
        for a in P.arrays():
            a[...] = v.reshape(self.K, 1, 1)
        return P.flat

    def _masks(self):
        c = self.cfg
        shape = (c.num_layers, c.seq_length, c.batch_size, c.hidden_size)
        rngs = [rng if active else None for rng, active in zip(self.rngs, self.active)]
        return self._draw_masks(rngs, [m.dropout for m in self.cfgs], shape, c.dtype)

    def _after(self, loss: np.ndarray) -> np.ndarray:
        s, was_active = self.state, self.active.copy()
        s.smooth_loss = np.where(self.active, s.smooth_loss * 0.999 + loss * 0.001, s.smooth_loss)
        for k in np.flatnonzero(self.active & ~(loss < DIVERGED_LOSS)):
            self.diverged[k] = True
            self.freeze(k)
        return np.where(was_active, loss, np.nan)

    @property
    def stopped(self) -> bool:
        return not self.active.any()

    def freeze(self, k: int) -> None:
        """Stop member k (diverged, or stopped early by a scheduler) without disturbing the others."""
        if not self.active[k]:
            return
        self.frozen[k] = self.member_state(k)
        self.active[k] = False
        if isinstance(self.lr, np.generic):  # from now on the members' learning rates differ
            self.lr = self._per_member([-c.learning_rate for c in self.cfgs])
        s = self.state
        for P, value in ((s.params, 0.0), (s.mem, 1.0), (s.mom, 0.0)):  # a clean, inert slot: no NaN/inf to carry
            if P is not None:
                for a in P.arrays():
                    a[k] = value
        for a in s.params.like(self.lr).arrays():
            a[k] = 0
        s.h[k] = 0

    def member_state(self, k: int) -> TrainState:
        """Member k's state as a single-trial numpy TrainState (its checkpoint)."""
        if k in self.frozen:
            return self.frozen[k]
        s = self.state
        return TrainState(params=s.params.member(k), mem=s.mem.member(k), h=to_numpy(s.h[k]).copy(),
                          p=s.p, iteration=s.iteration, smooth_loss=float(s.smooth_loss[k]), rng=self.rngs[k],
                          mom=None if s.mom is None else s.mom.member(k))

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
        val = evaluate(self.state.params, self.corpus.val, self.cfg.eval_streams)
        return np.where(self.active, val, np.nan)

    def member_sample(self, k: int) -> str:
        """Member k's training-time sample, as its own Trainer would write it."""
        return Trainer(self.cfgs[k].replace(device="cpu"), self.corpus, self.member_state(k)).sample()


@dataclass
class Progress:
    """One report. For packed trials the loss fields are (K,) arrays and `sample` a list of K texts (or None)."""
    iteration: int
    train_loss: float  # smoothed, nats/char
    last_loss: float  # loss of the latest iteration, nats/char
    val_loss: float | None  # nats/char; None between evaluations
    val_bpc: float | None  # bits/char
    chars_per_sec: float  # training characters per second since the previous report (per member when packed)
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


def train_loop(trainer: Trainer | PackedTrainer) -> Iterator[Progress]:
    """Train to cfg.iterations, yielding at every multiple of eval_every or sample_every and at the end.

    Boundaries depend only on the iteration count, so a run resumed from any report lands on the same ones.
    A packed trainer yields (K,) arrays (NaN for members that ended) and stops when every member has.
    """
    cfg, s = trainer.cfg, trainer.state
    chars_per_iter = cfg.seq_length * cfg.batch_size
    t_start = time.perf_counter()
    packed = isinstance(trainer, PackedTrainer)
    while s.iteration < cfg.iterations and not trainer.stopped:
        t0 = time.perf_counter()
        losses = trainer.run(next_boundary(cfg, s.iteration) - s.iteration)
        dt = time.perf_counter() - t0
        done = s.iteration >= cfg.iterations or trainer.stopped
        want_sample = done or (cfg.sample_every and s.iteration % cfg.sample_every == 0)
        if packed:
            val = trainer.evaluate() if (s.iteration % cfg.eval_every == 0 or done) else None
            text = [trainer.member_sample(k) if want_sample and trainer.active[k] else None
                    for k in range(trainer.K)]
            ran = (~np.isnan(losses)).sum(axis=0)
            yield Progress(iteration=s.iteration, train_loss=s.smooth_loss.copy(), last_loss=losses[-1],
                           val_loss=val, val_bpc=None if val is None else val / LN2,
                           chars_per_sec=ran * chars_per_iter / max(dt, 1e-9),
                           elapsed_s=time.perf_counter() - t_start, losses=losses, sample=text,
                           diverged=trainer.diverged.copy(), done=done)
            continue
        val = None
        if (s.iteration % cfg.eval_every == 0 or done) and not trainer.diverged:
            val = trainer.evaluate()
        text = trainer.sample() if want_sample and not trainer.diverged else None
        yield Progress(iteration=s.iteration, train_loss=s.smooth_loss, last_loss=float(losses[-1]),
                       val_loss=val, val_bpc=None if val is None else val / LN2,
                       chars_per_sec=len(losses) * chars_per_iter / max(dt, 1e-9),
                       elapsed_s=time.perf_counter() - t_start, losses=losses, sample=text,
                       diverged=trainer.diverged, done=done)
