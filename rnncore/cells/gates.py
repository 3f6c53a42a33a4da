"""What the gated cells (LSTM, GRU) share: G gate blocks per step, their buffers and their big products.

A gated layer's pre-activations are G blocks of H units, a = Wxh x + Whh h + bh with Wxh (G*H, In), Whh (G*H, H).
Each cell module writes its step's equations (lstm.py, gru.py); this module holds the layout they run on and the
products over the whole window, which are the same for every gated cell:

    input side, all steps at once   layer 0: a = Wxh[:, x] + bh, a gather of rows from a (V, H) table per gate
                                    layer l > 0: a = x Wxh^T + bh, one batched GEMM (G blocks) over T*B rows
    recurrence, one GEMM per step   h_{t-1} Whh^T, written gate-major
    backward, one GEMM per step     dh'(t-1) = da_t Whh, reading step t's row block of da
    weight gradient, one GEMM       dWhh = Σ_t da_t^T h_{t-1}, over all T*B positions

Layout (`lead` is () for one model, (K,) for K packed models):
    acts (G, *lead, T, B, H)  gate-major: step t's gate k is acts[k, ..., t, :, :], one contiguous (B, H) block,
                              so the elementwise work of a step runs on whole blocks (reading (B, H) slices of
                              a (B, G*H) row made tanh 1.5x and a multiply 1.6-2x slower, H = 256, B = 64)
    dxr  (*lead, T, B, G, H)  the gradient at a as rows, ([K,] T*B, G*H): step t's block is contiguous, so the
                              backward GEMM reads it in place and the weight gradients need no transposing copy

Two speed tricks sit behind the math, both exact:
- The recurrent GEMM reads a contiguous copy of Whh^T made once per window (`WT`): OpenBLAS ran the
  (B, H) @ (H, 4H) product in 260 us from it against 345-380 us from a transposed view (H = 256, B = 64, float32).
- σ(x) = (1 + tanh(x/2)) / 2, and the /2 is folded into those copies and the input table: halving is exact in
  binary floating point, so a step spends one tanh call on all G blocks and two passes per σ block, not four.
"""
from __future__ import annotations

import numpy as np


def take(xp, table, ids, axis: int, out) -> None:
    """out = table indexed by ids along axis (numpy's mode="clip" skips the buffered bounds check)."""
    if xp is np:
        np.take(table, ids, axis=axis, out=out, mode="clip")
    else:
        xp.take(table, ids, axis=axis, out=out)


class GatedLayer:
    """One gated layer's buffers for a (T, B) window, reused by every step. Subclasses set G and SIGMOID (the
    blocks that go through σ) and write forward and backward, one step at a time."""

    G: int
    SIGMOID: tuple[int, ...]

    def __init__(self, T: int, lead: tuple, B: int, H: int, dtype, xp=np):
        G = self.G
        self.T, self.lead, self.B, self.H, self.xp, self.dtype = T, lead, B, H, xp, dtype
        self.acts = xp.zeros((G, *lead, T, B, H), dtype)  # pre-activations, then the gates in place
        self.hs = xp.zeros((T + 1, *lead, B, H), dtype)  # hs[0] = h_{-1}, hs[t+1] = h_t
        self.dh = xp.zeros((T, *lead, B, H), dtype)  # gradient from above (filled by the model)
        self.rec = xp.zeros((G, *lead, B, H), dtype)  # h_{t-1} Whh^T, gate-major
        self.da = xp.zeros((G, *lead, B, H), dtype)  # one step's gradient at a, gate-major
        self.WT = xp.zeros((G, *lead, H, H), dtype)  # Whh_k^T per block, σ blocks halved
        self.WxT = None  # Wxh_k^T per block (layers above the first)
        self.bias = xp.zeros((G, *lead, 1, 1, H), dtype)  # bh per block, σ blocks halved (layers above the first)
        self.table = None  # (G, *lead, V, H): Wxh^T + bh per block (the first layer)
        half = np.ones(G)
        half[list(self.SIGMOID)] = 0.5
        self.half = xp.asarray(half.reshape(G, *(1 for _ in lead), 1, 1).astype(dtype))  # broadcasts over a block
        self.dxr = xp.zeros((*lead, T, B, G, H), dtype)  # the gradient at a as rows
        self.dx_rows = self.dxr.reshape(*lead, T * B, G * H)
        if lead:
            self.hprev = xp.zeros((lead[0], T * B, H), dtype)  # trial-major copy for the batched dWhh
        else:
            self.hprev = self.hs[:-1].reshape(T * B, H)
        # 2-D products: BLAS without matmul's batch overhead; numpy's method skips np.dot's dispatch
        self.mm = xp.matmul if lead else (np.ndarray.dot if xp is np else xp.dot)
        # per-step views, built once: the time loops index lists instead of slicing arrays
        self.a_t = [self.acts[..., t, :, :] for t in range(T)]  # (G, *lead, B, H)
        self.gates_t = [tuple(a[k] for k in range(G)) for a in self.a_t]
        self.a01_t = [a[0:2] for a in self.a_t]  # blocks 0 and 1 (σ in both cells): one call for the two
        self.da01 = self.da[0:2]
        self.dx_t = [self.dxr[..., t, :, :, :] for t in range(T)]  # (*lead, B, G, H)
        self.dxflat_t = [d.reshape(*lead, B, G * H) for d in self.dx_t]
        self.da_rows = xp.moveaxis(self.da, 0, -2)  # (*lead, B, G, H) view of da, copied into dxr at each step
        self.hs_t, self.dh_t = list(self.hs), list(self.dh)

    def _blocks_T(self, W, out) -> None:
        """out[k] = (Wxh or Whh) block k, transposed, halved for σ blocks: (G, *lead, H, In) -> (G, *lead, In, H)."""
        lead, G, H = self.lead, self.G, self.H
        blocks = W.reshape(*lead, G, H, W.shape[-1])
        blocks = self.xp.moveaxis(blocks, len(lead), 0).swapaxes(-1, -2)  # (G, *lead, In, H) view
        self.xp.multiply(blocks, self.half, out=out)

    def load_ids(self, W, X) -> None:
        """First layer: a = Wxh x_t + bh for one-hot x_t is row x_t of the table Wxh^T + bh, per block."""
        xp, lead, G, H = self.xp, self.lead, self.G, self.H
        V = W.Wxh.shape[-1]
        if self.table is None or self.table.shape[-2] != V:
            self.table = xp.zeros((G, *lead, V, H), self.dtype)
        wb = xp.moveaxis(W.Wxh.reshape(*lead, G, H, V), len(lead), 0)  # (G, *lead, H, V)
        bb = xp.moveaxis(W.bh.reshape(*lead, G, H, 1), len(lead), 0)
        tv = self.table.swapaxes(-1, -2)  # (G, *lead, H, V) view
        xp.add(wb, bb, out=tv)
        self.table *= self.half
        take(xp, self.table, X, 1 + len(lead), self.acts)

    def load_rows(self, W, x) -> None:
        """Layers above: a = x Wxh^T + bh from the layer below's output x ([K,] T*B, H), one GEMM per block."""
        xp, lead, G, H = self.xp, self.lead, self.G, self.H
        if self.WxT is None:
            self.WxT = xp.zeros((G, *lead, H, H), self.dtype)
        self._blocks_T(W.Wxh, self.WxT)
        xp.matmul(x, self.WxT, out=self.acts.reshape(G, *lead, self.T * self.B, H))
        bb = xp.moveaxis(W.bh.reshape(*lead, G, 1, 1, H), len(lead), 0)  # (G, *lead, 1, 1, H)
        xp.multiply(bb, self.half[..., None], out=self.bias)
        self.acts += self.bias

    def recurrent_weights(self, W) -> None:
        """Once per window: the contiguous, σ-halved copy of Whh^T that every step's GEMM reads."""
        self._blocks_T(W.Whh, self.WT)

    def finish_backward(self):
        """After the loop: the trial-major copy of h_{t-1} for packed models; returns da as rows."""
        if self.lead:
            K, T, B, H = self.lead[0], self.T, self.B, self.H
            self.hprev.reshape(K, T, B, H)[...] = self.hs[:-1].transpose(1, 0, 2, 3)
        return self.dx_rows

    def grad_Whh(self, dW) -> None:
        """dWhh = Σ_t da_t^T h_{t-1}: one GEMM over all positions."""
        self.mm(self.dx_rows.swapaxes(-1, -2), self.hprev, out=dW.Whh)
