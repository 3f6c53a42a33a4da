"""Gated recurrent unit (Cho et al. 2014) in PyTorch's formulation: the reset gate multiplies Whn h + bhn.

    ax = Wxh x_t + bh      ah = Whh h_{t-1}             Wxh (3H, In), Whh (3H, H), bh (3H, 1): blocks r, z, n
    r = σ(ax_r + ah_r)     z = σ(ax_z + ah_z)           bhn (H, 1): the bias inside the reset product
    n = tanh(ax_n + r ⊙ (ah_n + bhn))
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

(PyTorch's b_ih is bh; its b_hh is [0, 0, bhn], its r and z parts being redundant with bh's.) Gates live
gate-major, (T, *lead, 3, B, H), each one contiguous (B, H) block.

Backward through time, with dh = dh_t (from above) + dh' (from step t+1):
    dz = dh ⊙ (h_{t-1} - n)       dn = dh ⊙ (1 - z)        da_n = dn ⊙ (1 - n²)
    dr = da_n ⊙ (ah_n + bhn)      da_r = dr ⊙ r(1-r)       da_z = dz ⊙ z(1-z)
    at the input side  dax = [da_r, da_z, da_n]            (dWxh, dbh)
    at the hidden side dah = [da_r, da_z, da_n ⊙ r]        (dWhh = Σ dah h_{t-1}^T, dbhn = Σ da_n ⊙ r)
    dh'(t-1) = dh ⊙ z + Whh^T dah
"""
from __future__ import annotations

import numpy as np

from .lstm import rows, sigmoid_

G = 3  # gate blocks: r, z, n
carries = 1  # the carried state is h


def extra_biases(H: int) -> dict[str, tuple[int, int]]:
    return {"bhn": (H, 1)}


def init_biases(bh, H: int) -> None:
    pass


class Layer:
    """One layer's buffers for a (T, B) window, reused by every step."""

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        self.T, self.lead, self.B, self.H, self.xp = T, lead, B, H, xp
        self.acts = xp.zeros((T, *lead, 3, B, H), dtype)  # ax, then the gates r, z, n in place
        self.ahn = xp.zeros((T, *lead, B, H), dtype)  # Whn h_{t-1} + bhn
        self.hs = xp.zeros((T + 1, *lead, B, H), dtype)
        self.rec = xp.zeros((*lead, 3, B, H), dtype)  # h_{t-1} Whh^T, gate-major
        self.dh = xp.zeros((T, *lead, B, H), dtype)
        self.dax = xp.zeros((T, *lead, 3, B, H), dtype)  # gradient at the input-side pre-activations
        self.dah = xp.zeros((T, *lead, 3, B, H), dtype)  # ... and at the hidden side
        self.dhn, self.d = (xp.zeros((*lead, B, H), dtype) for _ in range(2))
        self.drow = xp.zeros((*lead, B, 3, H), dtype)
        K = lead[0] if lead else None
        kk = (K,) if lead else ()
        self.dxr, self.dhr = (xp.zeros(kk + (T, B, 3, H), dtype) for _ in range(2))
        self.dx_rows, self.dh_rows = (a.reshape(*kk, T * B, 3 * H) for a in (self.dxr, self.dhr))
        self.hprev = xp.zeros((K, T * B, H), dtype) if lead else self.hs[:-1].reshape(T * B, H)
        self.mm = xp.matmul if lead else (np.ndarray.dot if xp is np else xp.dot)

    def load(self, xw, bh) -> None:
        T, B, H = self.T, self.B, self.H
        gm = xw.reshape(T, *self.lead, B, 3, H).swapaxes(-3, -2)
        self.xp.add(gm, bh.reshape(*self.lead, 3, 1, H), out=self.acts)

    def forward(self, W, state) -> None:
        xp, H = self.xp, self.H
        WhhT = W.Whh.reshape(*self.lead, 3, H, H).swapaxes(-1, -2)
        bhn = W.bhn.swapaxes(-1, -2)  # (*lead, 1, H)
        self.hs[0] = state[0]
        rec = self.rec
        for t in range(self.T):
            a, h_prev, h = self.acts[t], self.hs[t], self.hs[t + 1]
            xp.matmul(h_prev[..., None, :, :], WhhT, out=rec)
            rz = a[..., 0:2, :, :]
            rz += rec[..., 0:2, :, :]
            sigmoid_(rz, xp)
            r, z, n = a[..., 0, :, :], a[..., 1, :, :], a[..., 2, :, :]
            ahn = self.ahn[t]
            xp.add(rec[..., 2, :, :], bhn, out=ahn)
            xp.multiply(r, ahn, out=h)  # h as scratch
            n += h
            xp.tanh(n, out=n)
            xp.subtract(h_prev, n, out=h)  # h_t = n + z (h_{t-1} - n)
            h *= z
            h += n

    def final(self) -> tuple:
        return (self.hs[-1],)

    def backward(self, W):
        """Through time from dh; returns dax as ([K,] T*B, 3H) rows (dah is kept for grad_Whh)."""
        xp, mul, add, sub = self.xp, self.xp.multiply, self.xp.add, self.xp.subtract
        Whh, lead, B, H = W.Whh, self.lead, self.B, self.H
        dhn, d = self.dhn, self.d
        dhn.fill(0)
        for t in range(self.T - 1, -1, -1):
            a, dax, dah, h_prev = self.acts[t], self.dax[t], self.dah[t], self.hs[t]
            r, z, n = a[..., 0, :, :], a[..., 1, :, :], a[..., 2, :, :]
            dr, dz, dn = dax[..., 0, :, :], dax[..., 1, :, :], dax[..., 2, :, :]
            dh = add(self.dh[t], dhn, out=dhn)
            sub(h_prev, n, out=d)
            mul(dh, d, out=dz)  # dz = dh (h_{t-1} - n)
            sub(1, z, out=d)
            mul(dh, d, out=dn)  # dn = dh (1 - z)
            mul(n, n, out=d)
            sub(1, d, out=d)
            mul(dn, d, out=dn)  # da_n = dn (1 - n²)
            mul(dn, self.ahn[t], out=dr)  # dr = da_n (Whn h + bhn)
            sub(1, r, out=d)
            mul(d, r, out=d)
            mul(dr, d, out=dr)  # da_r
            sub(1, z, out=d)
            mul(d, z, out=d)
            mul(dz, d, out=dz)  # da_z
            dah[..., 0:2, :, :] = dax[..., 0:2, :, :]
            mul(dn, r, out=dah[..., 2, :, :])
            if t:
                mul(dh, z, out=d)  # the direct path z h_{t-1}
                self.drow[...] = dah.swapaxes(-3, -2)
                self.mm(self.drow.reshape(*lead, B, 3 * H), Whh, out=dhn)
                dhn += d
        rows(self.dxr, self.dax, lead)
        rows(self.dhr, self.dah, lead)
        if lead:
            K, T = lead[0], self.T
            self.hprev.reshape(K, T, B, H)[...] = self.hs[:-1].transpose(1, 0, 2, 3)
        return self.dx_rows

    def grad_Whh(self, dW) -> None:
        self.mm(self.dh_rows.swapaxes(-1, -2), self.hprev, out=dW.Whh)
        self.xp.add.reduce(self.dh_rows[..., 2 * self.H:], axis=-2, out=dW.bhn[..., 0]) if self.xp is np else \
            self.xp.sum(self.dh_rows[..., 2 * self.H:], axis=-2, out=dW.bhn[..., 0])
