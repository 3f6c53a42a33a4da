"""Training throughput, side by side: the seed's loop (tests/seed_oracle.SeedRNN) vs rnncore, each in a process.

    .venv/bin/python bench/engine.py              # 8 interleaved rounds of 1.5 s per contender and setting
    .venv/bin/python bench/engine.py --quick      # a smoke run (short rounds)
    .venv/bin/python bench/engine.py --rows 1 2   # only the first two settings (1-based, table order)

One BLAS thread for everyone. The seed has no batch: it always runs at B=1 float64 with the row's H and T.
Rounds alternate between contenders so background load hits them alike; each contender's best round counts.
The "per round" column is the median over rounds of the ratio of the two rounds run back to back: a second
view, which a burst of load during one contender's best round cannot move. "spread" is the lowest and
highest of those per-round ratios: how far one run's own rounds disagree, which a margin has to beat.
Each contender trains in a process of its own, the way it runs for real: in one shared process the seed's
speed depended on what the other contender had allocated before it (the heap's state), by up to 20 %.
If PyTorch imports, a CPU nn.RNN baseline (one-hot input, Linear output, cross-entropy, Adagrad) is added.
Not a test: it prints numbers; the lead reads them on a quiet machine.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported, so its BLAS starts with one thread

import argparse  # noqa: E402
import gc  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from rnncore import TrainConfig, Trainer, load_corpus  # noqa: E402
from seed_oracle import SeedRNN  # noqa: E402

# (H, T, B, dtype, target ratio rnncore/seed or None)
SETTINGS = [
    (100, 25, 1, "float64", 3.5),
    (512, 50, 1, "float64", 6.0),
    (100, 25, 64, "float32", 15.0),
    (512, 25, 64, "float32", None),
]


def blas_info() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed (thread count set by environment variables only)"
    infos = threadpoolctl.threadpool_info()
    if not infos:
        return "threadpoolctl: no thread pools found"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer', '-')}) "
                     f"num_threads={i.get('num_threads')} [{Path(i.get('filepath', '?')).name}]" for i in infos)


def limit_threads():
    try:
        import threadpoolctl
        return threadpoolctl.threadpool_limits(1)
    except ImportError:
        return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------- contenders


class SeedContender:
    name = "seed"

    def __init__(self, corpus, H: int, T: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        V = corpus.vocab.size
        Wxh, Whh, Why = (rng.standard_normal(s) * 0.01 for s in ((H, V), (H, H), (V, H)))
        self.rnn = SeedRNN(corpus.train, V, Wxh, Whh, Why, np.zeros((H, 1)), np.zeros((V, 1)), T, 0.1)
        self.chars_per_step = T

    def step(self) -> None:
        self.rnn.step()


class RnncoreContender:
    name = "rnncore"

    def __init__(self, corpus, H: int, T: int, B: int, dtype: str):
        self.trainer = Trainer(TrainConfig(hidden_size=H, seq_length=T, batch_size=B, dtype=dtype,
                                           learning_rate=0.1), corpus)
        self.chars_per_step = T * B

    def step(self) -> None:
        self.trainer.step()


class TorchContender:
    """nn.RNN(tanh) on one-hot inputs (its W_ih is the seed's Wxh), a Linear output layer, cross-entropy,
    element-wise clip at 5, Adagrad; B streams at equally spaced offsets, hidden state carried and detached."""
    name = "torch"

    def __init__(self, torch, corpus, H: int, T: int, B: int, dtype: str):
        self.torch = torch
        nn = torch.nn
        self.dtype = getattr(torch, dtype)
        V = corpus.vocab.size
        self.V, self.T, self.B = V, T, B
        self.rnn = nn.RNN(V, H, nonlinearity="tanh").to(self.dtype)
        self.out = nn.Linear(H, V).to(self.dtype)
        self.params = list(self.rnn.parameters()) + list(self.out.parameters())
        self.opt = torch.optim.Adagrad(self.params, lr=0.1, eps=1e-8)
        self.loss_fn = nn.CrossEntropyLoss()
        train = torch.from_numpy(corpus.train.astype(np.int64))
        self.L = len(train) // B
        self.streams = train[: self.L * B].view(B, self.L).t().contiguous()  # (L, B)
        self.p, self.h, self.first = 0, torch.zeros(1, B, H, dtype=self.dtype), True
        self.chars_per_step = T * B

    def step(self) -> None:
        torch, T = self.torch, self.T
        if self.first or self.p + T + 1 >= self.L:
            self.p, self.first = 0, False
            self.h = self.h.new_zeros(self.h.shape)
        win = self.streams[self.p: self.p + T + 1]  # (T+1, B)
        x = torch.nn.functional.one_hot(win[:-1], self.V).to(self.dtype)  # (T, B, V)
        hs, h = self.rnn(x, self.h)
        logits = self.out(hs)  # (T, B, V)
        loss = self.loss_fn(logits.reshape(-1, self.V), win[1:].reshape(-1))
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.params, 5.0)
        self.opt.step()
        self.h = h.detach()
        self.p += T


def timed_round(contender, seconds: float) -> float:
    """Whole training steps for about `seconds`; returns characters per second."""
    gc.collect()
    steps, t0 = 0, time.perf_counter()
    while True:
        contender.step()
        steps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return steps * contender.chars_per_step / dt


def _contender_process(conn, kind: str, data: str, H: int, T: int, B: int, dtype: str) -> None:
    """A worker process: builds one contender, warms it up, then times one round per request."""
    limit_threads()
    corpus = load_corpus(data, 0.1)
    if kind == "seed":
        c = SeedContender(corpus, H, T)
    elif kind == "rnncore":
        c = RnncoreContender(corpus, H, T, B, dtype)
    else:
        import torch
        torch.set_num_threads(1)
        torch.manual_seed(0)
        c = TorchContender(torch, corpus, H, T, B, dtype)
    for _ in range(2):  # warm up: buffers, caches, first-call costs
        c.step()
    conn.send("ready")
    while (seconds := conn.recv()) is not None:
        conn.send(timed_round(c, seconds))


class Worker:
    """One contender in a process of its own (spawned: a fresh interpreter and heap)."""

    def __init__(self, ctx, kind: str, *args):
        self.name = kind
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_contender_process, args=(child, kind, *args), daemon=True)
        self.proc.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"the {kind} worker did not start")

    def round(self, seconds: float) -> float:
        self.conn.send(seconds)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="length of one timed round per contender")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds; the best one counts")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 s rounds, 2 of them")
    ap.add_argument("--rows", type=int, nargs="+", metavar="N", choices=range(1, len(SETTINGS) + 1),
                    help=f"only these settings, 1-based in table order (1..{len(SETTINGS)}); default all")
    ap.add_argument("--data", default=str(REPO / "data" / "tinyshakespeare.txt"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = min(args.seconds, 0.3), min(args.rounds, 2)

    try:
        import torch
    except ImportError:
        torch = None

    corpus = load_corpus(args.data, 0.1)
    print(f"# rnncore vs the seed's loop: training chars/s, one thread, each in its own process, best of "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s")
    print(f"- CPU: {cpu_name()}; Python {platform.python_version()}; numpy {np.__version__}"
          + (f"; torch {torch.__version__}" if torch else "; torch not installed (no torch column)"))
    print(f"- BLAS: {blas_info()}")
    print(f"- data: {args.data}: {len(corpus.train):,} train chars, vocab {corpus.vocab.size}; "
          "the seed always runs at B=1 float64\n", flush=True)

    head = "| H | T | B | dtype | seed chars/s | rnncore chars/s | rnncore/seed | per round | spread | target | met |"
    rule = "|---:|---:|---:|:---|---:|---:|---:|---:|:---:|---:|:---:|"
    if torch:
        head += " torch chars/s | rnncore/torch |"
        rule += "---:|---:|"
    rows = []
    ctx = mp.get_context("spawn")
    settings = SETTINGS if not args.rows else [SETTINGS[i - 1] for i in args.rows]
    for H, T, B, dtype, target in settings:
        kinds = ["seed", "rnncore"] + (["torch"] if torch else [])
        workers = [Worker(ctx, kind, args.data, H, T, B, dtype) for kind in kinds]
        try:
            speeds = {w.name: [] for w in workers}
            for r in range(args.rounds):
                order = workers if r % 2 == 0 else workers[::-1]  # alternate who goes first
                for w in order:
                    speeds[w.name].append(w.round(args.seconds))
        finally:
            for w in workers:
                w.close()
        best = {name: max(v) for name, v in speeds.items()}
        ratio = best["rnncore"] / best["seed"]
        round_ratios = np.array(speeds["rnncore"]) / np.array(speeds["seed"])
        per_round = float(np.median(round_ratios))
        met = "—" if target is None else ("yes" if ratio >= target else "NO")
        row = (f"| {H} | {T} | {B} | {dtype} | {best['seed']:,.0f} | {best['rnncore']:,.0f} | {ratio:.2f}x | "
               f"{per_round:.2f}x | {round_ratios.min():.2f}–{round_ratios.max():.2f} | "
               f"{'—' if target is None else f'≥{target:g}x'} | {met} |")
        if torch:
            row += f" {best['torch']:,.0f} | {best['rnncore'] / best['torch']:.2f}x |"
        rows.append(row)
        print(f"  measured H={H} T={T} B={B} {dtype}", file=sys.stderr, flush=True)
    print(head)
    print(rule)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
