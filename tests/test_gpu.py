"""numpy vs CuPy parity of the engine (skipped without CuPy and a GPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no GPU", allow_module_level=True)
except Exception as e:  # no driver
    pytest.skip(f"no usable GPU: {e}", allow_module_level=True)

from helpers import rel_diff  # noqa: E402
from rnncore import TrainConfig, Trainer, make_corpus  # noqa: E402
from rnncore.model import Params, Workspace, loss_and_grads  # noqa: E402
from rnncore.trainer import PackedTrainer  # noqa: E402

pytestmark = pytest.mark.gpu
TEXT = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5001]


@pytest.mark.parametrize("K", [None, 4])
def test_loss_and_gradients_match_numpy(K):
    corpus = make_corpus(TEXT, 0.1)
    T, B, H, V = 20, 3, 48, corpus.vocab.size
    rng = np.random.default_rng(1)
    P = Params.zeros(H, V, "float64", K)
    P.flat[...] = rng.standard_normal(P.flat.shape) * 0.3
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h0 = rng.standard_normal(((K,) if K else ()) + (B, H)) * 0.5
    ws_np = Workspace(T, B, H, V, "float64", K, np)
    ws_cp = Workspace(T, B, H, V, "float64", K, cupy)
    Pc = Params(cupy.asarray(P.flat), H, V, K)
    l_np = loss_and_grads(P, X, Y, h0, ws_np, 1 / B)
    l_cp = loss_and_grads(Pc, cupy.asarray(X), cupy.asarray(Y), cupy.asarray(h0), ws_cp, 1 / B)
    assert rel_diff(l_cp, l_np) < 1e-12
    for name in Params.NAMES:
        assert rel_diff(getattr(ws_cp.grads, name), getattr(ws_np.grads, name)) < 1e-10, name


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-3)])
def test_training_on_gpu_matches_cpu(dtype, tol):
    corpus = make_corpus(TEXT, 0.1)
    cfg = TrainConfig(hidden_size=64, seq_length=25, batch_size=4, learning_rate=0.01, dtype=dtype)
    cpu, gpu = Trainer(cfg, corpus), Trainer(cfg.replace(device="gpu"), corpus)
    assert gpu.xp is cupy
    assert rel_diff(gpu.run(200), cpu.run(200)) < tol
    assert abs(gpu.evaluate() - cpu.evaluate()) / cpu.evaluate() < tol


def test_packed_on_gpu_matches_trials_alone_on_cpu():
    corpus = make_corpus(TEXT, 0.1)
    cfgs = [TrainConfig(hidden_size=64, seq_length=25, batch_size=4, learning_rate=lr, seed=i, device="gpu")
            for i, lr in enumerate((0.01, 0.02, 0.005))]
    pt = PackedTrainer(cfgs, corpus)
    alone = [Trainer(c.replace(device="cpu"), corpus) for c in cfgs]
    losses = pt.run(200)
    for k, tr in enumerate(alone):
        assert rel_diff(losses[:, k], tr.run(200)) < 1e-9


CELLS = [("rnn", 2), ("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)]


@pytest.mark.parametrize("cell,layers", CELLS)
@pytest.mark.parametrize("K", [None, 3])
def test_every_cell_loss_and_gradients_match_numpy(cell, layers, K):
    """Each cell, stacked, with dropout masks: CuPy computes what numpy computes (float64, to rounding)."""
    from rnncore.config import TrainConfig as C

    corpus = make_corpus(TEXT, 0.1)
    T, B, H, V = 12, 3, 24, corpus.vocab.size
    rng = np.random.default_rng(2)
    P = Params.zeros(H, V, "float64", K, cell=cell, layers=layers)
    P.flat[...] = rng.standard_normal(P.flat.shape) * 0.3
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    S = C(cell=cell, num_layers=layers, hidden_size=H).state_size
    lead = (K,) if K else ()
    h0 = rng.standard_normal(lead + (B, S)) * 0.5
    masks = (rng.random((layers, T) + lead + (B, H)) >= 0.25) / 0.75
    ws_np = Workspace(T, B, H, V, "float64", K, np, cell=cell, layers=layers)
    ws_cp = Workspace(T, B, H, V, "float64", K, cupy, cell=cell, layers=layers)
    Pc = Params(cupy.asarray(P.flat), H, V, K, cell, layers)
    l_np = loss_and_grads(P, X, Y, h0, ws_np, 1 / B, masks)
    l_cp = loss_and_grads(Pc, cupy.asarray(X), cupy.asarray(Y), cupy.asarray(h0), ws_cp, 1 / B, cupy.asarray(masks))
    assert rel_diff(l_cp, l_np) < 1e-12
    for name in P.names:
        assert rel_diff(getattr(ws_cp.grads, name), getattr(ws_np.grads, name)) < 1e-10, name


@pytest.mark.parametrize("cell,layers", CELLS)
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_every_cell_trains_on_gpu_as_on_cpu_float32(cell, layers, optimizer):
    corpus = make_corpus(TEXT, 0.1)
    cfg = TrainConfig(cell=cell, num_layers=layers, hidden_size=48, seq_length=25, batch_size=4, dtype="float32",
                      optimizer=optimizer, learning_rate=2e-3, lr_schedule="cosine", warmup=10, iterations=100,
                      dropout=0.2)
    cpu, gpu = Trainer(cfg, corpus), Trainer(cfg.replace(device="gpu"), corpus)
    assert gpu.xp is cupy
    assert rel_diff(gpu.run(100), cpu.run(100)) < 2e-3
    assert abs(gpu.evaluate() - cpu.evaluate()) / cpu.evaluate() < 2e-3
    assert len(gpu.sample(50, prime="The")) == 53


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_cells_on_gpu_match_trials_alone_on_cpu(cell):
    corpus = make_corpus(TEXT, 0.1)
    cfgs = [TrainConfig(cell=cell, num_layers=2, hidden_size=32, seq_length=25, batch_size=4, learning_rate=lr,
                        optimizer="adam", dropout=d, seed=i, device="gpu")
            for i, (lr, d) in enumerate(((2e-3, 0.0), (1e-3, 0.3), (4e-3, 0.1)))]
    pt = PackedTrainer(cfgs, corpus)
    alone = [Trainer(c.replace(device="cpu"), corpus) for c in cfgs]
    losses = pt.run(100)
    for k, tr in enumerate(alone):
        assert rel_diff(losses[:, k], tr.run(100)) < 1e-9
