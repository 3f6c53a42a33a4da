"""The seed's RNN: parameters, forward/backward over one window, evaluation, sampling.

    h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)      x_t one-hot, so Wxh x_t is a column gather
    y_t = Why h_t + by,  p_t = softmax(y_t),  loss = -sum_t log p_t[target_t]

Only the recurrence is sequential. The input layer is one gather for all steps, the output layer and its
gradients are one GEMM over all T*B positions, and every buffer is allocated once (Workspace).
Arrays keep the seed's shapes: Wxh (H,V), Whh (H,H), Why (V,H), bh (H,1), by (V,1). Hidden states run
as rows, h (B,H), so h @ Whh.T is the seed's Whh @ h for B columns at once.
"""
from __future__ import annotations

import numpy as np


def shapes(H: int, V: int) -> dict[str, tuple[int, int]]:
    return {"Wxh": (H, V), "Whh": (H, H), "Why": (V, H), "bh": (H, 1), "by": (V, 1)}


class Params:
    """The seed's five arrays as views into one flat vector, so clipping and Adagrad are single array ops."""

    NAMES = ("Wxh", "Whh", "Why", "bh", "by")

    def __init__(self, flat: np.ndarray, H: int, V: int):
        self.flat = flat  # (H*V + H*H + V*H + H + V,) every parameter, back to back
        self.hidden_size, self.vocab_size = H, V
        off = 0
        for name, shape in shapes(H, V).items():
            n = shape[0] * shape[1]
            setattr(self, name, flat[off: off + n].reshape(shape))
            off += n

    @classmethod
    def zeros(cls, H: int, V: int, dtype) -> "Params":
        return cls(np.zeros(H * V + H * H + V * H + H + V, dtype), H, V)

    @classmethod
    def from_arrays(cls, Wxh, Whh, Why, bh, by, dtype=None) -> "Params":
        H, V = Wxh.shape
        P = cls.zeros(H, V, dtype or Wxh.dtype)
        for dst, src in zip(P.arrays(), (Wxh, Whh, Why, bh, by)):
            dst[...] = src
        return P

    def arrays(self) -> list[np.ndarray]:
        return [self.Wxh, self.Whh, self.Why, self.bh, self.by]

    def zeros_like(self) -> "Params":
        return Params(np.zeros_like(self.flat), self.hidden_size, self.vocab_size)

    def copy(self) -> "Params":
        return Params(self.flat.copy(), self.hidden_size, self.vocab_size)


def init_params(H: int, V: int, rng: np.random.Generator, dtype="float64", scale: float = 0.01) -> Params:
    """The seed's initialization, drawn in the seed's order: Wxh, Whh, Why ~ randn * 0.01, zero biases."""
    Wxh = rng.standard_normal((H, V)) * scale
    Whh = rng.standard_normal((H, H)) * scale
    Why = rng.standard_normal((V, H)) * scale
    return Params.from_arrays(Wxh, Whh, Why, np.zeros((H, 1)), np.zeros((V, 1)), dtype=dtype)


class Workspace:
    """Buffers for one (T, B, H, V, dtype), reused by every step."""

    def __init__(self, T: int, B: int, H: int, V: int, dtype):
        self.T, self.B, self.H, self.V = T, B, H, V
        self.hs = np.zeros((T + 1, B, H), dtype)  # hs[0] = h_{-1}, hs[t+1] = h_t
        self.pre = np.zeros((T, B, H), dtype)  # Wxh x_t + bh
        self.dhraw = np.zeros((T, B, H), dtype)  # gradient at the tanh input
        self.dhnext = np.zeros((B, H), dtype)
        self.probs = np.zeros((T * B, V), dtype)  # softmax outputs, then dy in place
        self.rowmax = np.zeros((T * B, 1), dtype)
        self.rows = np.arange(T * B)
        self.cols = np.arange(H) * V  # offsets of the columns of a row-major (H, V) array
        self.dtanh = np.zeros((T, B, H), dtype)
        self.grads = Params.zeros(H, V, dtype)
        # row views, so the time loops index a Python list instead of building views each step
        self.hs_t, self.pre_t, self.dhraw_t = list(self.hs), list(self.pre), list(self.dhraw)


def loss_and_grads(P: Params, X: np.ndarray, Y: np.ndarray, h0: np.ndarray, ws: Workspace,
                   grad_scale: float = 1.0) -> float:
    """Forward and backward over one window; returns the summed loss (nats) and leaves grads in ws.grads.

    X, Y: (T, B) input and target indices; h0: (B, H). The final hidden state is ws.hs[-1].
    grad_scale multiplies dy (1 for the seed; 1/B averages the B streams).
    """
    T, B, H, V = ws.T, ws.B, ws.H, ws.V
    hs, pre, dhraw, probs = ws.hs, ws.pre, ws.dhraw, ws.probs
    hs_t, pre_t, dhraw_t = ws.hs_t, ws.pre_t, ws.dhraw_t
    WhhT = P.Whh.T

    # forward: the input layer for all steps at once, then the recurrence
    np.take(P.Wxh.T, X, axis=0, out=pre)  # (T, B, H) columns of Wxh picked by the one-hot inputs
    pre += P.bh[:, 0]
    hs[0] = h0
    for t in range(T):
        h = hs_t[t + 1]
        np.dot(hs_t[t], WhhT, out=h)
        h += pre_t[t]
        np.tanh(h, out=h)

    # output layer over all T*B positions: one GEMM, a stable softmax, the loss
    hflat = hs[1:].reshape(T * B, H)  # (TB, H)
    np.dot(hflat, P.Why.T, out=probs)  # (TB, V) logits
    probs += P.by[:, 0]
    yflat = Y.reshape(-1)
    np.maximum.reduce(probs, axis=1, keepdims=True, out=ws.rowmax)  # ufunc reduce: no wrapper overhead
    probs -= ws.rowmax
    target_logit = probs[ws.rows, yflat]  # (TB,) shifted logits of the targets
    np.exp(probs, out=probs)
    sums = np.add.reduce(probs, axis=1)  # (TB,)
    loss = float(np.add.reduce(np.log(sums)) - np.add.reduce(target_logit))
    probs /= sums[:, None]

    # backward: dy = p - onehot(target), then the output-layer gradients as GEMMs
    dy = probs
    dy[ws.rows, yflat] -= 1
    if grad_scale != 1.0:
        dy *= grad_scale
    G = ws.grads
    np.dot(dy.T, hflat, out=G.Why)  # (V, H)
    np.add.reduce(dy, axis=0, out=G.by[:, 0])
    np.dot(dy, P.Why, out=dhraw.reshape(T * B, H))  # (TB, H) gradient into h from the outputs

    # through time: dh_t = (outputs) + Whh.T dhraw_{t+1};  dhraw_t = (1 - h_t^2) * dh_t
    dtanh = ws.dtanh
    np.multiply(hs[1:], hs[1:], out=dtanh)
    np.subtract(1, dtanh, out=dtanh)  # (T, B, H) tanh' = 1 - h^2
    dnext = ws.dhnext
    for t in range(T - 1, -1, -1):
        d = dhraw_t[t]
        if t < T - 1:
            np.dot(dhraw_t[t + 1], P.Whh, out=dnext)
            d += dnext
        d *= dtanh[t]

    dflat = dhraw.reshape(T * B, H)
    np.add.reduce(dflat, axis=0, out=G.bh[:, 0])
    np.dot(dflat.T, hs[:-1].reshape(T * B, H), out=G.Whh)  # sum_t dhraw_t h_{t-1}^T
    # dWxh[:, x] += dhraw at every position that read x: a 1-D scatter-add into the flat (H, V) array
    G.Wxh.fill(0)
    np.add.at(G.Wxh.reshape(-1), (X.reshape(-1, 1) + ws.cols).reshape(-1), dflat.reshape(-1))
    return loss


def evaluate(P: Params, ids: np.ndarray, streams: int = 32, chunk: int = 256) -> float:
    """Mean loss (nats/char) of predicting ids[1:] from ids[:-1].

    The split is cut into `streams` contiguous segments run side by side; each starts from a zero hidden
    state and carries it along its segment (streams=1 carries one state along the whole split).
    """
    n = len(ids) - 1
    if n < 1:
        raise ValueError("evaluation needs at least 2 characters")
    S = max(1, min(streams, n))
    Ls = -(-n // S)  # ceil: segment length, the last one padded
    pad = S * Ls - n
    X = np.concatenate([ids[:-1], np.zeros(pad, ids.dtype)]).reshape(S, Ls).T  # (Ls, S)
    Y = np.concatenate([ids[1:], np.zeros(pad, ids.dtype)]).reshape(S, Ls).T
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]).reshape(S, Ls).T
    H, V = P.hidden_size, P.vocab_size
    chunk = max(1, min(chunk, (1 << 22) // max(1, S * V)))  # keep the (chunk*S, V) logits block modest
    h = np.zeros((S, H), P.Whh.dtype)
    WhhT, total = P.Whh.T, 0.0
    for c0 in range(0, Ls, chunk):
        x, y, m = X[c0:c0 + chunk], Y[c0:c0 + chunk], mask[c0:c0 + chunk]
        hs = P.Wxh.T[x] + P.bh[:, 0]  # (Tc, S, H)
        for t in range(len(x)):
            hs[t] += h @ WhhT
            np.tanh(hs[t], out=hs[t])
            h = hs[t]
        logits = hs.reshape(-1, H) @ P.Why.T + P.by[:, 0]  # (Tc*S, V)
        mx = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
        nll = lse - logits[np.arange(len(logits)), y.reshape(-1)]
        total += float(nll[m.reshape(-1)].sum())
    return total / n


def sample(P: Params, h: np.ndarray | None, seed_ix: int, n: int, rng: np.random.Generator,
           temperature: float = 1.0) -> list[int]:
    """n indices drawn one at a time, feeding each back in (the seed's sample, with a temperature)."""
    H = P.hidden_size
    h = np.zeros(H) if h is None else np.asarray(h, dtype=np.float64).reshape(H)
    Wxh, Whh, Why = (a.astype(np.float64) for a in (P.Wxh, P.Whh, P.Why))
    bh, by = P.bh[:, 0].astype(np.float64), P.by[:, 0].astype(np.float64)
    ix, out = seed_ix, []
    for _ in range(n):
        h = np.tanh(Wxh[:, ix] + Whh @ h + bh)
        y = (Why @ h + by) / temperature
        p = np.exp(y - y.max())
        cdf = np.cumsum(p)
        ix = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        ix = min(ix, len(cdf) - 1)
        out.append(ix)
    return out


def advance(P: Params, h: np.ndarray | None, ids) -> np.ndarray:
    """Run the hidden state (H,) over ids without sampling (priming text)."""
    h = np.zeros(P.hidden_size) if h is None else np.asarray(h, dtype=np.float64)
    Wxh, Whh, bh = P.Wxh.astype(np.float64), P.Whh.astype(np.float64), P.bh[:, 0].astype(np.float64)
    for ix in ids:
        h = np.tanh(Wxh[:, ix] + Whh @ h + bh)
    return h
