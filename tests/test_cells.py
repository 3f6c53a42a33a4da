"""LSTM and GRU cells, stacked layers, dropout, Adam/RMSprop and the lr schedule, against tests/cell_oracle.py.

The oracle is written from the equations of the convention and was checked against PyTorch's autograd out of
band (its docstring says what and how closely); these tests hold the engine to it: the initial weights, one
window's loss and gradients (the gradients also against central differences, which need no oracle), and whole
training runs that compare every step of the data schedule, the optimizers, the schedule and dropout's draws.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from cell_oracle import CellOracle, draw_masks, learning_rate_at, param_names, param_shapes, spec_init
from helpers import rel_diff
from rnncore import TrainConfig, Trainer, make_corpus
from rnncore.model import Params, Workspace, init_params, loss_and_grads
from seed_oracle import SeedRNN

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"
CELLS = ("rnn", "lstm", "gru")


def as_dict(P: Params) -> dict[str, np.ndarray]:
    return {name: np.array(getattr(P, name), dtype=np.float64) for name in P.names}


def random_params(cell: str, layers: int, H: int, V: int, seed: int, scale: float = 0.5) -> Params:
    """Weights large enough that every gate is well inside its nonlinear range; random biases too, so their
    gradients are not those of a zero start."""
    rng = np.random.default_rng(seed)
    P = init_params(H, V, rng, "float64", scale, cell=cell, layers=layers)
    for name in P.names:
        if name.startswith("b"):  # bh{l}, bhn{l}, by
            A = getattr(P, name)
            A[...] = rng.standard_normal(A.shape) * 0.3
    return P


def state_width(cell: str, layers: int, H: int) -> int:
    return (2 * layers if cell == "lstm" else layers) * H  # S*H: [h_0 | ... | h_{L-1} | lstm: c_0 | ...]


def window(cell: str, layers: int, B: int, dropout: bool, seed: int, H: int = 5, V: int = 10, T: int = 4):
    """A random window: params, inputs, targets, a non-zero initial state and (maybe) dropout masks."""
    P = random_params(cell, layers, H, V, seed)
    rng = np.random.default_rng(seed + 1000)
    X = rng.integers(0, V, (T, B)).astype(np.int32)
    Y = rng.integers(0, V, (T, B)).astype(np.int32)
    h0 = np.tanh(rng.standard_normal((B, state_width(cell, layers, H))))
    masks = draw_masks(rng, 0.4, layers, T, B, H) if dropout else None
    ws = Workspace(T, B, H, V, "float64", cell=cell, layers=layers)
    return P, X, Y, h0, masks, ws


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_init_params_follow_the_spec_draw_order(cell, layers):
    H, V = 6, 11
    P = init_params(H, V, np.random.default_rng(3), "float64", 0.07, cell=cell, layers=layers)
    want = spec_init(H, V, np.random.default_rng(3), cell, layers, 0.07)
    assert sorted(P.names) == sorted(param_names(cell, layers))
    for name, shape in param_shapes(cell, layers, H, V).items():
        A = getattr(P, name)
        assert A.shape == shape and A.dtype == np.float64, (name, A.shape, A.dtype)
        np.testing.assert_array_equal(A, want[name], err_msg=name)
    P32 = init_params(H, V, np.random.default_rng(3), "float32", 0.07, cell=cell, layers=layers)
    for name in P32.names:
        A = getattr(P32, name)
        assert A.dtype == np.float32, name
        np.testing.assert_array_equal(A, want[name].astype(np.float32), err_msg=name)


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 2), ("rnn", 2)])
def test_trainer_starts_from_the_spec_init_and_state(cell, layers):
    text = SHAKESPEARE.read_text(encoding="utf-8")[:400]
    cfg = TrainConfig(cell=cell, num_layers=layers, hidden_size=7, batch_size=3, seed=5, init_scale=0.02)
    tr = Trainer(cfg, make_corpus(text, 0.1))
    rng = np.random.default_rng(5)
    want = spec_init(7, tr.corpus.vocab.size, rng, cell, layers, 0.02)
    for name, A in want.items():
        np.testing.assert_array_equal(getattr(tr.state.params, name), A, err_msg=name)
    assert tr.state.h.shape == (3, state_width(cell, layers, 7)) and not tr.state.h.any()
    # the run's Generator has drawn exactly the init weights, nothing else
    assert tr.state.rng.bit_generator.state == rng.bit_generator.state


# ---------------------------------------------------------------- one window: engine vs oracle


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "masks"])
def test_loss_and_grads_match_oracle(cell, layers, B, dropout):
    P, X, Y, h0, masks, ws = window(cell, layers, B, dropout, seed=layers * 10 + B, H=6, V=9, T=5)
    oracle = CellOracle(as_dict(P), cell=cell, layers=layers)
    want_loss, want, _ = oracle.loss_and_grads(X, Y, h0, masks, 1.0 / B)
    loss = loss_and_grads(P, X, Y, h0, ws, 1.0 / B, masks=masks)
    assert loss == pytest.approx(want_loss, rel=1e-12, abs=0)
    errs = {name: rel_diff(getattr(ws.grads, name), want[name]) for name in want}
    assert max(errs.values()) < 1e-12, errs


# ---------------------------------------------------------------- central differences


def entries(A: np.ndarray, rng: np.random.Generator, limit: int, columns=None) -> list[tuple]:
    """Every index of A, or `limit` of them drawn at random (restricted to `columns` when given)."""
    idx = [i for i in np.ndindex(A.shape) if columns is None or i[1] in columns]
    if len(idx) <= limit:
        return idx
    return [idx[k] for k in rng.choice(len(idx), limit, replace=False)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "masks"])
def test_gradients_match_central_differences(cell, layers, B, dropout):
    P, X, Y, h0, masks, ws = window(cell, layers, B, dropout, seed=100 + layers * 10 + B)
    scale = 1.0 / B  # the trainer's grad_scale
    loss_and_grads(P, X, Y, h0, ws, scale, masks=masks)
    G = {name: getattr(ws.grads, name).copy() for name in P.names}
    assert all(np.all(np.isfinite(g)) for g in G.values())

    # 5-point stencil: truncation O(eps^4), so eps can be large enough that the loss's rounding error
    # (~1e-15 relative) stays far below the tolerance even for small entries
    eps = 1e-3
    pick = np.random.default_rng(7)
    worst = {}
    for name in P.names:
        A = getattr(P, name)
        # the input weights of layer 0 only see the characters read; 30 entries of each array keep it fast
        cols = set(X.ravel().tolist()) if name == "Wxh" else None
        checked, w = 0, 0.0
        for idx in entries(A, pick, 30, cols):
            old = A[idx]

            def f(d):
                A[idx] = old + d
                return loss_and_grads(P, X, Y, h0, ws, scale, masks=masks)

            num = (8 * (f(eps) - f(-eps)) - (f(2 * eps) - f(-2 * eps))) / (12 * eps) * scale
            A[idx] = old
            ana = G[name][idx]
            if ana == 0.0 and num == 0.0:
                continue
            # relative error, but below 1e-4 (typical entries are ~1e-2) an absolute 1e-10: the stencil's
            # rounding noise is ~1e-12 absolute (measured on the oracle), which a 1e-6 gradient would turn
            # into a relative 1e-6 on its own
            w = max(w, abs(ana - num) / max(abs(ana) + abs(num), 1e-4))
            checked += 1
        assert checked > 0, name
        worst[name] = w
    assert all(w < 1e-6 for w in worst.values()), worst


def test_dropout_masks_change_the_gradients():
    """Guards the masked cases above: the masks really reach the engine."""
    P, X, Y, h0, masks, ws = window("lstm", 2, 3, True, seed=1)
    loss_masked = loss_and_grads(P, X, Y, h0, ws, 1.0, masks=masks)
    g_masked = ws.grads.flat.copy()
    loss_plain = loss_and_grads(P, X, Y, h0, ws, 1.0)
    assert loss_masked != pytest.approx(loss_plain, rel=1e-6)
    assert not np.allclose(g_masked, ws.grads.flat)
    ones = np.ones_like(masks)
    assert loss_and_grads(P, X, Y, h0, ws, 1.0, masks=ones) == pytest.approx(loss_plain, rel=1e-14)


# ---------------------------------------------------------------- whole runs: Trainer vs oracle


@pytest.fixture(scope="module")
def text450() -> str:
    """450 characters: with val 0.1 and B = 2 each stream holds 202, so a 50-iteration run at T = 10 wraps at
    iterations 20 and 40 (p + T + 1 >= L at p = 200)."""
    return SHAKESPEARE.read_text(encoding="utf-8")[:450]


# (cell, layers, batch, optimizer, schedule, warmup, dropout, clip)
RUNS = [
    ("lstm", 1, 2, "adam", "cosine", 5, 0.0, 5.0),
    ("lstm", 2, 2, "adam", "cosine", 5, 0.0, 5.0),
    ("gru", 1, 2, "adam", "cosine", 5, 0.0, 5.0),
    ("gru", 2, 3, "adam", "cosine", 5, 0.0, 5.0),
    ("rnn", 2, 2, "adam", "cosine", 5, 0.0, 5.0),
    ("lstm", 2, 2, "adam", "cosine", 5, 0.3, 5.0),
    ("gru", 2, 2, "adam", "cosine", 5, 0.3, 5.0),
    ("rnn", 1, 2, "adam", "constant", 5, 0.3, 5.0),
    ("gru", 2, 2, "rmsprop", "cosine", 5, 0.0, 5.0),
    ("lstm", 1, 1, "rmsprop", "constant", 0, 0.0, 0.02),  # a clip that bites on every step (50-1200 entries)
    ("lstm", 2, 2, "adagrad", "constant", 0, 0.0, 5.0),
    ("gru", 1, 2, "adagrad", "cosine", 3, 0.0, 5.0),
]


@pytest.mark.parametrize("cell,layers,B,optimizer,schedule,warmup,dropout,clip", RUNS,
                         ids=["-".join(map(str, r)) for r in RUNS])
def test_trainer_matches_oracle(text450, cell, layers, B, optimizer, schedule, warmup, dropout, clip):
    """Free-running for 50 iterations. A small learning rate (3e-3) keeps the trajectory far from chaotic, so
    rounding differences stay at their own size and 1e-9 is a fair bound."""
    n, T, H, lr = 50, 10, 16, 3e-3
    cfg = TrainConfig(cell=cell, num_layers=layers, dropout=dropout, optimizer=optimizer, lr_schedule=schedule,
                      warmup=warmup, hidden_size=H, seq_length=T, batch_size=B, learning_rate=lr,
                      iterations=n, dtype="float64", seed=0, clip=clip)
    tr = Trainer(cfg, make_corpus(text450, 0.1))
    oracle = CellOracle(as_dict(tr.state.params), cell=cell, layers=layers, data_ix=tr.corpus.train,
                        batch_size=B, seq_length=T, learning_rate=lr, iterations=n, optimizer=optimizer,
                        lr_schedule=schedule, warmup=warmup, dropout=dropout, clip=clip,
                        adagrad_eps=cfg.adagrad_eps, rng=copy.deepcopy(tr.state.rng))
    assert n * T > len(tr.corpus.train) // B  # the data pointer wraps (twice for B >= 2)
    ours = np.array([tr.step() for _ in range(n)])
    theirs = np.array([oracle.step() for _ in range(n)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0)
    errs = {name: rel_diff(getattr(tr.state.params, name), oracle.P[name]) for name in oracle.names}
    assert max(errs.values()) < 1e-9, errs
    assert tr.state.h.shape == oracle.h.shape
    np.testing.assert_allclose(tr.state.h, oracle.h, rtol=0, atol=1e-9)
    assert (tr.state.p, tr.state.iteration) == (oracle.p, oracle.n)
    # dropout draws exactly (L, T, B, H) uniforms per step from the run's Generator, and nothing without it
    assert tr.state.rng.bit_generator.state == oracle.rng.bit_generator.state
    assert ours[-10:].mean() < ours[0] - 0.02  # it learned something (the slowest case, adagrad: 0.04)


# ---------------------------------------------------------------- the oracle's own footing


def test_oracle_rnn_adagrad_is_the_seed():
    """With one rnn layer, B = 1, Adagrad and a constant rate the oracle is the seed's loop (seed_oracle.py)."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:1000]
    ids = np.array([sorted(set(text)).index(c) for c in text])
    V, H, T, lr = int(ids.max()) + 1, 12, 25, 0.01
    P = spec_init(H, V, np.random.default_rng(0), "rnn", 1, 0.01)
    seed = SeedRNN(ids, V, P["Wxh"], P["Whh"], P["Why"], P["bh"], P["by"], T, lr)
    oracle = CellOracle(P, cell="rnn", layers=1, data_ix=ids, batch_size=1, seq_length=T, learning_rate=lr,
                        iterations=100, optimizer="adagrad", lr_schedule="constant", clip=5.0, adagrad_eps=1e-8)
    theirs = np.array([seed.step() / T for _ in range(100)])  # 100 * 25 chars: wraps twice
    ours = np.array([oracle.step() for _ in range(100)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=0)
    for name in ("Wxh", "Whh", "Why", "bh", "by"):
        assert rel_diff(oracle.P[name], getattr(seed, name)) < 1e-10, name


def test_learning_rate_schedule_table():
    """The spec's schedule, worked by hand: lr 1, 10 iterations, warmup 2, lr_min 0.1."""
    cos = [learning_rate_at(it, 1.0, 10, "cosine", 2) for it in (0, 1, 2, 6, 10, 12)]
    np.testing.assert_allclose(cos, [0.5, 1.0, 1.0, 0.55, 0.1, 0.1], rtol=1e-15)
    const = [learning_rate_at(it, 1.0, 10, "constant", 4) for it in (0, 3, 4, 9)]
    np.testing.assert_allclose(const, [0.25, 1.0, 1.0, 1.0], rtol=1e-15)
    assert learning_rate_at(5, 0.3, 10, "cosine", 0) == pytest.approx(0.03 + 0.27 * 0.5)
