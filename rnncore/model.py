"""The seed's RNN: parameters, forward/backward over one window, evaluation, sampling.

    h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)      x_t one-hot, so Wxh x_t is a column gather
    y_t = Why h_t + by,  p_t = softmax(y_t),  loss = -sum_t log p_t[target_t]

Only the recurrence is sequential. The input layer is one gather for all steps, the output layer and its
gradients are one GEMM over all T*B positions, and every buffer is allocated once (Workspace).
Arrays keep the seed's shapes: Wxh (H,V), Whh (H,H), Why (V,H), bh (H,1), by (V,1). Hidden states run
as rows, h (B,H), so h @ Whh.T is the seed's Whh @ h for B columns at once.

Packing: with K trials of the same shapes, every array gets a leading trial axis (Wxh (K,H,V), h (K,B,H))
and the GEMMs become batched matmuls, so one step trains K models at once. The array module `xp` is numpy
or CuPy; the same code runs on both.
"""
from __future__ import annotations

import numpy as np


def shapes(H: int, V: int) -> dict[str, tuple[int, int]]:
    return {"Wxh": (H, V), "Whh": (H, H), "Why": (V, H), "bh": (H, 1), "by": (V, 1)}


def array_module(a):
    """numpy, or cupy for a CuPy array (found without importing CuPy when it isn't in use)."""
    return np if isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] != "cupy" else __import__("cupy")


def to_numpy(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


HUGE_PAGE = 1 << 21  # bytes: a transparent huge page on x86-64 Linux
NUMPY_HUGEPAGE_MIN = 1 << 22  # numpy asks Linux for huge pages (madvise) for allocations of at least 4 MiB


def flat_zeros(n: int, dtype, xp=np):
    """A zeroed 1-D array for parameter-sized data: weights, gradients, Adagrad memories, scratch.

    A step streams these arrays through the cache many times (Whh alone 2T - 1 times). At H = 512 the four
    of them fill ~10.5 MB: ~2,600 pages of 4 KiB, more than a CPU's TLB usually maps, or eight of 2 MiB.
    So on the CPU an array of 1 MiB or more starts on a 2 MiB boundary inside an allocation of at least
    4 MiB, which numpy asks Linux to back with transparent huge pages (madvise). Measured at H = 512, T = 50,
    batch 1: the step runs about 5 % faster. Small arrays and GPU arrays are a plain zeros(). Where there are
    no huge pages, the padding costs only address space: pages never touched are never backed.
    """
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if xp is not np or nbytes < (1 << 20):
        return xp.zeros(n, dtype)
    raw = np.zeros(max(-(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE, NUMPY_HUGEPAGE_MIN), np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    return raw[start: start + nbytes].view(dtype)


class Params:
    """The seed's five arrays as views into one flat vector, so clipping and Adagrad are single array ops.

    K = None: one model, the seed's shapes. K = k: k packed models, each array with a leading trial axis.
    """

    NAMES = ("Wxh", "Whh", "Why", "bh", "by")

    def __init__(self, flat, H: int, V: int, K: int | None = None):
        self.flat = flat  # every parameter back to back, each array's K copies together
        self.hidden_size, self.vocab_size, self.K = H, V, K
        lead, off = (() if K is None else (K,)), 0
        for name, shape in shapes(H, V).items():
            n = (K or 1) * shape[0] * shape[1]
            setattr(self, name, flat[off: off + n].reshape(lead + shape))
            off += n

    @staticmethod
    def size(H: int, V: int, K: int | None = None) -> int:
        return (K or 1) * (H * V + H * H + V * H + H + V)

    @classmethod
    def zeros(cls, H: int, V: int, dtype, K: int | None = None, xp=np) -> "Params":
        return cls(flat_zeros(cls.size(H, V, K), dtype, xp), H, V, K)

    @classmethod
    def from_arrays(cls, Wxh, Whh, Why, bh, by, dtype=None) -> "Params":
        H, V = Wxh.shape
        P = cls.zeros(H, V, dtype or Wxh.dtype)
        for dst, src in zip(P.arrays(), (Wxh, Whh, Why, bh, by)):
            dst[...] = src
        return P

    @classmethod
    def stack(cls, members: list["Params"], xp=np) -> "Params":
        """K single models packed into one (copied to xp's device)."""
        m0 = members[0]
        P = cls.zeros(m0.hidden_size, m0.vocab_size, m0.flat.dtype, len(members), xp)
        for name in cls.NAMES:
            getattr(P, name)[...] = xp.asarray(np.stack([to_numpy(getattr(m, name)) for m in members]))
        return P

    def member(self, k: int) -> "Params":
        """A numpy copy of packed model k."""
        return Params.from_arrays(*(to_numpy(a[k]) for a in self.arrays()))

    def arrays(self) -> list:
        return [self.Wxh, self.Whh, self.Why, self.bh, self.by]

    def zeros_like(self) -> "Params":
        xp = array_module(self.flat)
        return Params(flat_zeros(self.flat.size, self.flat.dtype, xp), self.hidden_size, self.vocab_size, self.K)

    def copy(self) -> "Params":
        P = self.zeros_like()
        P.flat[...] = self.flat
        return P


def init_params(H: int, V: int, rng: np.random.Generator, dtype="float64", scale: float = 0.01) -> Params:
    """The seed's initialization, drawn in the seed's order: Wxh, Whh, Why ~ randn * 0.01, zero biases."""
    Wxh = rng.standard_normal((H, V)) * scale
    Whh = rng.standard_normal((H, H)) * scale
    Why = rng.standard_normal((V, H)) * scale
    return Params.from_arrays(Wxh, Whh, Why, np.zeros((H, 1)), np.zeros((V, 1)), dtype=dtype)


class Workspace:
    """Buffers for one (T, B, H, V, dtype[, K]), reused by every step. Time is the leading axis so that
    each step of the recurrence works on one contiguous (B, H) or (K, B, H) block."""

    def __init__(self, T: int, B: int, H: int, V: int, dtype, K: int | None = None, xp=np):
        self.T, self.B, self.H, self.V, self.K, self.xp = T, B, H, V, K, xp
        lead = () if K is None else (K,)
        self.hs = xp.zeros((T + 1, *lead, B, H), dtype)  # hs[0] = h_{-1}, hs[t+1] = h_t
        self.pre = xp.zeros((T, *lead, B, H), dtype)  # Wxh x_t + bh
        self.dhraw = xp.zeros((T, *lead, B, H), dtype)  # gradient at the tanh input
        self.dtanh = xp.zeros((T, *lead, B, H), dtype)
        self.dhnext = xp.zeros((*lead, B, H), dtype)
        self.probs = xp.zeros((*lead, T * B, V), dtype)  # softmax outputs, then dy in place
        self.rowmax = xp.zeros((*lead, T * B, 1), dtype)
        self.rows = xp.arange(T * B)
        self.row_starts = self.rows * V  # where each row of a (TB, V) block starts in its flat view
        self.cols = xp.arange(H) * V  # offsets of the columns of a row-major (H, V) array
        self.grads = Params.zeros(H, V, dtype, K, xp)
        if K is None:  # one model: the (TB, H) views of the time-major buffers are free
            self.hflat, self.hprev, self.dflat = (a.reshape(T * B, H) for a in (self.hs[1:], self.hs[:-1], self.dhraw))
            # 2-D products: BLAS gemv/gemm without matmul's batch overhead; numpy's method skips np.dot's dispatch
            self.mm = np.ndarray.dot if xp is np else xp.dot
        else:  # packed: trial-major copies for the batched output-layer and weight-gradient products
            self.hflat, self.hprev, self.dflat = (xp.zeros((K, T * B, H), dtype) for _ in range(3))
            self.kk = xp.arange(K)[None, :, None]  # (1, K, 1) trial index for the input gather
            self.kofs = (xp.arange(K) * H * V)[:, None, None]  # where each trial's Wxh starts
            self.mm = xp.matmul
        self.fused = None if xp is np else _gpu_kernels(xp)  # one kernel for each elementwise pair on a GPU
        self.amax = np.maximum.reduce if xp is np else xp.max  # ufunc reduce skips numpy's wrapper
        self.asum = np.add.reduce if xp is np else xp.sum
        # dWxh: numpy scatter-adds rows (cost ~ T*B*H); a GPU does better with one GEMM against a one-hot
        # matrix of the inputs than with atomics piling onto few addresses (cost ~ T*B*H*V, so small V only)
        self.onehot = xp.zeros((T * B, V), dtype) if xp is not np and V <= 1024 else None
        self.vocab_ids = xp.arange(V)
        # per-step views, so the time loops index a Python list instead of building views each step
        self.hs_t, self.pre_t, self.dhraw_t, self.dtanh_t = list(self.hs), list(self.pre), list(self.dhraw), list(self.dtanh)


def _gpu_kernels(cp):
    """On a GPU a step is bound by kernel launches, not arithmetic: fuse each elementwise pair."""
    return (cp.ElementwiseKernel("T p", "T h", "h = tanh(h + p)", "rnncore_add_tanh"),
            cp.ElementwiseKernel("T dn, T g", "T d", "d = (d + dn) * g", "rnncore_add_mul"))


def _time_major(dst, src_km, K: int, T: int, B: int, H: int) -> None:
    """(K, T*B, H) trial-major -> (T, K, B, H) time-major."""
    dst[...] = src_km.reshape(K, T, B, H).transpose(1, 0, 2, 3)


def _trial_major(dst_km, src, K: int, T: int, B: int, H: int) -> None:
    """(T, K, B, H) time-major -> (K, T*B, H) trial-major."""
    dst_km.reshape(K, T, B, H)[...] = src.transpose(1, 0, 2, 3)


def loss_and_grads(P: Params, X, Y, h0, ws: Workspace, grad_scale: float = 1.0):
    """Forward and backward over one window; returns the summed loss (nats) and leaves grads in ws.grads.

    X, Y: (T, B) input and target indices (shared by packed trials); h0: (B, H), or (K, B, H) packed.
    The final hidden state is ws.hs[-1]. grad_scale multiplies dy (1 for the seed; 1/B averages the
    B streams). Returns a float, or a (K,) array of per-trial sums when packed.
    """
    T, B, H, K, xp, mm = ws.T, ws.B, ws.H, ws.K, ws.xp, ws.mm
    hs, pre, dhraw, probs, hflat, dflat = ws.hs, ws.pre, ws.dhraw, ws.probs, ws.hflat, ws.dflat
    hs_t, pre_t, dhraw_t, dtanh_t = ws.hs_t, ws.pre_t, ws.dhraw_t, ws.dtanh_t
    WhhT, Whh = P.Whh.swapaxes(-1, -2), P.Whh
    if ws.fused:
        WhhT = xp.ascontiguousarray(WhhT)  # cuBLAS's batched GEMM copies a transposed view at every call

    # forward: the input layer for all steps at once, then the recurrence
    if K is None:
        Wxh_x = P.Wxh.T[X]  # (T, B, H) columns of Wxh picked by the one-hot inputs
    else:
        Wxh_x = P.Wxh.swapaxes(1, 2)[ws.kk, X[:, None, :]]  # (T, K, B, H)
    xp.add(Wxh_x, P.bh.swapaxes(-1, -2), out=pre)
    hs[0] = h0
    # the time loops are the hot path at batch 1: functions held in locals, numpy ufuncs' outputs passed by
    # position (cheaper than out=; CuPy's matmul takes out= only, and on a GPU the fused kernels run instead)
    add, tanh, mul = xp.add, xp.tanh, xp.multiply
    if ws.fused:
        add_tanh, add_mul = ws.fused
        for h_prev, h, p in zip(hs_t, hs_t[1:], pre_t):
            mm(h_prev, WhhT, out=h)
            add_tanh(p, h)
    else:
        for h_prev, h, p in zip(hs_t, hs_t[1:], pre_t):
            mm(h_prev, WhhT, out=h)  # h_t = tanh(h_{t-1} Whh^T + pre_t)
            add(h, p, h)
            tanh(h, h)

    # output layer over all T*B positions: one GEMM, a stable softmax, the loss
    if K is not None:
        _trial_major(hflat, hs[1:], K, T, B, H)
    mm(hflat, P.Why.swapaxes(-1, -2), out=probs)  # (TB, V) logits
    probs += P.by.swapaxes(-1, -2)
    yflat = Y.reshape(-1)
    if K is None:  # one flat index for the targets' entries: numpy's cheapest fancy indexing
        p_at, at_target = probs.reshape(-1), ws.row_starts + yflat
    else:
        p_at, at_target = probs, (slice(None), ws.rows, yflat)
    ws.amax(probs, axis=-1, keepdims=True, out=ws.rowmax)
    probs -= ws.rowmax
    target_logit = p_at[at_target]  # ([K,] TB) shifted logits of the targets
    xp.exp(probs, out=probs)
    sums = ws.asum(probs, axis=-1)  # ([K,] TB)
    probs /= sums[..., None]
    nll = xp.log(sums, out=sums)  # -log p[target] = log sum exp - target logit, at each position
    nll -= target_logit
    loss = ws.asum(nll, axis=-1)

    # backward: dy = p - onehot(target), then the output-layer gradients as GEMMs
    dy = probs
    p_at[at_target] -= 1
    if grad_scale != 1.0:
        dy *= grad_scale
    G = ws.grads
    mm(dy.swapaxes(-1, -2), hflat, out=G.Why)  # (V, H)
    ws.asum(dy, axis=-2, out=G.by[..., 0])
    mm(dy, P.Why, out=dflat)  # (TB, H) gradient into h from the outputs
    if K is not None:
        _time_major(dhraw, dflat, K, T, B, H)

    # through time: dh_t = (outputs) + Whh.T dhraw_{t+1};  dhraw_t = (1 - h_t^2) * dh_t
    xp.multiply(hs[1:], hs[1:], out=ws.dtanh)
    xp.subtract(1, ws.dtanh, out=ws.dtanh)  # tanh' = 1 - h^2
    dnext = ws.dhnext
    mul(dhraw_t[T - 1], dtanh_t[T - 1], out=dhraw_t[T - 1])
    steps_back = zip(dhraw_t[:0:-1], dhraw_t[-2::-1], dtanh_t[-2::-1])  # (dhraw_{t+1}, d_t, tanh'_t), t = T-2..0
    if ws.fused:
        for d_next, d, g in steps_back:
            mm(d_next, Whh, out=dnext)
            add_mul(dnext, g, d)
    else:
        for d_next, d, g in steps_back:
            mm(d_next, Whh, out=dnext)  # dhraw_t = (d_t + dhraw_{t+1} Whh) * tanh'_t
            add(d, dnext, d)
            mul(d, g, d)

    if K is not None:
        _trial_major(dflat, dhraw, K, T, B, H)
        _trial_major(ws.hprev, hs[:-1], K, T, B, H)
    ws.asum(dflat, axis=-2, out=G.bh[..., 0])
    mm(dflat.swapaxes(-1, -2), ws.hprev, out=G.Whh)  # sum_t dhraw_t h_{t-1}^T
    # dWxh[:, x] += dhraw at every position that read x
    if ws.onehot is not None:
        xp.equal(X.reshape(-1, 1), ws.vocab_ids, out=ws.onehot)  # (TB, V), cast to the float dtype
        mm(dflat.swapaxes(-1, -2), ws.onehot, out=G.Wxh)
    else:
        G.Wxh.fill(0)
        idx = X.reshape(-1, 1) + ws.cols  # (TB, H)
        if K is not None:
            idx = idx[None] + ws.kofs  # (K, TB, H)
        xp.add.at(G.Wxh.reshape(-1), idx.reshape(-1), dflat.reshape(-1))
    return float(loss) if K is None else loss


def evaluate(P: Params, ids: np.ndarray, streams: int = 32, chunk: int = 256):
    """Mean loss (nats/char) of predicting ids[1:] from ids[:-1]; a (K,) array for packed params.

    The split is cut into `streams` contiguous segments run side by side; each starts from a zero hidden
    state and carries it along its segment (streams=1 carries one state along the whole split).
    """
    xp, K = array_module(P.flat), P.K
    n = len(ids) - 1
    if n < 1:
        raise ValueError("evaluation needs at least 2 characters")
    ids = to_numpy(ids)
    S = max(1, min(streams, n))
    Ls = -(-n // S)  # ceil: segment length, the last one padded
    pad = S * Ls - n
    X = np.concatenate([ids[:-1], np.zeros(pad, ids.dtype)]).reshape(S, Ls).T  # (Ls, S)
    Y = np.concatenate([ids[1:], np.zeros(pad, ids.dtype)]).reshape(S, Ls).T
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]).reshape(S, Ls).T
    X, Y, mask = xp.asarray(X), xp.asarray(Y), xp.asarray(mask)
    H, V = P.hidden_size, P.vocab_size
    chunk = max(1, min(chunk, (1 << 22) // max(1, S * V * (K or 1))))  # keep the logits block modest
    lead = () if K is None else (K,)
    mm = xp.dot if K is None else xp.matmul
    h = xp.zeros((*lead, S, H), P.Whh.dtype)
    WhhT, WxhT = P.Whh.swapaxes(-1, -2), P.Wxh.swapaxes(-1, -2)
    bh, by, WhyT = P.bh.swapaxes(-1, -2), P.by.swapaxes(-1, -2), P.Why.swapaxes(-1, -2)
    total = xp.zeros(lead, np.float64)
    for c0 in range(0, Ls, chunk):
        x, y, m = X[c0:c0 + chunk], Y[c0:c0 + chunk], mask[c0:c0 + chunk]
        hs = (WxhT[x] if K is None else WxhT[xp.arange(K)[None, :, None], x[:, None, :]]) + bh  # (Tc, [K,] S, H)
        for t in range(len(x)):
            hs[t] += mm(h, WhhT)
            xp.tanh(hs[t], out=hs[t])
            h = hs[t]
        hk = hs.reshape(-1, H) if K is None else hs.transpose(1, 0, 2, 3).reshape(K, -1, H)  # ([K,] Tc*S, H)
        logits = mm(hk, WhyT) + by  # ([K,] Tc*S, V)
        mx = logits.max(axis=-1, keepdims=True)
        lse = xp.log(xp.exp(logits - mx).sum(axis=-1)) + mx[..., 0]
        nll = lse - logits[..., xp.arange(logits.shape[-2]), y.reshape(-1)]
        total += nll[..., m.reshape(-1)].sum(axis=-1)
    out = to_numpy(total) / n
    return float(out) if K is None else out


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
