"""Gated recurrent unit (Cho et al. 2014) in PyTorch's formulation: the reset gate multiplies Whn h + bhn.

    ax = Wxh x_t + bh      ah = Whh h_{t-1}             Wxh (3H, In), Whh (3H, H), bh (3H, 1): blocks r, z, n
    r = σ(ax_r + ah_r)     z = σ(ax_z + ah_z)           bhn (H, 1): the bias inside the reset product
    n = tanh(ax_n + r ⊙ (ah_n + bhn))
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

(PyTorch's b_ih is bh; its b_hh is [0, 0, bhn], its r and z parts being redundant with bh's.) The layout, the
input side and the window-wide products are the gated cells' (cells/gates.py): every gate of a step is one
contiguous (B, H) block, and the recurrence is one GEMM per step.

Backward through time, with dh = dh_t (from above) + dh' (from step t+1):
    dz = dh ⊙ (h_{t-1} - n)       dn = dh ⊙ (1 - z)        da_n = dn ⊙ (1 - n²)
    dr = da_n ⊙ (ah_n + bhn)      da_r = dr ⊙ r(1-r)       da_z = dz ⊙ z(1-z)
    at the input side  dax = [da_r, da_z, da_n]            (dWxh, dbh)
    at the hidden side dah = [da_r, da_z, da_n ⊙ r]        (dWhh = Σ dah h_{t-1}^T, dbhn = Σ da_n ⊙ r)
    dh'(t-1) = dh ⊙ z + Whh^T dah
"""
from __future__ import annotations

import numpy as np

from .gates import GatedLayer

G = 3  # gate blocks: r, z, n
carries = 1  # the carried state is h


def extra_biases(H: int) -> dict[str, tuple[int, int]]:
    return {"bhn": (H, 1)}


def init_biases(bh, H: int) -> None:
    pass


class Layer(GatedLayer):
    """One layer's buffers for a (T, B) window, reused by every step. dxr holds dax; dhr holds dah."""

    G = G
    SIGMOID = (0, 1)  # r, z

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        super().__init__(T, lead, B, H, dtype, xp)
        self.ahn = xp.zeros((T, *lead, B, H), dtype)  # Whn h_{t-1} + bhn
        self.d = xp.zeros((*lead, B, H), dtype)
        self.d2 = xp.zeros((2, *lead, B, H), dtype)
        self.dhr = xp.zeros((*lead, T, B, 3, H), dtype)  # dah as rows
        self.dh_rows = self.dhr.reshape(*lead, T * B, 3 * H)
        self.dhr_t = [self.dhr[..., t, :, :, :] for t in range(T)]  # (*lead, B, 3, H)
        self.dhflat_t = [d.reshape(*lead, B, 3 * H) for d in self.dhr_t]
        self.ahn_t = list(self.ahn)

    def forward(self, W, state) -> None:
        """The recurrence from state = (h_{-1},): fills hs, the gates and ahn."""
        xp, WT, rec = self.xp, self.WT, self.rec
        mm, mul, add, sub, tanh = xp.matmul, xp.multiply, xp.add, xp.subtract, xp.tanh  # outputs by position
        self.recurrent_weights(W)
        bhn = W.bhn.swapaxes(-1, -2)  # (*lead, 1, H)
        self.hs[0] = state[0]
        hs, rec01, rec_n = self.hs_t, rec[0:2], rec[2]
        for t in range(self.T):
            rz, (r, z, n), h_prev, h, ahn = self.a01_t[t], self.gates_t[t], hs[t], hs[t + 1], self.ahn_t[t]
            mm(h_prev, WT, out=rec)  # h_{t-1} Whh^T, its σ blocks halved like a's
            add(rz, rec01, rz)
            tanh(rz, rz)
            mul(rz, 0.5, rz)
            add(rz, 0.5, rz)  # r, z = (1 + tanh(a/2)) / 2
            add(rec_n, bhn, ahn)
            mul(r, ahn, h)  # h as scratch
            add(n, h, n)
            tanh(n, n)
            sub(h_prev, n, h)  # h_t = n + z (h_{t-1} - n)
            mul(h, z, h)
            add(h, n, h)

    def final(self) -> tuple:
        return (self.hs[-1],)

    def backward(self, W):
        """Through time from dh; returns dax as ([K,] T*B, 3H) rows (dah is kept for grad_Whh)."""
        mm, mul, add, sub, copyto = self.mm, self.xp.multiply, self.xp.add, self.xp.subtract, self.xp.copyto
        Whh, dh_t, hs = W.Whh, self.dh_t, self.hs_t
        dhn, d, d2 = self.rec[0], self.d, self.d2  # rec is free after forward
        dr, dz, dn = self.da
        da01, da_rows = self.da01, self.da_rows
        dhn.fill(0)
        for t in range(self.T - 1, -1, -1):
            rz, (r, z, n), h_prev, dah = self.a01_t[t], self.gates_t[t], hs[t], self.dhr_t[t]
            dh = add(dh_t[t], dhn, dhn)
            sub(h_prev, n, d)
            mul(dh, d, dz)  # dz = dh (h_{t-1} - n)
            sub(1, z, d)
            mul(dh, d, dn)  # dn = dh (1 - z)
            mul(n, n, d)
            sub(1, d, d)
            mul(dn, d, dn)  # da_n = dn (1 - n²)
            mul(dn, self.ahn_t[t], dr)  # dr = da_n (Whn h + bhn)
            sub(1, rz, d2)  # σ' = s(1-s) for r and z, one call on both blocks
            mul(d2, rz, d2)
            mul(da01, d2, da01)  # da_r, da_z
            copyto(self.dx_t[t], da_rows)  # dax, into step t's row block
            copyto(dah[..., 0:2, :], da_rows[..., 0:2, :])  # dah = [da_r, da_z, da_n r]
            mul(dn, r, dah[..., 2, :])
            if t:
                mul(dh, z, d)  # the direct path z h_{t-1}
                mm(self.dhflat_t[t], Whh, out=dhn)
                add(dhn, d, dhn)
        return self.finish_backward()

    def grad_Whh(self, dW) -> None:
        self.mm(self.dh_rows.swapaxes(-1, -2), self.hprev, out=dW.Whh)
        self.xp.add.reduce(self.dh_rows[..., 2 * self.H:], axis=-2, out=dW.bhn[..., 0]) if self.xp is np else \
            self.xp.sum(self.dh_rows[..., 2 * self.H:], axis=-2, out=dW.bhn[..., 0])
