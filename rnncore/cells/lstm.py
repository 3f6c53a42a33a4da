"""Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's gate order i, f, g, o.

    a_t = Wxh x_t + Whh h_{t-1} + bh                    Wxh (4H, In), Whh (4H, H), bh (4H, 1): blocks i, f, g, o
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

The forget-gate bias starts at 1 (Jozefowicz et al. 2015), so a fresh cell remembers by default. The carried
state is (h, c). Gate pre-activations live gate-major, (T, *lead, 4, B, H), so every gate is one contiguous
(B, H) block for the elementwise work; the recurrent product fills all four blocks with one batched GEMM.

Backward through time, with dh_t from above and dh', dc' carried from step t+1:
    dh = dh_t + dh'                 do = dh ⊙ tanh(c_t)            dc = dh ⊙ o ⊙ (1 - tanh²(c_t)) + dc'
    di = dc ⊙ g    df = dc ⊙ c_{t-1}    dg = dc ⊙ i                dc'(t-1) = dc ⊙ f
    da = [di ⊙ i(1-i), df ⊙ f(1-f), dg ⊙ (1-g²), do ⊙ o(1-o)]     dh'(t-1) = Whh^T da
    dWhh = Σ_t da_t h_{t-1}^T
"""
from __future__ import annotations

import numpy as np

G = 4  # gate blocks: i, f, g, o
carries = 2  # the carried state is (h, c)


def extra_biases(H: int) -> dict[str, tuple[int, int]]:
    return {}


def init_biases(bh, H: int) -> None:
    bh[..., H:2 * H, :] = 1.0  # forget gate open


def sigmoid_(x, xp) -> None:
    """σ(x) = (1 + tanh(x/2)) / 2 in place: one transcendental, no overflow for large |x|."""
    x *= 0.5
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5


def rows(dst, src, lead: tuple) -> None:
    """Gate-major (T, *lead, G, B, H) -> rows: (T, B, G, H) for one model, (K, T, B, G, H) packed."""
    if lead:
        dst[...] = src.transpose(1, 0, 3, 2, 4)
    else:
        dst[...] = src.swapaxes(1, 2)


class Layer:
    """One layer's buffers for a (T, B) window, reused by every step."""

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        self.T, self.lead, self.B, self.H, self.xp = T, lead, B, H, xp
        self.acts = xp.zeros((T, *lead, 4, B, H), dtype)  # pre-activations, then the gates i, f, g, o in place
        self.hs = xp.zeros((T + 1, *lead, B, H), dtype)  # hs[0] = h_{-1}
        self.cs = xp.zeros((T + 1, *lead, B, H), dtype)  # cs[0] = c_{-1}
        self.tc = xp.zeros((T, *lead, B, H), dtype)  # tanh(c_t)
        self.rec = xp.zeros((*lead, 4, B, H), dtype)  # h_{t-1} Whh^T, gate-major
        self.tmp = xp.zeros((*lead, B, H), dtype)
        self.dh = xp.zeros((T, *lead, B, H), dtype)  # gradient from above (filled by the model)
        self.da = xp.zeros((T, *lead, 4, B, H), dtype)  # gradient at the gates' pre-activations
        self.dhn, self.dcn, self.dc, self.dtmp = (xp.zeros((*lead, B, H), dtype) for _ in range(4))
        self.drow = xp.zeros((*lead, B, 4, H), dtype)  # one step's da as rows, for the product with Whh
        K = lead[0] if lead else None
        self.dxr = xp.zeros(((K,) if lead else ()) + (T, B, 4, H), dtype)  # da as rows, for the weight gradients
        self.dx_rows = self.dxr.reshape(*((K,) if lead else ()), T * B, 4 * H)
        if lead:
            self.hprev = xp.zeros((K, T * B, H), dtype)
        else:
            self.hprev = self.hs[:-1].reshape(T * B, H)
        self.mm = xp.matmul if lead else (np.ndarray.dot if xp is np else xp.dot)

    def load(self, xw, bh) -> None:
        """a = Wxh x + bh (the recurrent part comes in forward), from xw (T, *lead, B, 4H)."""
        T, B, H = self.T, self.B, self.H
        gm = xw.reshape(T, *self.lead, B, 4, H).swapaxes(-3, -2)  # (T, *lead, 4, B, H)
        self.xp.add(gm, bh.reshape(*self.lead, 4, 1, H), out=self.acts)

    def forward(self, W, state) -> None:
        xp, H = self.xp, self.H
        WhhT = W.Whh.reshape(*self.lead, 4, H, H).swapaxes(-1, -2)  # (*lead, 4, H, H)
        self.hs[0], self.cs[0] = state
        mul, tanh, rec, tmp = xp.multiply, xp.tanh, self.rec, self.tmp
        for t in range(self.T):
            a = self.acts[t]  # (*lead, 4, B, H)
            xp.matmul(self.hs[t][..., None, :, :], WhhT, out=rec)
            a += rec
            sigmoid_(a[..., 0:2, :, :], xp)  # i, f
            tanh(a[..., 2, :, :], out=a[..., 2, :, :])  # g
            sigmoid_(a[..., 3, :, :], xp)  # o
            i, f, g, o = a[..., 0, :, :], a[..., 1, :, :], a[..., 2, :, :], a[..., 3, :, :]
            c = self.cs[t + 1]
            mul(f, self.cs[t], out=c)
            mul(i, g, out=tmp)
            c += tmp
            tanh(c, out=self.tc[t])
            mul(o, self.tc[t], out=self.hs[t + 1])

    def final(self) -> tuple:
        return (self.hs[-1], self.cs[-1])

    def backward(self, W):
        """Through time from dh (filled by the model); returns da as ([K,] T*B, 4H) rows."""
        xp, mul, add, sub = self.xp, self.xp.multiply, self.xp.add, self.xp.subtract
        Whh, lead, B, H = W.Whh, self.lead, self.B, self.H
        dhn, dcn, dc, d = self.dhn, self.dcn, self.dc, self.dtmp
        dhn.fill(0)
        dcn.fill(0)
        for t in range(self.T - 1, -1, -1):
            a, da, tc = self.acts[t], self.da[t], self.tc[t]
            i, f, g, o = a[..., 0, :, :], a[..., 1, :, :], a[..., 2, :, :], a[..., 3, :, :]
            di, df, dg, do = da[..., 0, :, :], da[..., 1, :, :], da[..., 2, :, :], da[..., 3, :, :]
            dh = add(self.dh[t], dhn, out=dhn)  # dh_t + Whh^T da_{t+1}
            mul(dh, tc, out=do)  # do = dh tanh(c)
            mul(dh, o, out=dc)  # dc = dh o (1 - tanh²c) + dc'
            mul(tc, tc, out=d)
            sub(1, d, out=d)
            mul(dc, d, out=dc)
            add(dc, dcn, out=dc)
            mul(dc, g, out=di)
            mul(dc, self.cs[t], out=df)
            mul(dc, i, out=dg)
            mul(dc, f, out=dcn)  # dc' for step t-1
            # through the nonlinearities: σ' = s(1-s), tanh' = 1 - y²
            for grad, y, sig in ((di, i, True), (df, f, True), (dg, g, False), (do, o, True)):
                if sig:
                    sub(1, y, out=d)
                    mul(d, y, out=d)
                else:
                    mul(y, y, out=d)
                    sub(1, d, out=d)
                mul(grad, d, out=grad)
            if t:
                self.drow[...] = da.swapaxes(-3, -2)  # (*lead, B, 4, H)
                self.mm(self.drow.reshape(*lead, B, 4 * H), Whh, out=dhn)
        rows(self.dxr, self.da, lead)
        if lead:
            K, T = lead[0], self.T
            self.hprev.reshape(K, T, B, H)[...] = self.hs[:-1].transpose(1, 0, 2, 3)
        return self.dx_rows

    def grad_Whh(self, dW) -> None:
        """dWhh = Σ_t da_t h_{t-1}^T: one GEMM over all positions."""
        self.mm(self.dx_rows.swapaxes(-1, -2), self.hprev, out=dW.Whh)
