"""The engine's edges: checkpoints, determinism across processes, bad input, Unicode, imports and the CLIs."""
from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_state
from rnncore import (CheckpointError, CorpusError, TrainConfig, Trainer, check_fits, checkpoint, load_corpus,
                     make_corpus)
from rnncore.model import Params
from rnncore.sample import generate

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"
NAMES = Params.NAMES

# from the seed's blog post (hjimce, "深度学习(十一)RNN入门学习"), its prose only
CHINESE = (
    "RNN(Recurrent Neural Networks)中文名又称之为:循环神经网络(原来还有一个递归神经网络,也叫RNN,搞得我有点混了,"
    "菜鸟刚入门,对不上号)。在计算机视觉里面用的比较少,我目前看过很多篇计算机视觉领域的相关深度学习的文章,除了OCR、"
    "图片标注、理解问答等这些会把CNN和RNN结合起来,其它的很少见到。RNN主要用于序列问题,如自然语言、语音音频等领域,"
    "相比于CNN来说,简单很多,CNN包含:卷积层、池化层、全连接层、特征图等概念,RNN基本上就仅仅只是三个公式就可以搞定了,"
    "因此对于RNN我们只需要知道三个公式就可以理解RNN了。说实话,一开是听到循环神经网络这个名子,感觉好难的样子,"
    "因为曾经刚开始学CNN的时候,也有很多不懂的地方。还是不啰嗦了,……开始前,我们先回顾一下,简单的MLP三层神经网络模型:\n"
    "上面那个图是最简单的浅层网络模型了,x为输入,s为隐藏层神经元,o为输出层神经元。然后U、V就是我们要学习的参数了。"
    "上面的图很简单,每层神经元的个数就只有一个,我们可以得到如下公式:\n"
    "看到结构图,是不是觉得RNN网络好像很简单的样子,至少没有像CNN过程那么长。从上面的结构图看,RNN网络基础结构,"
    "就只有一个输入层、隐藏层、输出层,看起来好像跟传统浅层神经网络模型差不多(只包含输出层、隐藏层、输出层),"
    "唯一的区别是:上面隐藏层多了一天连接线,像圆圈一样的东东,而那条线就是所谓的循环递归,同时那个圈圈连接线也多了个一个参数W。\n"
)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED",)}
    e.update({"PYTHONIOENCODING": "utf-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"})
    e.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, encoding="utf-8",
                          env=e, cwd=cwd or REPO, timeout=120)


@pytest.fixture(scope="module")
def shakes() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")[:4000]


@pytest.fixture
def small_file(tmp_path, shakes) -> Path:
    f = tmp_path / "small.txt"
    f.write_text(shakes[:2000], encoding="utf-8")
    return f


# ---------------------------------------------------------------- checkpoints: resume bit for bit


@pytest.mark.parametrize("B,dtype", [(1, "float64"), (4, "float32")])
def test_resume_is_bit_for_bit(tmp_path, shakes, B, dtype):
    N, k = 90, 37
    cfg = TrainConfig(hidden_size=24, seq_length=16, batch_size=B, dtype=dtype, learning_rate=0.1, iterations=N)
    corpus = make_corpus(shakes[:1500], 0.1)
    assert N * 16 > len(corpus.train) // B  # the data pointer wraps inside the run
    straight = Trainer(cfg, corpus)
    losses_straight = straight.run(N)

    first = Trainer(cfg, corpus)
    losses_a = first.run(k)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, cfg, corpus.vocab, first.state)
    ck = checkpoint.load(path)
    assert ck.cfg == cfg and ck.vocab == corpus.vocab
    assert_same_state(ck.state, first.state)
    second = Trainer(ck.cfg, corpus, ck.state)
    losses_b = second.run(N - k)

    np.testing.assert_array_equal(np.concatenate([losses_a, losses_b]), losses_straight)
    assert_same_state(second.state, straight.state)
    assert second.sample(60) == straight.sample(60)


def test_checkpoint_file_layout(tmp_path, shakes):
    cfg = TrainConfig(hidden_size=20, seq_length=10, batch_size=2)
    corpus = make_corpus(shakes[:1000], 0.1)
    tr = Trainer(cfg, corpus)
    tr.run(5)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, cfg, corpus.vocab, tr.state)
    H, V = 20, corpus.vocab.size
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    want = {"Wxh": (H, V), "Whh": (H, H), "Why": (V, H), "bh": (H, 1), "by": (V, 1)}
    for name, shape in want.items():
        assert arrays[name].shape == shape and arrays[name].dtype == np.float64, name
        np.testing.assert_array_equal(arrays[name], getattr(tr.state.params, name))
    vocab = arrays["vocab"]
    assert vocab.ndim == 1 and vocab.dtype.kind == "U" and vocab.shape == (V,)
    assert all(len(c) == 1 for c in vocab.tolist())
    assert vocab.tolist() == sorted(set(shakes[:1000]))
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert not list(tmp_path.glob(".ckpt-*"))  # no temp file left behind


def test_weights_only_file_loads_and_inits_cli(tmp_path, small_file):
    corpus = load_corpus(small_file, 0.1)
    tr = Trainer(TrainConfig(hidden_size=16, seq_length=25), corpus)
    tr.run(50)
    six = tmp_path / "six.npz"
    np.savez(six, vocab=corpus.vocab.to_array(), **{n: a for n, a in zip(NAMES, tr.state.params.arrays())})
    with np.load(six, allow_pickle=False) as z:
        assert sorted(z.files) == sorted([*NAMES, "vocab"])
    P, vocab = checkpoint.load_weights(six)
    np.testing.assert_array_equal(P.flat, tr.state.params.flat)
    assert vocab == corpus.vocab
    with pytest.raises(CheckpointError, match="lacks"):
        checkpoint.load(six)  # not enough to resume, and says so

    # --init-from: the CLI's first loss is the loss of exactly these weights on the first window
    metrics = tmp_path / "m.jsonl"
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), "--init-from", str(six), "--iterations", "5",
                "--eval-every", "5", "--metrics-jsonl", str(metrics), "--out", str(tmp_path / "o.npz"))
    assert r.returncode == 0, r.stderr
    first = json.loads(metrics.read_text().splitlines()[0])
    fresh = Trainer(TrainConfig(hidden_size=16), corpus)
    fresh.state.params.flat[...] = P.flat
    assert first == {"iteration": 1, "loss": fresh.step()}
    assert first["loss"] < math.log(vocab.size) - 0.3  # trained weights, not a fresh init
    assert checkpoint.load(tmp_path / "o.npz").state.iteration == 5


class Evil:
    """Unpickling this creates a marker file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _not_checkpoints(tmp: Path):
    marker = tmp / "UNPICKLED"
    (tmp / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    yield tmp / "random.bin", "not an rnncore checkpoint"
    (tmp / "text.txt").write_text("Wxh Whh Why bh by vocab\n" * 20)
    yield tmp / "text.txt", "not an rnncore checkpoint"
    (tmp / "empty.npz").write_bytes(b"")
    yield tmp / "empty.npz", "not an rnncore checkpoint"
    np.savez(tmp / "other.npz", a=np.zeros(3), b=np.ones((2, 2)))
    yield tmp / "other.npz", "lacks Wxh, Whh, Why, bh, by, vocab"
    np.save(tmp / "single.npy", np.zeros((4, 4)))
    yield tmp / "single.npy", "single .npy array"
    with open(tmp / "evil.pkl", "wb") as f:
        pickle.dump(Evil(marker), f)
    yield tmp / "evil.pkl", "not an rnncore checkpoint"
    obj = np.empty(1, dtype=object)
    obj[0] = Evil(marker)
    np.savez(tmp / "objects.npz", Wxh=obj, Whh=np.zeros((2, 2)), Why=np.zeros((3, 2)), bh=np.zeros((2, 1)),
             by=np.zeros((3, 1)), vocab=np.array(list("abc")))
    yield tmp / "objects.npz", "not an rnncore checkpoint"
    np.savez(tmp / "shapes.npz", Wxh=np.zeros((2, 3)), Whh=np.zeros((2, 2)), Why=np.zeros((3, 5)),
             bh=np.zeros((2, 1)), by=np.zeros((3, 1)), vocab=np.array(list("abc")))
    yield tmp / "shapes.npz", "Why has shape (3, 5)"
    np.savez(tmp / "vocab.npz", Wxh=np.zeros((2, 3)), Whh=np.zeros((2, 2)), Why=np.zeros((3, 2)),
             bh=np.zeros((2, 1)), by=np.zeros((3, 1)), vocab=np.array(["ab", "c", "d"]))
    yield tmp / "vocab.npz", "single characters"
    yield tmp / "missing.npz", "checkpoint not found"


def test_not_a_checkpoint_raises_clear_error_and_never_unpickles(tmp_path):
    marker = tmp_path / "UNPICKLED"
    cases = list(_not_checkpoints(tmp_path))
    # the payload is live: plain pickle.load really would run it
    with open(tmp_path / "evil.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    for path, words in cases:
        for loader in (checkpoint.load_weights, checkpoint.load):
            with pytest.raises(CheckpointError) as e:
                loader(path)
            assert words in str(e.value) and str(path) in str(e.value), (path.name, str(e.value))
        assert not marker.exists(), f"{path.name} was unpickled"
    r = run_cli("-m", "rnncore.sample", str(tmp_path / "objects.npz"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = run_cli("-m", "rnncore.train", "--data", str(SHAKESPEARE), "--init-from", str(tmp_path / "evil.pkl"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- determinism across processes


def test_same_seed_same_losses_across_hash_seeds(tmp_path):
    # many distinct characters, so an unsorted set() would almost surely order them differently
    text = "".join(chr(c) for c in range(0x21, 0x7f)) + SHAKESPEARE.read_text(encoding="utf-8")[:2500]
    data = tmp_path / "mixed.txt"
    data.write_text(text, encoding="utf-8")
    results = {}
    for hs in ("0", "12345"):
        metrics, out = tmp_path / f"m{hs}.jsonl", tmp_path / f"o{hs}.npz"
        r = run_cli("-m", "rnncore.train", "--data", str(data), "--hidden-size", "16", "--seq-length", "10",
                    "--iterations", "40", "--eval-every", "20", "--sample-every", "0", "--seed", "7",
                    "--metrics-jsonl", str(metrics), "--out", str(out), env={"PYTHONHASHSEED": hs})
        assert r.returncode == 0, r.stderr
        losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()
                  if "loss" in json.loads(line)]
        assert len(losses) == 40
        results[hs] = (losses, checkpoint.load_weights(out))
    (la, (Pa, va)), (lb, (Pb, vb)) = results["0"], results["12345"]
    assert la == lb
    np.testing.assert_array_equal(Pa.flat, Pb.flat)
    assert va == vb and list(va.chars) == sorted(set(text))


# ---------------------------------------------------------------- bad input


FIFO = "named pipe"  # content that makes _write create a named pipe nobody writes to


def _write(tmp: Path, name: str, content: bytes | str | None) -> Path:
    p = tmp / name  # an absolute name (/dev/zero) is used as it is
    if content == FIFO:
        os.mkfifo(p)
    elif content is not None:
        p.write_bytes(content)
    return p


# id, file name, content (None = absent), val_fraction, seq_length, batch_size, words that must be in the message
BAD_INPUTS = [
    ("missing", "nope.txt", None, 0.1, 25, 1, ["not found", "pass the path"]),
    ("char-device", "/dev/zero", None, 0.1, 25, 1,  # reading it never ends
     ["corpus path is a character device, not a file", "pass a UTF-8 text file"]),
    ("named-pipe", "pipe.txt", FIFO, 0.1, 25, 1,  # reading it waits for a writer forever
     ["corpus path is a named pipe, not a file", "pass a UTF-8 text file"]),
    ("folder", ".", None, 0.1, 25, 1, ["corpus path is a folder, not a file", "pass a UTF-8 text file"]),
    ("not-utf8", "latin1.txt", "héllo wörld ".encode("latin-1") * 20, 0.1, 25, 1,
     ["not valid UTF-8", "0xe9 at offset 1 (", "re-encode"]),
    ("empty", "empty.txt", b"", 0.1, 25, 1, ["empty", "needs some text"]),
    ("train-too-short", "short.txt", b"abcdefghijklmnopqrst", 0.0, 25, 1,
     ["training split", "20 characters", "seq_length + 2 = 27", "lower seq_length"]),
    ("val-too-short", "ten.txt", b"abcdefghij", 0.1, 3, 1,
     ["validation split", "1 characters", "raise val_fraction"]),
    ("batch-too-large", "hundred.txt", b"abcdefghij" * 10, 0.0, 10, 10,
     ["training split", "batch_size", "= 120", "lower seq_length or batch_size"]),
]


@pytest.mark.parametrize("name,content,vf,T,B,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_corpus_error(tmp_path, name, content, vf, T, B, words):
    path = _write(tmp_path, name, content)
    with pytest.raises(CorpusError) as e:
        check_fits(load_corpus(path, vf), T, B)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    with pytest.raises(CorpusError):  # the Trainer checks too
        Trainer(TrainConfig(seq_length=T, batch_size=B), load_corpus(path, vf))


@pytest.mark.parametrize("name,content,vf,T,B,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_cli_exits_2_with_one_error_line(tmp_path, name, content, vf, T, B, words):
    path = _write(tmp_path, name, content)
    r = run_cli("-m", "rnncore.train", "--data", str(path), "--val-fraction", str(vf), "--seq-length", str(T),
                "--batch-size", str(B), "--iterations", "3", "--out", str(tmp_path / "o.npz"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and str(path) in lines[0] and words[-1] in lines[0]
    assert not (tmp_path / "o.npz").exists()


def test_bad_config_cli_exits_2(tmp_path, small_file):
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), "--hidden-size", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: hidden_size") and "Traceback" not in r.stderr


# id, flags, words the one error line must hold: the key, the rule, the value and a fix
BAD_OPTIONS = [
    ("unknown-cell", ["--cell", "lstn"], ["cell must be one of rnn, lstm, gru", "cell='lstn'", "did you mean 'lstm'?"]),
    ("dropout-one", ["--dropout", "1.0"], ["dropout must be in [0, 1)", "dropout=1.0", "use 0 for none"]),
    ("dropout-negative", ["--dropout", "-0.1"], ["dropout must be in [0, 1)", "dropout=-0.1", "use 0 for none"]),
    ("num-layers-zero", ["--num-layers", "0"], ["num_layers must be >= 1", "num_layers=0", "use 1 for a single"]),
    ("warmup-beyond-iterations", ["--warmup", "50", "--iterations", "10"],
     ["warmup must be <= iterations", "warmup=50 with iterations=10", "lower warmup", "or raise iterations"]),
    ("unknown-optimizer", ["--optimizer", "adamw"], ["optimizer must be one of", "did you mean 'adam'?"]),
    ("not-an-integer", ["--num-layers", "two"], ["--num-layers", "num_layers must be an integer", "'two'",
                                                 "write e.g. 1 (the default)"]),
    ("unknown-flag", ["--hidden-sise", "8"], ["unrecognized arguments: --hidden-sise", "did you mean --hidden-size?"]),
]


@pytest.mark.parametrize("flags,words", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_cli_exits_2_with_one_error_line_and_creates_nothing(tmp_path, small_file, flags, words):
    before = sorted(tmp_path.iterdir())
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), *flags, "--out", str(tmp_path / "o.npz"),
                "--metrics-jsonl", str(tmp_path / "m.jsonl"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert sorted(tmp_path.iterdir()) == before and r.stdout == ""


def test_every_engine_option_has_a_flag(small_file):
    """The flags come from TrainConfig's fields: each one parses its default back, and --help says what it means."""
    from dataclasses import fields

    from rnncore.train import build, parse_args

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(parse_args([flag, str(f.default)]), f.name)
        assert value == f.default and type(value) is type(f.default), f.name
        assert getattr(parse_args([]), f.name) is None, f.name  # unset: the engine default applies
    r = run_cli("-m", "rnncore.train", "--help")
    assert "--num-layers INT" in r.stdout and "stacked layers" in r.stdout and "--val-fraction" in r.stdout
    trainer = build(parse_args(["--data", str(small_file), "--dropout", "0.25", "--optimizer", "adam",
                                "--lr-schedule", "cosine", "--warmup", "5", "--iterations", "50"]))
    assert (trainer.cfg.dropout, trainer.cfg.optimizer, trainer.cfg.lr_schedule, trainer.cfg.warmup,
            trainer.cfg.iterations, trainer.cfg.hidden_size) == (0.25, "adam", "cosine", 5, 50, TrainConfig.hidden_size)


def test_init_from_takes_the_model_from_the_file(tmp_path, small_file):
    """--init-from goes on with the file's cell, layer count and width; a flag that asks for another is an error."""
    corpus = load_corpus(small_file, 0.1)
    cfg = TrainConfig(cell="lstm", num_layers=2, hidden_size=8, seq_length=10, iterations=3)
    tr = Trainer(cfg, corpus)
    tr.run(3)
    checkpoint.save(tmp_path / "lstm.npz", cfg, corpus.vocab, tr.state)
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), "--init-from", str(tmp_path / "lstm.npz"),
                "--iterations", "2", "--eval-every", "2", "--sample-length", "5")
    assert r.returncode == 0, r.stderr
    assert "| lstm L=2 H=8 " in r.stdout.splitlines()[0]
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), "--init-from", str(tmp_path / "lstm.npz"),
                "--cell", "gru", "--hidden-size", "8")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: --init-from") and "2-layer lstm" in r.stderr and "got --cell gru;" in r.stderr


# ---------------------------------------------------------------- Unicode


def test_chinese_text_trains_samples_and_round_trips(tmp_path):
    data = tmp_path / "zh.txt"
    data.write_text(CHINESE, encoding="utf-8")
    corpus = load_corpus(data, 0.1)
    assert corpus.vocab.size == len(set(CHINESE)) > 150
    assert list(corpus.vocab.chars) == sorted(set(CHINESE))
    cfg = TrainConfig(hidden_size=32, seq_length=20, learning_rate=0.1, eval_streams=4)
    tr = Trainer(cfg, corpus)
    losses = tr.run(300)
    assert losses[0] == pytest.approx(math.log(corpus.vocab.size), rel=0.01)
    assert losses[-30:].mean() < losses[0] - 1.0
    assert math.isfinite(tr.evaluate())
    text = tr.sample(50, prime="循环神经")
    assert text.startswith("循环神经") and len(text) == 54 and set(text) <= set(corpus.vocab.chars)

    path = tmp_path / "zh.npz"
    checkpoint.save(path, cfg, corpus.vocab, tr.state)
    ck = checkpoint.load(path)
    assert ck.vocab == corpus.vocab
    assert_same_state(ck.state, tr.state)
    assert generate(str(path), 30, 0.8, "神经网络", seed=5) == generate(str(path), 30, 0.8, "神经网络", seed=5)
    r = run_cli("-m", "rnncore.sample", str(path), "--length", "30", "--prime", "神经网络", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == generate(str(path), 30, 1.0, "神经网络", seed=5)
    r = run_cli("-m", "rnncore.sample", str(path), "--prime", "神经网络X")
    assert r.returncode == 2 and "'X'" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- imports


def test_import_rnncore_is_light():
    code = ("import sys, rnncore\n"
            "heavy = [m for m in ('ray', 'mlflow', 'yaml', 'pydantic', 'pandas', 'pipeline', 'pyarrow', 'torch')\n"
            "         if m in sys.modules]\n"
            "print(heavy, 'numpy' in sys.modules)")
    r = run_cli("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] True"


# ---------------------------------------------------------------- sampling without a prime


@pytest.fixture(scope="module")
def batch_model(tmp_path_factory) -> tuple[Trainer, Path, str]:
    """A batch-16 model (float32, 400 iterations, a few seconds), its checkpoint and its corpus.

    The corpus is long enough that its 16 streams never wrap in 400 iterations (2,475 make a pass at T = 25), so
    after iteration 0 no window started from a zero state: the model never learned what follows one. On the first
    50k characters the streams would wrap every 112 iterations and hide the fault."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:1_100_000]
    cfg = TrainConfig(batch_size=16, dtype="float32", iterations=400, eval_every=400, sample_every=0)
    tr = Trainer(cfg, make_corpus(text))
    tr.run(cfg.iterations)
    path = tmp_path_factory.mktemp("batch") / "b16.npz"
    checkpoint.save(path, cfg, tr.corpus.vocab, tr.state)
    return tr, path, text


def test_unprimed_samples_of_a_batch_model_read_like_the_corpus(batch_model):
    """Without a prime, rnncore.sample (and pipeline.sample, and the served model) used to start from a zero state;
    this model then wrote "$3$Q3QZ&Y$EKNZS33XX..." for every seed. From stream 0's carried state, as training-time
    samples start, its characters are distributed like the corpus's: total variation distance 0.1 (garbage: 0.9),
    lowercase letters and spaces 84 % of the corpus (garbage: 4 %)."""
    tr, path, text = batch_model
    vocab = tr.corpus.vocab
    freq = lambda s: np.bincount(vocab.encode(s), minlength=vocab.size) / len(s)  # noqa: E731
    plain = lambda s: sum(c.islower() or c == " " for c in s) / len(s)  # noqa: E731
    for seed in range(4):
        out = generate(str(path), 400, 1.0, "", seed)
        tv = 0.5 * np.abs(freq(out) - freq(text)).sum()
        assert tv < 0.3 and plain(out) > 0.6, (seed, tv, out[:120])


def test_unprimed_cli_samples_start_where_training_time_samples_start(batch_model, tmp_path):
    """The same seed gives the same text from the trainer and from its checkpoint (stream 0's carried state, a
    newline); a file of weights only starts from a zero state."""
    tr, path, _ = batch_model
    for seed in (0, 5):
        assert generate(str(path), 120, 0.8, "", seed) == tr.sample(120, 0.8, seed=seed)
    r = run_cli("-m", "rnncore.sample", str(path), "--length", "120", "--temperature", "0.8", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == tr.sample(120, 0.8, seed=5)

    weights = tmp_path / "weights.npz"
    P = tr.state.params
    np.savez(weights, vocab=tr.corpus.vocab.to_array(), **{n: getattr(P, n) for n in P.names})
    assert checkpoint.load_sampler(weights)[2] is None
    assert len(generate(str(weights), 50, 1.0, "", 0)) == 50


@pytest.fixture(scope="module")
def diverged_model(tmp_path_factory, shakes) -> Path:
    """A checkpoint whose run diverged: float32 weights stepped by a learning rate of 1e38 overflow at once."""
    cfg = TrainConfig(hidden_size=8, seq_length=8, dtype="float32", learning_rate=1e38, iterations=5, eval_every=5,
                      sample_every=0)
    tr = Trainer(cfg, make_corpus(shakes[:2000]))
    with np.errstate(all="ignore"):
        tr.run(cfg.iterations)
    assert not math.isfinite(tr.state.smooth_loss)
    path = tmp_path_factory.mktemp("diverged") / "diverged.npz"
    checkpoint.save(path, cfg, tr.corpus.vocab, tr.state)
    return path


def test_a_diverged_checkpoint_refuses_to_sample(diverged_model):
    """NaN weights make every softmax NaN, and each draw the last character: it used to print "zzzz..."."""
    with pytest.raises(CheckpointError, match="hold NaN or infinite values: the run diverged"):
        generate(str(diverged_model), 20, 1.0, "", 0)
    r = run_cli("-m", "rnncore.sample", str(diverged_model), "--length", "20")
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {diverged_model}: the weights Wxh, Whh"), r.stderr
    assert "the run diverged" in lines[0] and "lower learning_rate" in lines[0], r.stderr


@pytest.mark.parametrize("module", ["rnncore.sample", "pipeline.sample"])
@pytest.mark.parametrize("temperature", ["nan", "inf", "-inf", "0", "-1"])
def test_sample_clis_refuse_a_temperature_that_is_not_finite_and_positive(module, temperature, tmp_path):
    """NaN or inf turn every softmax into NaN: both samplers used to print "zzzz..." and exit 0."""
    r = run_cli("-m", module, str(tmp_path / "model.npz"), "--length", "20", f"--temperature={temperature}")
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        f"error: --temperature must be a finite number > 0, but got {float(temperature)}; 1.0 samples the model's "
        "own distribution, lower is safer"], r.stderr


# ---------------------------------------------------------------- CLIs end to end


def test_cli_train_then_sample(tmp_path, small_file):
    out, metrics = tmp_path / "m.npz", tmp_path / "m.jsonl"
    r = run_cli("-m", "rnncore.train", "--data", str(small_file), "--hidden-size", "16", "--seq-length", "10",
                "--learning-rate", "0.1", "--iterations", "60", "--eval-every", "20", "--sample-every", "30",
                "--out", str(out), "--metrics-jsonl", str(metrics), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stdout.splitlines() if line.startswith("iter ")]
    assert len(progress) == 4  # 20, 30 (sample), 40, 60
    assert sum("bpc" in line for line in progress) == 3 and "bpc" in progress[-1]
    assert r.stdout.count("----") >= 4  # samples at 30 and 60

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [rec for rec in records if set(rec) == {"iteration", "loss"}]
    evals = [rec for rec in records if "val_loss" in rec]
    assert [rec["iteration"] for rec in steps] == list(range(1, 61))
    assert [rec["iteration"] for rec in evals] == [20, 40, 60]
    assert len(steps) + len(evals) == len(records)
    V = load_corpus(small_file, 0.1).vocab.size
    assert steps[0]["loss"] == pytest.approx(math.log(V), rel=0.01)  # nats per character
    for rec in evals:
        assert rec["val_bpc"] == pytest.approx(rec["val_loss"] / math.log(2))
    ck = checkpoint.load(out)
    assert ck.state.iteration == 60

    prime = "First"
    r = run_cli("-m", "rnncore.sample", str(out), "--length", "50", "--temperature", "0.8", "--prime", prime)
    assert r.returncode == 0, r.stderr
    text = r.stdout.rstrip("\n")
    assert text.startswith(prime) and len(text) >= len(prime) + 50
    r2 = run_cli("-m", "rnncore.sample", str(out), "--length", "50", "--temperature", "0.8", "--prime", prime)
    assert r2.stdout == r.stdout  # same default seed, same text


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_train_cli_stopped_by_a_signal_saves_and_says_how_to_continue(sig: str, tmp_path: Path, cli_env) -> None:
    """SIGTERM (docker stop, Kubernetes, Slurm) and SIGHUP (a closed terminal) stop rnncore.train as Ctrl-C does:
    the checkpoint holds the iteration it stopped at, the message says how to continue, exit code 130."""
    import signal
    import time

    from conftest import CORPUS
    from rnncore import checkpoint

    out, metrics = tmp_path / "run.npz", tmp_path / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "rnncore.train", "--data", str(CORPUS), "--hidden-size", "16",
                             "--seq-length", "16", "--iterations", "10000000", "--eval-every", "200",
                             "--out", str(out), "--metrics-jsonl", str(metrics)], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    stopped_at = checkpoint.load(out).state.iteration
    assert stopped_at > 200 and f"interrupted at iteration {stopped_at}; saved {out}" in stderr, stderr
    assert f"continue with --resume {out}" in stderr and "Traceback" not in stderr, stderr


PEAK_MEMORY = """
import json, sys
from rnncore import TrainConfig, Trainer, load_corpus
from rnncore.trainer import memory_bytes

def hwm():  # the process's peak resident memory so far, bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

corpus = load_corpus(sys.argv[2], 0.1)
base = hwm()
cfg = TrainConfig(**{"iterations": 3, "eval_every": 3, "sample_every": 0, **json.loads(sys.argv[1])})
trainer = Trainer(cfg, corpus)
for _ in range(2):
    trainer.step()
trainer.evaluate()
print(json.dumps({"peak": hwm() - base, "estimate": memory_bytes(cfg, corpus.vocab.size)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak resident memory from /proc")
@pytest.mark.parametrize("options", [
    {"hidden_size": 1024},
    {"hidden_size": 256, "batch_size": 128, "seq_length": 100, "dtype": "float32"},
    {"cell": "lstm", "hidden_size": 512, "batch_size": 64, "seq_length": 50, "optimizer": "adam"},
    {"cell": "gru", "hidden_size": 512, "num_layers": 2, "batch_size": 32, "seq_length": 50, "dropout": 0.2},
], ids=["rnn", "rnn-batch", "lstm-adam", "gru-2-layers-dropout"])
def test_memory_estimate_is_close_to_what_training_takes(options: dict, tmp_path: Path) -> None:
    """memory_bytes (what a sweep's plan checks against each node's memory) against the peak resident memory a
    process gains building a Trainer, stepping it and evaluating: within 15 % under and 40 % over."""
    text = tmp_path / "corpus.txt"  # 200,000 characters: a validation split long enough for full chunks
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", PEAK_MEMORY, json.dumps(options), str(text)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ratio = got["estimate"] / got["peak"]
    print(f"\n{options}: peak {got['peak'] / 2**20:.0f} MiB, estimate {got['estimate'] / 2**20:.0f} MiB ({ratio:.2f})")
    assert 0.85 <= ratio <= 1.4, got
