"""The seed's cell: one tanh layer.

    h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)          Wxh (H, In), Whh (H, H), bh (H, 1)

Only the recurrence is sequential; the input projection Wxh x_t + bh for all steps comes in from the model
(`load`), and every other product is one GEMM over all T*B positions. Hidden states run as rows, h (B, H),
so h @ Whh.T is the seed's Whh @ h for B columns at once. Time is the leading axis, so that each step works on
one contiguous (B, H) block; `lead` is () for one model or (K,) for K packed models.

Backward through time, with dh_t the gradient reaching h_t from above (the output layer or the next layer):
    dhraw_t = (1 - h_t^2) * (dh_t + Whh^T dhraw_{t+1})     dWhh = sum_t dhraw_t h_{t-1}^T
"""
from __future__ import annotations

import numpy as np

G = 1  # gate blocks
carries = 1  # the carried state is h


def extra_biases(H: int) -> dict[str, tuple[int, int]]:
    return {}


def init_biases(bh, H: int) -> None:
    pass


def _gpu_kernels(cp):
    """On a GPU a step is bound by kernel launches, not arithmetic: fuse each elementwise pair."""
    return (cp.ElementwiseKernel("T p", "T h", "h = tanh(h + p)", "rnncore_add_tanh"),
            cp.ElementwiseKernel("T dn, T g", "T d", "d = (d + dn) * g", "rnncore_add_mul"))


class Layer:
    """One layer's buffers for a (T, B) window, reused by every step."""

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        self.T, self.lead, self.B, self.H, self.xp = T, lead, B, H, xp
        self.hs = xp.zeros((T + 1, *lead, B, H), dtype)  # hs[0] = h_{-1}, hs[t+1] = h_t
        self.pre = xp.zeros((T, *lead, B, H), dtype)  # Wxh x_t + bh
        self.dh = xp.zeros((T, *lead, B, H), dtype)  # gradient from above, then dhraw in place
        self.dtanh = xp.zeros((T, *lead, B, H), dtype)
        self.dhnext = xp.zeros((*lead, B, H), dtype)
        if lead:  # packed: trial-major copies for the batched weight-gradient product
            K = lead[0]
            self.dflat, self.hprev = (xp.zeros((K, T * B, H), dtype) for _ in range(2))
        else:  # one model: the (TB, H) views of the time-major buffers are free
            self.dflat, self.hprev = self.dh.reshape(T * B, H), self.hs[:-1].reshape(T * B, H)
        # 2-D products: BLAS gemv/gemm without matmul's batch overhead; numpy's method skips np.dot's dispatch
        self.mm = xp.matmul if lead else (np.ndarray.dot if xp is np else xp.dot)
        self.fused = None if xp is np else _gpu_kernels(xp)
        self.xw, self.kk = None, None  # the input projection's buffers, made by the first load_rows / load_ids
        # per-step views, so the time loops index a Python list instead of building views each step
        self.hs_t, self.pre_t, self.dh_t, self.dtanh_t = list(self.hs), list(self.pre), list(self.dh), list(self.dtanh)

    def load(self, xw, bh) -> None:
        """pre = Wxh x + bh, from xw (T, *lead, B, H), the input projection of every step."""
        self.xp.add(xw, bh.swapaxes(-1, -2), out=self.pre)

    def load_ids(self, W, X) -> None:
        """The first layer, for all steps at once: Wxh x_t is column x_t of Wxh (x_t one-hot)."""
        if self.lead:
            if self.kk is None:
                self.kk = self.xp.arange(self.lead[0])[None, :, None]  # (1, K, 1) trial index for the gather
            self.load(W.Wxh.swapaxes(1, 2)[self.kk, X[:, None, :]], W.bh)  # (T, K, B, H)
        else:
            self.load(W.Wxh.T[X], W.bh)  # (T, B, H)

    def load_rows(self, W, x) -> None:
        """Layers above: Wxh x for all steps, one GEMM over the layer below's output x ([K,] T*B, H)."""
        T, B = self.T, self.B
        if self.xw is None:
            self.xw = self.xp.zeros(x.shape[:-1] + (self.H,), self.hs.dtype)
        self.mm(x, W.Wxh.swapaxes(-1, -2), out=self.xw)
        self.load(self.xw.reshape(T, B, -1) if not self.lead else
                  self.xw.reshape(self.lead[0], T, B, -1).transpose(1, 0, 2, 3), W.bh)

    def forward(self, W, state) -> None:
        """The recurrence from state = (h_{-1},): fills hs."""
        xp, mm, hs_t, pre_t = self.xp, self.mm, self.hs_t, self.pre_t
        WhhT = W.Whh.swapaxes(-1, -2)
        if self.fused:
            WhhT = xp.ascontiguousarray(WhhT)  # cuBLAS's batched GEMM copies a transposed view at every call
        self.hs[0] = state[0]
        # the hot path at batch 1: functions held in locals, numpy ufuncs' outputs passed by position (cheaper
        # than out=; CuPy's matmul takes out= only, and on a GPU the fused kernels run instead)
        add, tanh = xp.add, xp.tanh
        if self.fused:
            add_tanh = self.fused[0]
            for h_prev, h, p in zip(hs_t, hs_t[1:], pre_t):
                mm(h_prev, WhhT, out=h)
                add_tanh(p, h)
        else:
            for h_prev, h, p in zip(hs_t, hs_t[1:], pre_t):
                mm(h_prev, WhhT, out=h)  # h_t = tanh(h_{t-1} Whh^T + pre_t)
                add(h, p, h)
                tanh(h, h)

    def final(self) -> tuple:
        return (self.hs[-1],)

    def backward(self, W):
        """dh (filled by the model) -> dhraw in place. Returns dhraw, the gradient at Wxh x_t + bh, as
        ([K,] T*B, H) rows for the model's weight-gradient products."""
        xp, mm, T = self.xp, self.mm, self.T
        hs, dh_t, dtanh_t = self.hs, self.dh_t, self.dtanh_t
        xp.multiply(hs[1:], hs[1:], out=self.dtanh)
        xp.subtract(1, self.dtanh, out=self.dtanh)  # tanh' = 1 - h^2
        dnext, Whh = self.dhnext, W.Whh
        add, mul = xp.add, xp.multiply
        mul(dh_t[T - 1], dtanh_t[T - 1], out=dh_t[T - 1])
        steps_back = zip(dh_t[:0:-1], dh_t[-2::-1], dtanh_t[-2::-1])  # (dhraw_{t+1}, d_t, tanh'_t), t = T-2..0
        if self.fused:
            add_mul = self.fused[1]
            for d_next, d, g in steps_back:
                mm(d_next, Whh, out=dnext)
                add_mul(dnext, g, d)
        else:
            for d_next, d, g in steps_back:
                mm(d_next, Whh, out=dnext)  # dhraw_t = (d_t + dhraw_{t+1} Whh) * tanh'_t
                add(d, dnext, d)
                mul(d, g, d)
        if self.lead:
            trial_major(self.dflat, self.dh)
            trial_major(self.hprev, hs[:-1])
        return self.dflat

    def grad_Whh(self, dW) -> None:
        """dWhh = sum_t dhraw_t h_{t-1}^T, after backward (the model takes dbh first, as the seed's order)."""
        self.mm(self.dflat.swapaxes(-1, -2), self.hprev, out=dW.Whh)


def trial_major(dst_km, src) -> None:
    """(T, K, B, H) time-major -> (K, T*B, H) trial-major."""
    T, K, B, H = src.shape
    dst_km.reshape(K, T, B, H)[...] = src.transpose(1, 0, 2, 3)
