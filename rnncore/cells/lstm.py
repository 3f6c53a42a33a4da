"""Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's gate order i, f, g, o.

    a_t = Wxh x_t + Whh h_{t-1} + bh                    Wxh (4H, In), Whh (4H, H), bh (4H, 1): blocks i, f, g, o
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

The forget-gate bias starts at 1 (Jozefowicz et al. 2015), so a fresh cell remembers by default. The carried
state is (h, c). The layout, the input side and the window-wide products are the gated cells' (cells/gates.py):
every gate of a step is one contiguous (B, H) block, and the recurrence is one GEMM per step.

Backward through time, with dh_t from above and dh', dc' carried from step t+1:
    dh = dh_t + dh'                 do = dh ⊙ tanh(c_t)            dc = dh ⊙ o ⊙ (1 - tanh²(c_t)) + dc'
    di = dc ⊙ g    df = dc ⊙ c_{t-1}    dg = dc ⊙ i                dc'(t-1) = dc ⊙ f
    da = [di ⊙ i(1-i), df ⊙ f(1-f), dg ⊙ (1-g²), do ⊙ o(1-o)]     dh'(t-1) = Whh^T da
    dWhh = Σ_t da_t h_{t-1}^T
"""
from __future__ import annotations

import numpy as np

from .gates import GatedLayer

G = 4  # gate blocks: i, f, g, o
carries = 2  # the carried state is (h, c)


def extra_biases(H: int) -> dict[str, tuple[int, int]]:
    return {}


def init_biases(bh, H: int) -> None:
    bh[..., H:2 * H, :] = 1.0  # forget gate open


class Layer(GatedLayer):
    """One layer's buffers for a (T, B) window, reused by every step."""

    G = G
    SIGMOID = (0, 1, 3)  # i, f, o

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        super().__init__(T, lead, B, H, dtype, xp)
        self.cs = xp.zeros((T + 1, *lead, B, H), dtype)  # cs[0] = c_{-1}
        self.tc = xp.zeros((T, *lead, B, H), dtype)  # tanh(c_t)
        self.tmp, self.dc, self.dcn, self.d = (xp.zeros((*lead, B, H), dtype) for _ in range(4))
        self.d2 = xp.zeros((2, *lead, B, H), dtype)
        self.cs_t, self.tc_t = list(self.cs), list(self.tc)

    def forward(self, W, state) -> None:
        """The recurrence from state = (h_{-1}, c_{-1}): fills hs, cs and the gates."""
        xp, WT, rec, tmp = self.xp, self.WT, self.rec, self.tmp
        mm, mul, add, tanh = xp.matmul, xp.multiply, xp.add, xp.tanh  # outputs by position: cheaper than out=
        self.recurrent_weights(W)
        self.hs[0], self.cs[0] = state
        hs, cs, tc = self.hs_t, self.cs_t, self.tc_t
        for t in range(self.T):
            a, i_f, (i, f, g, o) = self.a_t[t], self.a01_t[t], self.gates_t[t]
            mm(hs[t], WT, out=rec)  # h_{t-1} Whh^T, its σ blocks halved like a's
            add(a, rec, a)
            tanh(a, a)  # g = tanh(a_g); i, f, o are tanh(a/2) so far
            mul(i_f, 0.5, i_f)
            add(i_f, 0.5, i_f)  # i, f = (1 + tanh(a/2)) / 2
            mul(o, 0.5, o)
            add(o, 0.5, o)
            c = cs[t + 1]
            mul(f, cs[t], c)  # c_t = f c_{t-1} + i g
            mul(i, g, tmp)
            add(c, tmp, c)
            tanh(c, tc[t])
            mul(o, tc[t], hs[t + 1])  # h_t = o tanh(c_t)

    def final(self) -> tuple:
        return (self.hs[-1], self.cs[-1])

    def backward(self, W):
        """Through time from dh (filled by the model); returns da as ([K,] T*B, 4H) rows."""
        xp, mm = self.xp, self.mm
        mul, add, sub, copyto = xp.multiply, xp.add, xp.subtract, xp.copyto
        Whh, dh_t, cs, tc_t = W.Whh, self.dh_t, self.cs_t, self.tc_t
        dhn, dc, dcn, d, d2 = self.rec[0], self.dc, self.dcn, self.d, self.d2  # rec is free after forward
        di, df, dg, do = self.da
        da01, da_rows = self.da01, self.da_rows
        dhn.fill(0)
        dcn.fill(0)
        for t in range(self.T - 1, -1, -1):
            i_f, (i, f, g, o), tc = self.a01_t[t], self.gates_t[t], tc_t[t]
            dh = add(dh_t[t], dhn, dhn)  # dh_t + Whh^T da_{t+1}
            mul(dh, tc, do)  # do = dh tanh(c)
            mul(dh, o, dc)  # dc = dh o (1 - tanh²c) + dc'
            mul(tc, tc, d)
            sub(1, d, d)
            mul(dc, d, dc)
            add(dc, dcn, dc)
            mul(dc, g, di)
            mul(dc, cs[t], df)
            mul(dc, i, dg)
            mul(dc, f, dcn)  # dc' for step t-1
            # through the nonlinearities: σ' = s(1-s) for i, f (one call on both blocks) and o; tanh' = 1 - g²
            sub(1, i_f, d2)
            mul(d2, i_f, d2)
            mul(da01, d2, da01)
            sub(1, o, d)
            mul(d, o, d)
            mul(do, d, do)
            mul(g, g, d)
            sub(1, d, d)
            mul(dg, d, dg)
            copyto(self.dx_t[t], da_rows)  # into step t's row block, where the GEMMs read it
            if t:
                mm(self.dxflat_t[t], Whh, out=dhn)  # Whh^T da_t, for step t-1
        return self.finish_backward()
