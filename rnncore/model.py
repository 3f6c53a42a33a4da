"""The model: stacked recurrent layers, dropout between them, and the seed's output layer.

    x_t^0 = onehot(char_t)                              layer 0 reads characters: Wxh x is a column gather
    h_t^l = cell(Wxh^l x_t^l + bh^l, h_{t-1}^l)         rnncore.cells: rnn (the seed's tanh), lstm, gru
    x_t^{l+1} = dropout(h_t^l)                          inverted dropout, training only
    y_t = Why dropout(h_t^{L-1}) + by,  p_t = softmax(y_t),  loss = -sum_t log p_t[target_t]

With one rnn layer and no dropout this is min-char-rnn exactly. Only the recurrences are sequential: the input
projections, the output layer and all weight gradients are one GEMM (or gather) over all T*B positions, and
every buffer is allocated once (Workspace). Arrays keep the seed's orientation, (out, in): Wxh (G*H, V),
Whh (G*H, H), Why (V, H), bh (G*H, 1), by (V, 1), where G is the cell's number of gate blocks; layer l > 0
has Wxh{l} (G*H, H), Whh{l}, bh{l}. Hidden states run as rows, h (B, H), so h @ Whh.T is the seed's Whh @ h
for B columns at once. The carried state is (B, S*H): every layer's h, then (LSTM) every layer's c.

Packing: with K trials of the same shapes, every array gets a leading trial axis (Wxh (K,G*H,V), h (K,B,H))
and the GEMMs become batched matmuls, so one step trains K models at once. The array module `xp` is numpy
or CuPy; the same code runs on both.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .cells import CELLS
from .cells.rnn import trial_major


def shapes(H: int, V: int, cell: str = "rnn", layers: int = 1) -> dict[str, tuple[int, int]]:
    """Every array's name and shape, in storage order (one rnn layer: the seed's Wxh, Whh, Why, bh, by)."""
    c = CELLS[cell]
    weights, biases = {}, {}
    for l in range(layers):
        s = str(l) if l else ""
        weights[f"Wxh{s}"], weights[f"Whh{s}"] = (c.G * H, H if l else V), (c.G * H, H)
        biases[f"bh{s}"] = (c.G * H, 1)
        biases.update({name + s: shape for name, shape in c.extra_biases(H).items()})
    return {**weights, "Why": (V, H), **biases, "by": (V, 1)}


def array_module(a):
    """numpy, or cupy for a CuPy array (found without importing CuPy when it isn't in use)."""
    return np if isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] != "cupy" else __import__("cupy")


def to_numpy(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


HUGE_PAGE = 1 << 21  # bytes: a transparent huge page on x86-64 Linux
NUMPY_HUGEPAGE_MIN = 1 << 22  # numpy asks Linux for huge pages (madvise) for allocations of at least 4 MiB


def flat_zeros(n: int, dtype, xp=np):
    """A zeroed 1-D array for parameter-sized data: weights, gradients, optimizer memories, scratch.

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
    """Every array of a model as views into one flat vector, so clipping and the optimizers are single array ops.

    K = None: one model. K = k: k packed models, each array with a leading trial axis.
    """

    NAMES = ("Wxh", "Whh", "Why", "bh", "by")  # the seed's model: one rnn layer

    def __init__(self, flat, H: int, V: int, K: int | None = None, cell: str = "rnn", layers: int = 1):
        self.flat = flat  # every parameter back to back, each array's K copies together
        self.hidden_size, self.vocab_size, self.K, self.cell, self.num_layers = H, V, K, cell, layers
        self.names = tuple(shapes(H, V, cell, layers))
        lead, off = (() if K is None else (K,)), 0
        for name, shape in shapes(H, V, cell, layers).items():
            n = (K or 1) * shape[0] * shape[1]
            setattr(self, name, flat[off: off + n].reshape(lead + shape))
            off += n
        self._layers = [self._layer_views(l) for l in range(layers)]

    @property
    def layout(self) -> dict:
        return {"H": self.hidden_size, "V": self.vocab_size, "cell": self.cell, "layers": self.num_layers}

    def layer(self, l: int) -> SimpleNamespace:
        """Layer l's arrays under their layer-free names: Wxh, Whh, bh (and a GRU's bhn)."""
        return self._layers[l]

    def _layer_views(self, l: int) -> SimpleNamespace:
        s = str(l) if l else ""
        return SimpleNamespace(**{n[:-len(s)] if s else n: getattr(self, n) for n in self.names
                                  if n not in ("Why", "by") and n.lstrip("Wxhbn") == s})

    @staticmethod
    def size(H: int, V: int, K: int | None = None, cell: str = "rnn", layers: int = 1) -> int:
        return (K or 1) * sum(a * b for a, b in shapes(H, V, cell, layers).values())

    @classmethod
    def zeros(cls, H: int, V: int, dtype, K: int | None = None, xp=np, cell: str = "rnn", layers: int = 1) -> "Params":
        return cls(flat_zeros(cls.size(H, V, K, cell, layers), dtype, xp), H, V, K, cell, layers)

    @classmethod
    def from_arrays(cls, Wxh, Whh, Why, bh, by, dtype=None) -> "Params":
        """The seed's model from its five arrays."""
        return cls.from_named(dict(Wxh=Wxh, Whh=Whh, Why=Why, bh=bh, by=by), dtype=dtype)

    @classmethod
    def from_named(cls, arrays: dict, cell: str = "rnn", layers: int = 1, dtype=None) -> "Params":
        H, V = arrays["Whh"].shape[1], arrays["Why"].shape[0]
        P = cls.zeros(H, V, dtype or arrays["Whh"].dtype, None, np, cell, layers)
        for name in P.names:
            getattr(P, name)[...] = arrays[name]
        return P

    @classmethod
    def stack(cls, members: list["Params"], xp=np) -> "Params":
        """K single models packed into one (copied to xp's device)."""
        m0 = members[0]
        P = cls.zeros(m0.hidden_size, m0.vocab_size, m0.flat.dtype, len(members), xp, m0.cell, m0.num_layers)
        for name in P.names:
            getattr(P, name)[...] = xp.asarray(np.stack([to_numpy(getattr(m, name)) for m in members]))
        return P

    def member(self, k: int) -> "Params":
        """A numpy copy of packed model k."""
        return Params.from_named({n: to_numpy(getattr(self, n)[k]) for n in self.names}, self.cell, self.num_layers)

    def arrays(self) -> list:
        return [getattr(self, n) for n in self.names]

    def like(self, flat) -> "Params":
        return Params(flat, self.hidden_size, self.vocab_size, self.K, self.cell, self.num_layers)

    def zeros_like(self) -> "Params":
        return self.like(flat_zeros(self.flat.size, self.flat.dtype, array_module(self.flat)))

    def copy(self) -> "Params":
        P = self.zeros_like()
        P.flat[...] = self.flat
        return P


def init_params(H: int, V: int, rng: np.random.Generator, dtype="float64", scale: float = 0.01,
                cell: str = "rnn", layers: int = 1) -> Params:
    """Weights ~ randn * scale, drawn layer by layer (Wxh, Whh), then Why: for one rnn layer the seed's order.
    Biases zero, except an LSTM's forget gate (cells.lstm.init_biases)."""
    P = Params.zeros(H, V, dtype, None, np, cell, layers)
    for name in [n for n in P.names if n.startswith(("Wxh", "Whh"))] + ["Why"]:
        getattr(P, name)[...] = rng.standard_normal(getattr(P, name).shape) * scale
    for l in range(layers):
        CELLS[cell].init_biases(P.layer(l).bh, H)
    return P


class Workspace:
    """Buffers for one (T, B, H, V, dtype[, K], cell, layers), reused by every step."""

    def __init__(self, T: int, B: int, H: int, V: int, dtype, K: int | None = None, xp=np,
                 cell: str = "rnn", layers: int = 1):
        self.T, self.B, self.H, self.V, self.K, self.xp, self.dtype = T, B, H, V, K, xp, dtype
        self.cell, self.num_layers, c = cell, layers, CELLS[cell]
        lead = () if K is None else (K,)
        self.layers = [c.Layer(T, lead, B, H, dtype, xp) for _ in range(layers)]
        self.hs = self.layers[0].hs  # one layer: (T+1, [K,] B, H), hs[0] = h_{-1}, hs[t+1] = h_t
        self.probs = xp.zeros((*lead, T * B, V), dtype)  # softmax outputs, then dy in place
        self.rowmax = xp.zeros((*lead, T * B, 1), dtype)
        self.rows = xp.arange(T * B)
        self.row_starts = self.rows * V  # where each row of a (TB, V) block starts in its flat view
        self.cols = xp.arange(c.G * H) * V  # offsets of the rows of a row-major (G*H, V) array
        self.grads = Params.zeros(H, V, dtype, K, xp, cell, layers)
        self.drop = [None] * layers  # h * mask per layer, allocated when dropout is first used
        if K is None:  # one model: (TB, H) views of the time-major buffers are free
            self.mm = np.ndarray.dot if xp is np else xp.dot
            self.h_rows = [layer.hs[1:].reshape(T * B, H) for layer in self.layers]  # each layer's output
            self.dh_rows = [layer.dh.reshape(T * B, H) for layer in self.layers]  # and the gradient into it
        else:  # packed: trial-major copies for the batched products
            self.kofs = (xp.arange(K) * c.G * H * V)[:, None, None]  # where each trial's Wxh starts
            self.mm = xp.matmul
            self.xin = [xp.zeros((K, T * B, H), dtype) for _ in range(layers)]  # layer l's output, trial-major
            self.dxin = xp.zeros((K, T * B, H), dtype)
        self.amax = np.maximum.reduce if xp is np else xp.max  # ufunc reduce skips numpy's wrapper
        # float32 on the CPU: a shifted logit below this is a probability below 2^-63 (sqrt of the smallest normal
        # number), which the softmax turns into an exact 0. See _flush_negligible.
        self.floor = float(np.log(np.sqrt(np.finfo(np.float32).tiny))) if xp is np and np.dtype(dtype) == np.float32 \
            else None
        self.asum = np.add.reduce if xp is np else xp.sum
        # dWxh of the first layer adds each position's row of dx into the column of the character it read:
        # - a GPU does better with one GEMM against a one-hot matrix of the inputs than with atomics piling
        #   onto few addresses (cost ~ T*B*G*H*V, so small V only);
        # - numpy's add.at scatters element by element, ~5 ns each: fine for the seed's cell (G = 1), but 16 ms
        #   a step for an LSTM at H = 256, B = 64, T = 50; there the rows are summed per character instead (below).
        self.onehot = xp.zeros((T * B, V), dtype) if xp is not np and V <= 1024 else None
        self.vocab_ids = xp.arange(V)
        self.by_char = xp is np and c.G > 1
        self.char_sums = xp.zeros((*lead, V, c.G * H), dtype) if self.by_char else None
        self.char_rows = None  # one character's rows of dx, grown to the most positions one character has had

    def out(self, l: int, masks):
        """Layer l's output over the window, (T, [K,] B, H): h, or h * mask under dropout."""
        hs = self.layers[l].hs[1:]
        if masks is None:
            return hs
        if self.drop[l] is None:
            self.drop[l] = self.xp.zeros_like(hs)
        return self.xp.multiply(hs, masks[l], out=self.drop[l])

    def out_rows(self, l: int, masks):
        """Layer l's output as ([K,] TB, H) rows for a GEMM."""
        if masks is None and self.K is None:
            return self.h_rows[l]
        o = self.out(l, masks)
        if self.K is None:
            return o.reshape(self.T * self.B, self.H)
        trial_major(self.xin[l], o)
        return self.xin[l]

    def load_state(self, h0) -> list[tuple]:
        """The carried state (..., S*H) cut into each layer's (h,) or (h, c)."""
        H, L, n = self.H, self.num_layers, CELLS[self.cell].carries
        if L == 1 and n == 1:
            return [(h0,)]
        return [tuple(h0[..., (j * L + l) * H: (j * L + l + 1) * H] for j in range(n)) for l in range(L)]

    def final_into(self, h) -> None:
        """Write the window's final state into the carried state h (..., S*H)."""
        H, L = self.H, self.num_layers
        if L == 1 and CELLS[self.cell].carries == 1:
            h[...] = self.layers[0].hs[-1]
            return
        for l, layer in enumerate(self.layers):
            for j, a in enumerate(layer.final()):
                h[..., (j * L + l) * H: (j * L + l + 1) * H] = a


def _time_major(dst, src_km) -> None:
    """(K, T*B, X) trial-major -> (T, K, B, X) time-major."""
    T, K, B, X = dst.shape
    dst[...] = src_km.reshape(K, T, B, X).transpose(1, 0, 2, 3)


def forward(P: Params, X, h0, ws: Workspace, masks=None):
    """Every layer over the window from the carried state h0; returns the top layer's output as rows."""
    for l, (layer, state) in enumerate(zip(ws.layers, ws.load_state(h0))):
        W = P.layer(l)
        if l == 0:  # the input layer for all steps at once: columns of Wxh picked by the one-hot inputs
            layer.load_ids(W, X)
        else:  # Wxh^l x^l for all steps: one GEMM over the layer below's output
            layer.load_rows(W, ws.out_rows(l - 1, masks))
        layer.forward(W, state)
    return ws.out_rows(ws.num_layers - 1, masks)


def loss_and_grads(P: Params, X, Y, h0, ws: Workspace, grad_scale: float = 1.0, masks=None):
    """Forward and backward over one window; returns the summed loss (nats) and leaves grads in ws.grads.

    X, Y: (T, B) input and target indices (shared by packed trials); h0: (B, S*H), or (K, B, S*H) packed.
    ws.final_into(h) reads the final state. grad_scale multiplies dy (1 for the seed; 1/B averages the B
    streams). masks: None, or the dropout masks (L, T, [K,] B, H), already scaled by 1 / (1 - dropout).
    Returns a float, or a (K,) array of per-trial sums when packed.
    """
    K, xp, mm, L = ws.K, ws.xp, ws.mm, ws.num_layers
    hflat = forward(P, X, h0, ws, masks)

    # output layer over all T*B positions: one GEMM, a stable softmax, the loss
    probs = ws.probs
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
    if ws.floor is not None:
        _flush_negligible(probs, ws.floor)
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
    _rows_into(ws, L - 1, dy, P.Why, masks)  # gradient into the top layer's h

    # down the layers: each cell back through time, then its input-side gradients as GEMMs
    for l in range(L - 1, -1, -1):
        layer, W, dW = ws.layers[l], P.layer(l), G.layer(l)
        dx = layer.backward(W)  # ([K,] TB, G*H) gradient at Wxh x + bh
        if l:
            ws.asum(dx, axis=-2, out=dW.bh[..., 0])
            layer.grad_Whh(dW)
            mm(dx.swapaxes(-1, -2), ws.out_rows(l - 1, masks), out=dW.Wxh)  # sum_t dx_t x_t^T
            _rows_into(ws, l - 1, dx, W.Wxh, masks)
        else:
            _first_layer_grads(ws, X, dx, dW)
            layer.grad_Whh(dW)
    return float(loss) if K is None else loss


def _first_layer_grads(ws: Workspace, X, dx, dW) -> None:
    """dbh = sum_t dx_t, and dWxh, whose column v sums dx's rows at the positions that read character v."""
    if ws.by_char:  # dbh is then the sum of the V sums: each position read exactly one character
        _sum_by_char(ws, X, dx, dW.Wxh)
        ws.asum(ws.char_sums, axis=-2, out=dW.bh[..., 0])
        return
    ws.asum(dx, axis=-2, out=dW.bh[..., 0])
    if ws.onehot is not None:  # one GEMM against the one-hot inputs
        ws.xp.equal(X.reshape(-1, 1), ws.vocab_ids, out=ws.onehot)  # (TB, V), cast to the float dtype
        ws.mm(dx.swapaxes(-1, -2), ws.onehot, out=dW.Wxh)
        return
    dW.Wxh.fill(0)  # the seed's scatter: element by element
    idx = X.reshape(-1, 1) + ws.cols  # (TB, G*H)
    if ws.K is not None:
        idx = idx[None] + ws.kofs  # (K, TB, G*H)
    ws.xp.add.at(dW.Wxh.reshape(-1), idx.reshape(-1), dx.reshape(-1))


def _flush_negligible(z, floor: float) -> None:
    """Shifted logits below floor become -inf, so that their probabilities are exact zeros instead of numbers
    below 2^-63 (float32).

    Why: dWhy = dy^T h multiplies each probability by every hidden unit. A confident model has probabilities
    of 1e-32 and an LSTM has units near 1e-11 (an output gate shut), so those products fall below float32's
    smallest normal number, and this CPU computes such subnormal numbers some 30x slower: the (V, TB) @ (TB, H)
    product took 30 ms instead of 1.1 (LSTM, H = 256, B = 64, T = 50, Adagrad at 0.1, where 130 of 256 units
    shut and 3 of 65 characters sit at 1e-32). What it changes: dWhy and dby lose terms of at most 2^-63 per
    position, next to probabilities of at least 1/V; every optimizer's eps keeps the step such terms could make
    below 1e-10 x learning_rate, under float32's resolution of a weight. The loss is computed from the logits
    and does not change. The cost: one reduction when nothing is that small (the seed's cell, early training),
    one masked write when something is.
    """
    if np.minimum.reduce(z, axis=None) < floor:
        np.copyto(z, -np.inf, where=z < floor)


def _sum_by_char(ws: Workspace, X, dx, dWxh) -> None:
    """dWxh[:, v] = sum of dx's rows at the positions that read v: the rows gathered character by character into
    a block that stays in cache, each block summed in one reduction. Per character the rows are added in
    position order, as add.at adds them. (H = 256 LSTM, B = 64, T = 50: 2-3 ms against add.at's 16 ms.)"""
    x = X.reshape(-1)
    order = np.argsort(x, kind="stable")
    counts = np.bincount(x, minlength=ws.V)
    most = int(counts.max())
    if ws.char_rows is None or ws.char_rows.shape[-2] < most:
        ws.char_rows = np.zeros(dx.shape[:-2] + (most, dx.shape[-1]), dx.dtype)
    sums, start = ws.char_sums, 0
    for v, n in enumerate(counts.tolist()):
        if n == 0:
            sums[..., v, :] = 0
            continue
        rows = ws.char_rows[..., :n, :]
        np.take(dx, order[start:start + n], axis=-2, out=rows, mode="clip")
        np.add.reduce(rows, axis=-2, out=sums[..., v, :])
        start += n
    dWxh[...] = sums.swapaxes(-1, -2)


def _rows_into(ws: Workspace, l: int, a, b, masks) -> None:
    """Layer l's dh (its gradient from above) = a @ b, ([K,] TB, H) rows, through layer l's dropout mask."""
    dh = ws.layers[l].dh
    if ws.K is None:
        ws.mm(a, b, out=ws.dh_rows[l])
    else:
        ws.mm(a, b, out=ws.dxin)
        _time_major(dh, ws.dxin)
    if masks is not None:
        dh *= masks[l]


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
    chunk = max(1, min(chunk, (1 << 22) // max(1, S * V * (K or 1)), Ls))  # keep the logits block modest
    lead = () if K is None else (K,)
    state = xp.zeros((*lead, S, state_size(P)), P.flat.dtype)
    WhyT, by = P.Why.swapaxes(-1, -2), P.by.swapaxes(-1, -2)
    workspaces: dict[int, Workspace] = {}
    total = xp.zeros(lead, np.float64)
    for c0 in range(0, Ls, chunk):
        x, y, m = X[c0:c0 + chunk], Y[c0:c0 + chunk], mask[c0:c0 + chunk]
        Tc = len(x)
        if Tc not in workspaces:
            workspaces[Tc] = Workspace(Tc, S, H, V, P.flat.dtype, K, xp, P.cell, P.num_layers)
        ws = workspaces[Tc]
        hk = forward(P, x, state, ws)  # ([K,] Tc*S, H)
        ws.final_into(state)
        logits = ws.mm(hk, WhyT) + by  # ([K,] Tc*S, V)
        mx = logits.max(axis=-1, keepdims=True)
        lse = xp.log(xp.exp(logits - mx).sum(axis=-1)) + mx[..., 0]
        nll = lse - logits[..., xp.arange(logits.shape[-2]), y.reshape(-1)]
        total += nll[..., m.reshape(-1)].sum(axis=-1)
    out = to_numpy(total) / n
    return float(out) if K is None else out


def state_size(P: Params) -> int:
    """S*H: the carried state's width (every layer's h, and an LSTM's c)."""
    return P.hidden_size * P.num_layers * CELLS[P.cell].carries


def _host64(P: Params) -> Params:
    """A float64 numpy copy, for sampling."""
    return P.like(np.asarray(to_numpy(P.flat), np.float64)) if P.K is None else P


def sample(P: Params, h: np.ndarray | None, seed_ix: int, n: int, rng: np.random.Generator,
           temperature: float = 1.0) -> list[int]:
    """n indices drawn one at a time, feeding each back in (the seed's sample, with a temperature)."""
    P = _host64(P)
    S = state_size(P)
    h = np.zeros((1, S)) if h is None else np.asarray(h, dtype=np.float64).reshape(1, S).copy()
    ws = Workspace(1, 1, P.hidden_size, P.vocab_size, "float64", cell=P.cell, layers=P.num_layers)
    Why, by = P.Why, P.by[:, 0]
    x = np.zeros((1, 1), np.int64)
    ix, out = seed_ix, []
    for _ in range(n):
        x[0, 0] = ix
        top = forward(P, x, h, ws)[0]  # (H,)
        ws.final_into(h)
        y = (Why @ top + by) / temperature
        p = np.exp(y - y.max())
        cdf = np.cumsum(p)
        ix = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        ix = min(ix, len(cdf) - 1)
        out.append(ix)
    return out


def advance(P: Params, h: np.ndarray | None, ids) -> np.ndarray:
    """Run the carried state (S*H,) over ids without sampling (priming text)."""
    P = _host64(P)
    S = state_size(P)
    h = np.zeros((1, S)) if h is None else np.asarray(h, dtype=np.float64).reshape(1, S).copy()
    ids = np.asarray(ids).reshape(-1, 1)
    if len(ids):
        ws = Workspace(len(ids), 1, P.hidden_size, P.vocab_size, "float64", cell=P.cell, layers=P.num_layers)
        forward(P, ids, h, ws)
        ws.final_into(h)
    return h[0]
