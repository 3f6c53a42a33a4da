"""A slow, independent reference for the engine's cells (rnn, lstm, gru), stacked layers, dropout, the three
optimizers and the learning-rate schedule: the oracle for tests/test_cells.py.

Written straight from the equations of the model-family convention (the spec the engine follows), not from
rnncore's code: float64 throughout, a Python loop over time steps and over layers, the batch as the columns of
column-vector matrices (H, B) where the engine keeps rows (B, H), and BPTT written out gate by gate. Only the
layouts that cross the boundary are the engine's: parameter names and shapes (seed orientation, (out, in)),
gate order (PyTorch's: lstm i,f,g,o; gru r,z,n), the carried state (B, S*H) = [h_0 | ... | h_{L-1} | c_0 | ...
| c_{L-1}], and dropout masks (L, T, B, H) already scaled by 1 / (1 - p).

Checked against PyTorch 2.13.0 (CPU, float64 autograd), out of band: torch is not a test dependency, and the
script (scratch/torch_check.py, outside the repository) is not kept here. The spec's arrays were mapped onto
nn.RNN(tanh) / nn.LSTM / nn.GRU with num_layers = L (weight_ih_l{k} = Wxh{k}, weight_hh_l{k} = Whh{k},
bias_ih_l{k} = bh{k}[:, 0], bias_hh_l{k} = 0, or [0, 0, bhn{k}] for the GRU) plus the output Why, by; loss =
cross_entropy(reduction="sum") on one-hot inputs, gradients of loss / B, a random non-zero initial state
(h and c), weights ~ N(0, 0.25). Cells rnn, lstm, gru x layers 1, 2, 3 x B 1, 3: the loss, the last state and
every parameter gradient agreed to <= 1.4e-15 relative (max |diff| / max |torch|). With dropout masks (one
torch module per layer, the masks multiplied in between and before the output layer), layers 1, 2, B 1, 3:
the same. Whole training runs, 60 iterations on 500 characters (the data schedule with 1-3 wraps, B 1-3,
element-wise clip at 0.05 via clip_grad_value_ so thousands of entries were clipped, torch.optim.Adam /
RMSprop(alpha=0.95) / Adagrad by hand with eps inside the square root, LambdaLR for warmup + constant or
cosine, dropout 0.3 with masks drawn from the same Generator as here): per-iteration losses and final
parameters agreed to <= 4e-12 relative, for lstm/gru/rnn x 1-2 layers x adam/rmsprop/adagrad.
"""
from __future__ import annotations

import math

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks G along the first axis of Wxh, Whh, bh


def suffix(l: int) -> str:
    return "" if l == 0 else str(l)


def param_names(cell: str, layers: int) -> list[str]:
    """The spec's arrays: per layer Wxh{l}, Whh{l}, bh{l} (gru: bhn{l}), then Why, by."""
    names = []
    for l in range(layers):
        s = suffix(l)
        names += [f"Wxh{s}", f"Whh{s}", f"bh{s}"] + ([f"bhn{s}"] if cell == "gru" else [])
    return names + ["Why", "by"]


def param_shapes(cell: str, layers: int, H: int, V: int) -> dict[str, tuple[int, int]]:
    G = GATES[cell]
    shapes = {}
    for l in range(layers):
        s = suffix(l)
        shapes[f"Wxh{s}"] = (G * H, V if l == 0 else H)
        shapes[f"Whh{s}"] = (G * H, H)
        shapes[f"bh{s}"] = (G * H, 1)
        if cell == "gru":
            shapes[f"bhn{s}"] = (H, 1)
    shapes["Why"], shapes["by"] = (V, H), (V, 1)
    return shapes


def spec_init(H: int, V: int, rng: np.random.Generator, cell: str = "rnn", layers: int = 1,
              scale: float = 0.01) -> dict[str, np.ndarray]:
    """The spec's initialisation, drawn in its order: per layer Wxh then Whh, then Why; biases zero except the
    LSTM forget-gate block (rows H:2H) of every bh{l}, which starts at 1."""
    shapes = param_shapes(cell, layers, H, V)
    P = {name: np.zeros(shape) for name, shape in shapes.items()}
    for l in range(layers):
        s = suffix(l)
        P[f"Wxh{s}"] = rng.standard_normal(shapes[f"Wxh{s}"]) * scale
        P[f"Whh{s}"] = rng.standard_normal(shapes[f"Whh{s}"]) * scale
        if cell == "lstm":
            P[f"bh{s}"][H:2 * H] = 1.0
    P["Why"] = rng.standard_normal(shapes["Why"]) * scale
    return P


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def learning_rate_at(it: int, learning_rate: float, iterations: int, lr_schedule: str = "constant",
                     warmup: int = 0) -> float:
    """lr_t of the update made at iteration `it` (0-based): linear warmup, then constant or cosine to lr/10."""
    if warmup > 0 and it < warmup:
        return learning_rate * (it + 1) / warmup
    if lr_schedule == "constant":
        return learning_rate
    assert lr_schedule == "cosine", lr_schedule
    progress = min(1.0, max(0.0, (it - warmup) / max(1, iterations - warmup)))
    lr_min = learning_rate / 10
    return lr_min + (learning_rate - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def draw_masks(rng: np.random.Generator, dropout: float, layers: int, T: int, B: int, H: int) -> np.ndarray:
    """One training step's inverted-dropout masks, (L, T, B, H): mask[l, t] multiplies layer l's h_t."""
    keep = rng.random((layers, T, B, H)) >= dropout  # float64 uniform draws
    return keep / (1.0 - dropout)


class CellOracle:
    """The full training loop of the spec for one run: data schedule, window forward + BPTT, clip, optimizer,
    schedule, dropout masks from the run's Generator. Start it from the engine's initial weights (a dict of
    arrays, copied here) and a copy of the engine's Generator taken after it drew them."""

    def __init__(self, params: dict[str, np.ndarray], *, cell: str = "rnn", layers: int = 1,
                 data_ix=None, batch_size: int = 1, seq_length: int = 25, learning_rate: float = 0.1,
                 iterations: int = 10_000, optimizer: str = "adagrad", lr_schedule: str = "constant",
                 warmup: int = 0, dropout: float = 0.0, clip: float = 5.0, adagrad_eps: float = 1e-8,
                 rng: np.random.Generator | None = None):
        assert cell in GATES and optimizer in ("adagrad", "adam", "rmsprop"), (cell, optimizer)
        self.cell, self.layers = cell, layers
        self.names = param_names(cell, layers)
        assert sorted(params) == sorted(self.names), (sorted(params), self.names)
        self.P = {name: np.array(params[name], dtype=np.float64) for name in self.names}  # copies
        self.V, self.H = self.P["Why"].shape
        assert self.P["Wxh"].shape == (GATES[cell] * self.H, self.V)
        self.B, self.T = batch_size, seq_length
        self.learning_rate, self.iterations = learning_rate, iterations
        self.optimizer, self.lr_schedule, self.warmup = optimizer, lr_schedule, warmup
        self.dropout, self.clip, self.adagrad_eps = dropout, clip, adagrad_eps
        self.rng = rng
        if data_ix is not None:
            data = np.asarray(data_ix)
            self.Ls = len(data) // batch_size  # stream length: stream b reads data[b*Ls : (b+1)*Ls]
            self.streams = [data[b * self.Ls:(b + 1) * self.Ls] for b in range(batch_size)]
        self.m = {name: np.zeros_like(a) for name, a in self.P.items()}  # adagrad mem, adam's m
        self.v = {name: np.zeros_like(a) for name, a in self.P.items()}  # adam's / rmsprop's v
        self.S = 2 * layers if cell == "lstm" else layers
        self.h = np.zeros((batch_size, self.S * self.H))  # carried state, the engine's layout
        self.p, self.n = 0, 0  # data position in each stream; updates made so far

    # ------------------------------------------------------------ one window

    def loss_and_grads(self, X, Y, h0, masks=None, grad_scale: float = 1.0):
        """X, Y: (T, B) character indices; h0: (B, S*H); masks: None or (L, T, B, H).
        Returns (summed loss in nats, {name: d(loss * grad_scale)/d name}, the last state (B, S*H))."""
        P, H, V, Lyr, cell = self.P, self.H, self.V, self.layers, self.cell
        X, Y = np.asarray(X), np.asarray(Y)
        T, B = X.shape
        h0 = np.asarray(h0, dtype=np.float64)
        hprev = [h0[:, l * H:(l + 1) * H].T.copy() for l in range(Lyr)]  # (H, B) each
        cprev = [h0[:, (Lyr + l) * H:(Lyr + l + 1) * H].T.copy() for l in range(Lyr)] if cell == "lstm" else None
        mask = [[np.ones((H, B)) if masks is None else np.asarray(masks[l, t], np.float64).T for t in range(T)]
                for l in range(Lyr)]  # mask[l][t]: (H, B)

        # forward: cache[l][t] holds what the backward pass of layer l at step t needs
        cache = [[None] * T for _ in range(Lyr)]
        tops, ps = [None] * T, [None] * T
        loss = 0.0
        for t in range(T):
            x = np.zeros((V, B))  # one-hot columns
            x[X[t], np.arange(B)] = 1.0
            for l in range(Lyr):
                s = suffix(l)
                Wxh, Whh, bh = P[f"Wxh{s}"], P[f"Whh{s}"], P[f"bh{s}"]
                hp = hprev[l]
                if cell == "rnn":
                    h = np.tanh(np.dot(Wxh, x) + np.dot(Whh, hp) + bh)
                    cache[l][t] = (x, hp, h)
                elif cell == "lstm":
                    cp = cprev[l]
                    a = np.dot(Wxh, x) + np.dot(Whh, hp) + bh  # (4H, B)
                    i, f = sigmoid(a[0:H]), sigmoid(a[H:2 * H])
                    g, o = np.tanh(a[2 * H:3 * H]), sigmoid(a[3 * H:4 * H])
                    c = f * cp + i * g
                    tc = np.tanh(c)
                    h = o * tc
                    cache[l][t] = (x, hp, cp, i, f, g, o, tc)
                    cprev[l] = c
                else:  # gru
                    bhn = P[f"bhn{s}"]
                    ax = np.dot(Wxh, x) + bh  # (3H, B)
                    ah = np.dot(Whh, hp)  # (3H, B)
                    r = sigmoid(ax[0:H] + ah[0:H])
                    z = sigmoid(ax[H:2 * H] + ah[H:2 * H])
                    hn = ah[2 * H:3 * H] + bhn
                    n = np.tanh(ax[2 * H:3 * H] + r * hn)
                    h = (1.0 - z) * n + z * hp
                    cache[l][t] = (x, hp, r, z, n, hn)
                hprev[l] = h
                x = h * mask[l][t]  # dropped-out output: the next layer's input, or the output layer's
            tops[t] = x
            y = np.dot(P["Why"], x) + P["by"]  # (V, B)
            e = np.exp(y - y.max(axis=0, keepdims=True))
            ps[t] = e / e.sum(axis=0, keepdims=True)
            for b in range(B):
                loss += -math.log(ps[t][Y[t, b], b])

        # backward through time: at each step from the output layer down, each layer's dhnext/dcnext from t+1
        d = {name: np.zeros_like(a) for name, a in P.items()}
        dhnext = [np.zeros((H, B)) for _ in range(Lyr)]
        dcnext = [np.zeros((H, B)) for _ in range(Lyr)]
        for t in reversed(range(T)):
            dy = ps[t].copy()
            dy[Y[t], np.arange(B)] -= 1.0
            d["Why"] += np.dot(dy, tops[t].T)
            d["by"] += dy.sum(axis=1, keepdims=True)
            dx = np.dot(P["Why"].T, dy)  # d loss / d (dropped-out top output)
            for l in reversed(range(Lyr)):
                s = suffix(l)
                Wxh, Whh = P[f"Wxh{s}"], P[f"Whh{s}"]
                dh = dx * mask[l][t] + dhnext[l]
                if cell == "rnn":
                    x, hp, h = cache[l][t]
                    da = (1.0 - h * h) * dh
                    dax = dah = da
                elif cell == "lstm":
                    x, hp, cp, i, f, g, o, tc = cache[l][t]
                    do = dh * tc
                    dc = dcnext[l] + dh * o * (1.0 - tc * tc)
                    di, df, dg = dc * g, dc * cp, dc * i
                    dcnext[l] = dc * f
                    da = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g),
                                         do * o * (1.0 - o)])  # (4H, B)
                    dax = dah = da
                else:  # gru
                    x, hp, r, z, n, hn = cache[l][t]
                    dn = dh * (1.0 - z)
                    dz = dh * (hp - n)
                    dan = dn * (1.0 - n * n)  # pre-activation of n
                    dr = dan * hn
                    dhn = dan * r  # d (ah_n + bhn)
                    dar, daz = dr * r * (1.0 - r), dz * z * (1.0 - z)
                    dax = np.concatenate([dar, daz, dan])  # (3H, B)
                    dah = np.concatenate([dar, daz, dhn])
                    d[f"bhn{s}"] += dhn.sum(axis=1, keepdims=True)
                d[f"Wxh{s}"] += np.dot(dax, x.T)
                d[f"Whh{s}"] += np.dot(dah, hp.T)
                d[f"bh{s}"] += dax.sum(axis=1, keepdims=True)
                dhnext[l] = np.dot(Whh.T, dah) + (dh * z if cell == "gru" else 0.0)
                dx = np.dot(Wxh.T, dax)  # to the layer below (unused for the one-hot input)
        for name in d:
            d[name] *= grad_scale
        last = np.concatenate([hh.T for hh in hprev] + ([cc.T for cc in cprev] if cell == "lstm" else []), axis=1)
        return loss, d, last

    # ------------------------------------------------------------ one training iteration

    def lr_t(self, it: int) -> float:
        return learning_rate_at(it, self.learning_rate, self.iterations, self.lr_schedule, self.warmup)

    def step(self) -> float:
        """One iteration of the spec's training loop; returns its loss in nats/char (loss sum / (T * B))."""
        T, B = self.T, self.B
        if self.p + T + 1 >= self.Ls or self.n == 0:
            self.h = np.zeros_like(self.h)  # wrap: every stream starts over from a zero state
            self.p = 0
        masks = draw_masks(self.rng, self.dropout, self.layers, T, B, self.H) if self.dropout > 0 else None
        X = np.stack([s[self.p:self.p + T] for s in self.streams], axis=1)  # (T, B)
        Y = np.stack([s[self.p + 1:self.p + T + 1] for s in self.streams], axis=1)
        loss, grads, self.h = self.loss_and_grads(X, Y, self.h, masks, 1.0 / B)
        lr, t = self.lr_t(self.n), self.n + 1
        for name in self.names:
            p, g, m, v = self.P[name], np.clip(grads[name], -self.clip, self.clip), self.m[name], self.v[name]
            if self.optimizer == "adagrad":
                m += g * g
                p -= lr * g / np.sqrt(m + self.adagrad_eps)
            elif self.optimizer == "adam":
                m[...] = 0.9 * m + 0.1 * g
                v[...] = 0.999 * v + 0.001 * g * g
                mhat, vhat = m / (1.0 - 0.9 ** t), v / (1.0 - 0.999 ** t)
                p -= lr * mhat / (np.sqrt(vhat) + 1e-8)
            else:  # rmsprop
                v[...] = 0.95 * v + 0.05 * g * g
                p -= lr * g / (np.sqrt(v) + 1e-8)
        self.p += T
        self.n += 1
        return loss / (T * B)
