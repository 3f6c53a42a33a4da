"""Packed trials: K models with the same shapes trained as one batched computation compute what each
trial computes alone (CPU, numpy path)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from rnncore import TrainConfig, Trainer, make_corpus
from rnncore.model import Params, Workspace, loss_and_grads
from rnncore.trainer import PackedTrainer, init_state

TEXT = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3001]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(TEXT, 0.1)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def member_cfgs(H=64, B=2, lrs=(0.01, 0.02, 0.005), **kw):
    return [TrainConfig(hidden_size=H, seq_length=25, batch_size=B, learning_rate=lr, seed=7 + i, **kw)
            for i, lr in enumerate(lrs)]


def test_one_packed_step_equals_each_trial_alone(corpus):
    """Same state in, same loss and gradients out, to 1e-12, member by member."""
    cfgs = member_cfgs(H=32, B=3)
    T, B, H, V = 25, 3, 32, corpus.vocab.size
    rng = np.random.default_rng(0)
    states = [init_state(c, V) for c in cfgs]
    for st in states:  # weights well inside the nonlinear ranges
        st.params.flat[...] = rng.standard_normal(st.params.flat.shape) * 0.3
    X = rng.integers(0, V, (T, B))
    Y = rng.integers(0, V, (T, B))
    h0 = rng.standard_normal((len(cfgs), B, H)) * 0.5
    P = Params.stack([st.params for st in states])
    ws = Workspace(T, B, H, V, "float64", len(cfgs))
    packed = loss_and_grads(P, X, Y, h0, ws, 1 / B)
    for k, st in enumerate(states):
        ws1 = Workspace(T, B, H, V, "float64")
        alone = loss_and_grads(st.params, X, Y, h0[k], ws1, 1 / B)
        assert abs(packed[k] - alone) / abs(alone) < 1e-12
        for name in Params.NAMES:
            assert rel(getattr(ws.grads, name)[k], getattr(ws1.grads, name)) < 1e-12, name
        assert rel(ws.hs[-1][k], ws1.hs[-1]) < 1e-12


@pytest.mark.parametrize("H", [64, 100])
def test_packed_run_matches_trials_alone_for_1000_iterations(corpus, H):
    """The non-chaotic regime (lr ~0.01, H <= 100): whole runs agree to 1e-9, with different learning
    rates and seeds per member."""
    cfgs = member_cfgs(H=H)
    pt = PackedTrainer(cfgs, corpus)
    alone = [Trainer(c, corpus) for c in cfgs]
    worst = 0.0
    for _ in range(1000):
        lp = pt.step()
        for k, tr in enumerate(alone):
            worst = max(worst, abs(lp[k] - tr.step()) / abs(lp[k]))
    assert worst < 1e-9
    for k, tr in enumerate(alone):
        st = pt.member_state(k)
        for a, b in zip(st.params.arrays(), tr.state.params.arrays()):
            assert rel(a, b) < 1e-9
        assert rel(st.mem.flat, tr.state.mem.flat) < 1e-9
        assert st.p == tr.state.p and st.iteration == tr.state.iteration
    assert rel(pt.evaluate(), [tr.evaluate() for tr in alone]) < 1e-9


def test_a_diverging_member_is_masked_without_disturbing_the_others(corpus):
    cfgs = member_cfgs(lrs=(0.01, 1e6, 0.02))
    pt = PackedTrainer(cfgs, corpus)
    alone = [Trainer(cfgs[0], corpus), Trainer(cfgs[2], corpus)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        losses = pt.run(200)
    assert pt.diverged.tolist() == [False, True, False]
    assert not pt.active[1] and np.isnan(losses[-1, 1])
    hit = int(np.flatnonzero(np.isnan(losses[:, 1]))[0])  # the step after it diverged
    assert pt.member_state(1).iteration == hit  # its final state is the one that diverged
    for k, tr in zip((0, 2), alone):
        ref = tr.run(200)
        assert rel(losses[:, k], ref) < 1e-9
        assert np.all(np.isfinite(pt.params.flat)), "a frozen slot must not carry NaN or inf"


def test_freezing_a_member_keeps_its_state_and_the_others_going(corpus):
    cfgs = member_cfgs()
    pt = PackedTrainer(cfgs, corpus)
    pt.run(30)
    before = pt.member_state(0)
    pt.freeze(0)
    pt.run(30)
    after = pt.member_state(0)
    assert after.iteration == 30 and np.array_equal(after.params.flat, before.params.flat)
    assert pt.iteration == 60 and pt.member_state(1).iteration == 60
    ref = Trainer(cfgs[1], corpus)
    ref.run(60)
    assert rel(pt.member_state(1).params.flat, ref.state.params.flat) < 1e-9


def test_packed_member_checkpoint_continues_alone(corpus, tmp_path):
    from rnncore import checkpoint

    cfgs = member_cfgs()
    pt = PackedTrainer(cfgs, corpus)
    pt.run(40)
    checkpoint.save(tmp_path / "m1.npz", cfgs[1], corpus.vocab, pt.member_state(1))
    ck = checkpoint.load(tmp_path / "m1.npz")
    tr = Trainer(ck.cfg, corpus, ck.state)
    ref = Trainer(cfgs[1], corpus)
    ref.run(40)
    assert rel(tr.run(20), ref.run(20)) < 1e-9


def test_members_must_share_shapes(corpus):
    with pytest.raises(ValueError, match="hidden_size"):
        PackedTrainer([TrainConfig(hidden_size=16), TrainConfig(hidden_size=32)], corpus)


def test_device_gpu_without_cupy_is_a_clear_error(corpus):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match=r"device=gpu needs CuPy.*pip install"):
        Trainer(TrainConfig(hidden_size=8, seq_length=10, device="gpu"), corpus)
    tr = Trainer(TrainConfig(hidden_size=8, seq_length=10, device="auto"), corpus)  # auto falls back to numpy
    assert tr.xp is np
