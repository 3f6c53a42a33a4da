"""Packed trials: K models with the same shapes trained as one batched computation compute what each
trial computes alone (CPU, numpy path)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import rel_diff
from rnncore import TrainConfig, Trainer, make_corpus
from rnncore.model import Params, Workspace, loss_and_grads
from rnncore.trainer import PackedTrainer, init_state

TEXT = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3001]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(TEXT, 0.1)


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
            assert rel_diff(getattr(ws.grads, name)[k], getattr(ws1.grads, name)) < 1e-12, name
        assert rel_diff(ws.hs[-1][k], ws1.hs[-1]) < 1e-12


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
            assert rel_diff(a, b) < 1e-9
        assert rel_diff(st.mem.flat, tr.state.mem.flat) < 1e-9
        assert st.p == tr.state.p and st.iteration == tr.state.iteration
    assert rel_diff(pt.evaluate(), [tr.evaluate() for tr in alone]) < 1e-9


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
        assert rel_diff(losses[:, k], ref) < 1e-9
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
    assert rel_diff(pt.member_state(1).params.flat, ref.state.params.flat) < 1e-9


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
    assert rel_diff(tr.run(20), ref.run(20)) < 1e-9


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


PACKED_SWEEP = """name: {name}
data: {{path: tiny.txt}}
train:
  hidden_size: {{grid_search: [16, 24]}}
  learning_rate: {{loguniform: [0.005, 0.05]}}
  seq_length: 16
  batch_size: 4
  iterations: 300
  eval_every: 100
  sample_every: 300
num_samples: 2
scheduler: fifo
max_concurrent_trials: 2
{packing}
output: out/{name}
"""


@pytest.mark.slow
def test_a_packed_sweep_gives_each_trial_its_row_and_run_with_the_numbers_it_gets_alone(
        tmp_path, run_module, corpus_text):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    (tmp_path / "tiny.txt").write_text(corpus_text(30_000), encoding="utf-8")
    (tmp_path / "packed.yaml").write_text(PACKED_SWEEP.format(name="packed", packing="packing: {max_trials: 4}"))
    (tmp_path / "plain.yaml").write_text(PACKED_SWEEP.format(name="plain", packing=""))
    procs = {name: run_module("pipeline.sweep", f"{name}.yaml", cwd=tmp_path) for name in ("packed", "plain")}
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr
    assert "4 trials in 2 packs" in procs["packed"].stdout
    packed = pd.read_parquet(tmp_path / "out/packed/trials.parquet").sort_values("trial_id")
    plain = pd.read_parquet(tmp_path / "out/plain/trials.parquet").sort_values("trial_id")
    assert list(packed.trial_id) == ["t0000", "t0001", "t0002", "t0003"] and set(packed.status) == {"finished"}
    assert packed[["hidden_size", "learning_rate", "seed"]].equals(plain[["hidden_size", "learning_rate", "seed"]])
    assert rel_diff(packed.val_loss.to_numpy(), plain.val_loss.to_numpy()) < 1e-9
    history = pd.read_parquet(tmp_path / "out/packed/history.parquet")
    assert history.groupby("trial_id").size().tolist() == [3, 3, 3, 3]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packed")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 5 and len(children) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        paths = [a.path for a in client.list_artifacts(r.info.run_id, "model")]
        assert paths == ["model/checkpoint.npz"]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [100, 200, 300]
