"""Every cell, layer count, optimizer and schedule through the engine's edges: bit-exact resume, packed members
equal to trials alone, checkpoints that name their model, older checkpoints, sampling from any cell."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_state
from rnncore import CheckpointError, TrainConfig, Trainer, checkpoint, make_corpus
from rnncore.trainer import PackedTrainer

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3001]
V1_CHECKPOINT = REPO / "tests" / "data" / "checkpoint_v1.npz"  # written by the engine before it had cells


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(TEXT, 0.1)


def cfg_for(cell: str, optimizer: str, **kw) -> TrainConfig:
    base = dict(cell=cell, num_layers=2, hidden_size=16, seq_length=12, batch_size=3, optimizer=optimizer,
                learning_rate=0.05 if optimizer == "adagrad" else 3e-3, iterations=80)
    return TrainConfig(**{**base, **kw})


CASES = [(cell, opt, sched, drop, dtype)
         for cell in ("rnn", "lstm", "gru")
         for opt, sched, drop, dtype in (("adam", "cosine", 0.3, "float64"), ("rmsprop", "constant", 0.0, "float32"),
                                         ("adagrad", "cosine", 0.2, "float32"))]


@pytest.mark.parametrize("cell,optimizer,schedule,dropout,dtype", CASES)
def test_resume_is_bit_for_bit_for_every_cell_optimizer_schedule_and_dropout(tmp_path, corpus, cell, optimizer,
                                                                            schedule, dropout, dtype):
    """Stop at iteration 37 (mid warm-up schedule, after the data pointer wrapped), save, load, go on: the same
    losses, weights, optimizer moments, hidden state, schedule position and dropout RNG as a straight run."""
    cfg = cfg_for(cell, optimizer, lr_schedule=schedule, warmup=10, dropout=dropout, dtype=dtype)
    assert cfg.iterations * cfg.seq_length > len(corpus.train) // cfg.batch_size  # the pointer wraps
    straight = Trainer(cfg, corpus)
    want = straight.run(cfg.iterations)
    first = Trainer(cfg, corpus)
    part = first.run(37)
    checkpoint.save(tmp_path / "ck.npz", cfg, corpus.vocab, first.state)
    ck = checkpoint.load(tmp_path / "ck.npz")
    assert ck.cfg == cfg
    assert_same_state(ck.state, first.state)
    second = Trainer(ck.cfg, corpus, ck.state)
    np.testing.assert_array_equal(np.concatenate([part, second.run(cfg.iterations - 37)]), want)
    assert_same_state(second.state, straight.state)
    assert second.sample(40, prime="The") == straight.sample(40, prime="The")
    assert second.evaluate() == straight.evaluate()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "rmsprop"])
def test_packed_members_equal_trials_alone(corpus, cell, optimizer):
    """K members with their own learning rate, dropout and seed: each computes what it computes alone (dropout
    masks drawn from each member's own Generator; a member with dropout 0 draws none)."""
    lr = 0.05 if optimizer == "adagrad" else 3e-3
    cfgs = [cfg_for(cell, optimizer, learning_rate=lr * f, dropout=d, seed=5 + k, lr_schedule="cosine", warmup=5)
            for k, (f, d) in enumerate(((1.0, 0.0), (0.5, 0.25), (2.0, 0.1)))]
    pt = PackedTrainer(cfgs, corpus)
    alone = [Trainer(c, corpus) for c in cfgs]
    losses = pt.run(60)
    for k, tr in enumerate(alone):
        ref = tr.run(60)
        np.testing.assert_allclose(losses[:, k], ref, rtol=1e-10, atol=0)
        st = pt.member_state(k)
        np.testing.assert_allclose(st.params.flat, tr.state.params.flat, rtol=1e-9, atol=1e-12)
        assert st.rng.bit_generator.state == tr.state.rng.bit_generator.state
    np.testing.assert_allclose(pt.evaluate(), [tr.evaluate() for tr in alone], rtol=1e-10)


def test_packed_trials_must_share_every_shape_option(corpus):
    from rnncore.config import SHAPE_KEYS

    assert {"cell", "num_layers", "optimizer", "lr_schedule", "warmup", "iterations", "eval_streams"} <= set(SHAPE_KEYS)
    for change in (dict(cell="gru"), dict(num_layers=1), dict(optimizer="rmsprop"), dict(iterations=81),
                   dict(eval_streams=8)):
        key = next(iter(change))
        with pytest.raises(ValueError, match=f"these differ: {key}"):
            PackedTrainer([cfg_for("lstm", "adam"), cfg_for("lstm", "adam").replace(**change)], corpus)


def test_a_diverging_adam_member_is_frozen_without_disturbing_the_others(corpus):
    cfgs = [cfg_for("lstm", "adam", learning_rate=lr, clip=1e30) for lr in (3e-3, 1e12, 2e-3)]
    pt = PackedTrainer(cfgs, corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        losses = pt.run(40)
    assert pt.diverged.tolist() == [False, True, False]
    assert np.all(np.isfinite(pt.params.flat)) and np.all(np.isfinite(pt.state.mom.flat))
    for k in (0, 2):
        np.testing.assert_allclose(losses[:, k], Trainer(cfgs[k], corpus).run(40), rtol=1e-10)


def test_a_checkpoint_names_its_model_and_a_mismatched_config_is_a_clear_error(tmp_path, corpus):
    cfg = cfg_for("lstm", "adam")
    tr = Trainer(cfg, corpus)
    tr.run(3)
    checkpoint.save(tmp_path / "lstm.npz", cfg, corpus.vocab, tr.state)
    P, _ = checkpoint.load_weights(tmp_path / "lstm.npz")
    assert (P.cell, P.num_layers, P.hidden_size) == ("lstm", 2, 16)
    ck = checkpoint.load(tmp_path / "lstm.npz")
    for other, words in ((cfg.replace(cell="gru"), "cell=lstm but the config says cell=gru"),
                         (cfg.replace(num_layers=3), "num_layers=2 but the config says num_layers=3"),
                         (cfg.replace(hidden_size=32), "hidden_size=16 but the config says hidden_size=32"),
                         (cfg.replace(optimizer="adagrad"), "optimizer=adagrad")):
        with pytest.raises(ValueError, match=words):
            Trainer(other, corpus, ck.state)
    # a file whose config and arrays disagree is refused when it loads
    z = dict(np.load(tmp_path / "lstm.npz", allow_pickle=False))
    z["config"] = np.str_(cfg.replace(cell="gru").to_json())
    np.savez(tmp_path / "bad.npz", **z)
    with pytest.raises(CheckpointError, match="config and arrays disagree.*cell=lstm but the config says cell=gru"):
        checkpoint.load(tmp_path / "bad.npz")


def test_a_checkpoint_written_before_there_were_cells_loads_as_the_seeds_rnn_and_continues_exactly():
    """tests/data/checkpoint_v1.npz: H = 8, T = 10, B = 2, after 20 iterations on TEXT[:2000]. The losses and
    the sample below are what the engine of that time printed when it continued from this file, but for the
    sample's start: unprimed samples now feed a newline first (rnncore.trainer.unprimed_start), not the stream's
    next character, and that engine wrote 'iv wTesei rharae e SoWeywoiW y'."""
    corpus = make_corpus(TEXT[:2000], 0.1)
    ck = checkpoint.load(V1_CHECKPOINT)
    assert (ck.cfg.cell, ck.cfg.num_layers, ck.cfg.optimizer) == ("rnn", 1, "adagrad")
    assert ck.state.params.names == ("Wxh", "Whh", "Why", "bh", "by") and ck.state.mom is None
    tr = Trainer(ck.cfg, corpus, ck.state)
    want = [3.197387910360833, 3.1790336805023864, 3.257764428329783, 3.0738907884860867, 3.237720613494406,
            3.273365556618041, 3.317627531004404, 3.1548019127090936, 2.834135181995021, 3.2497849176074154]
    assert tr.run(10).tolist() == want
    assert tr.sample(30, seed=1) == 'fv wVesei rharae e SoWeywoiW y'


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_every_cell_samples_from_its_checkpoint_on_the_command_line(tmp_path, corpus, cell, layers):
    cfg = cfg_for(cell, "adam", num_layers=layers)
    tr = Trainer(cfg, corpus)
    tr.run(20)
    checkpoint.save(tmp_path / "m.npz", cfg, corpus.vocab, tr.state)
    r = subprocess.run([sys.executable, "-m", "rnncore.sample", str(tmp_path / "m.npz"), "--length", "60",
                        "--prime", "The ", "--temperature", "0.7", "--seed", "3"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.rstrip("\n")
    assert out.startswith("The ") and len(out) == 64 and set(out) <= set(corpus.vocab.chars)
    assert out == tr.sample(60, temperature=0.7, prime="The ", seed=3)  # the engine's own sample, same seed
