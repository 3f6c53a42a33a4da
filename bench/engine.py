"""Training throughput of rnncore beside the seed's loop and PyTorch, each contender in a process of its own.

The seed's loop (tests/seed_oracle.SeedRNN) is the baseline of the seed's cell (rnn); PyTorch's CPU nn.LSTM and
nn.GRU are the baselines of the gated cells.

    .venv/bin/python bench/engine.py              # 8 interleaved rounds of 1.5 s per contender and setting
    .venv/bin/python bench/engine.py --quick      # a smoke run (short rounds)
    .venv/bin/python bench/engine.py --rows 1 2   # only the first two settings (1-based, table order)
    .venv/bin/python bench/engine.py --rows 5 6 --torch-python ../torchvenv/bin/python

One BLAS thread for everyone. The seed has no batch: it always runs at B=1 float64 with the row's H and T.
Rounds alternate between contenders so background load hits them alike; each contender's best round counts.
The "per round" column is the median over rounds of the ratio of the two rounds run back to back: a second
view, which a burst of load during one contender's best round cannot move. "spread" is the lowest and
highest of those per-round ratios: how far one run's own rounds disagree, which a margin has to beat.
Each contender trains in a process of its own, the way it runs for real: in one shared process the seed's
speed depended on what the other contender had allocated before it (the heap's state), by up to 20 %.

PyTorch: its contenders run under the Python named by --torch-python (or the environment variable
RNNSWEEP_TORCH_PYTHON), else under this script's own Python; the torch columns and rows appear when
`import torch` works there. torch can live in a virtual environment of its own, outside the checkout:
    python3 -m venv ../torchvenv && ../torchvenv/bin/pip install numpy torch     # a CPU build of torch
That Python imports rnncore from this checkout (numpy only) to read the same corpus. Each PyTorch contender
trains the same windows of the same data as rnncore: B streams at equally spaced offsets, T characters a
window, the hidden state carried and detached, one-hot input, a Linear output layer, cross-entropy, every
gradient clamped to [-5, 5], Adagrad at 0.1, torch.set_num_threads(1). It uses PyTorch's own initialisation.
- Rows with the seed's cell (rnn) compare against the seed; with torch, an nn.RNN(tanh) column is added.
- Rows with an LSTM or GRU compare against nn.LSTM / nn.GRU (the seed has no gated cell).
Not a test: it prints numbers; the lead reads them on a quiet machine.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported, so its BLAS starts with one thread

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from rnncore import TrainConfig, Trainer, load_corpus  # noqa: E402
from seed_oracle import SeedRNN  # noqa: E402

# (cell, H, T, B, dtype, target ratio or None): rnncore/seed for the rnn rows, rnncore/torch for the gated ones
SETTINGS = [
    ("rnn", 100, 25, 1, "float64", 3.5),
    ("rnn", 512, 50, 1, "float64", 6.0),
    ("rnn", 100, 25, 64, "float32", 15.0),
    ("rnn", 512, 25, 64, "float32", None),
    ("lstm", 256, 50, 64, "float32", 1.0),
    ("gru", 256, 50, 64, "float32", 1.0),
]
TORCH_PYTHON_ENV = "RNNSWEEP_TORCH_PYTHON"


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

    def __init__(self, corpus, cell: str, H: int, T: int, B: int, dtype: str):
        self.trainer = Trainer(TrainConfig(cell=cell, hidden_size=H, seq_length=T, batch_size=B, dtype=dtype,
                                           learning_rate=0.1), corpus)
        self.chars_per_step = T * B

    def step(self) -> None:
        self.trainer.step()


class TorchContender:
    """nn.RNN(tanh), nn.LSTM or nn.GRU on one-hot inputs (W_ih is rnncore's Wxh), a Linear output layer,
    cross-entropy, element-wise clip at 5, Adagrad; B streams at equally spaced offsets, the hidden state
    (an LSTM's h and c) carried and detached."""
    name = "torch"

    def __init__(self, torch, corpus, cell: str, H: int, T: int, B: int, dtype: str):
        self.torch = torch
        nn = torch.nn
        self.dtype = getattr(torch, dtype)
        V = corpus.vocab.size
        self.V, self.T, self.B = V, T, B
        if cell == "rnn":
            self.rnn = nn.RNN(V, H, nonlinearity="tanh").to(self.dtype)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](V, H).to(self.dtype)
        self.out = nn.Linear(H, V).to(self.dtype)
        self.params = list(self.rnn.parameters()) + list(self.out.parameters())
        self.opt = torch.optim.Adagrad(self.params, lr=0.1, eps=1e-8)
        self.loss_fn = nn.CrossEntropyLoss()
        train = torch.from_numpy(corpus.train.astype(np.int64))
        self.L = len(train) // B
        self.streams = train[: self.L * B].view(B, self.L).t().contiguous()  # (L, B)
        zeros = torch.zeros(1, B, H, dtype=self.dtype)
        self.p, self.h, self.first = 0, (zeros, zeros.clone()) if cell == "lstm" else zeros, True
        self.chars_per_step = T * B

    def step(self) -> None:
        torch, T = self.torch, self.T
        if self.first or self.p + T + 1 >= self.L:
            self.p, self.first = 0, False
            self.h = tuple(h.new_zeros(h.shape) for h in self.h) if isinstance(self.h, tuple) else \
                self.h.new_zeros(self.h.shape)
        win = self.streams[self.p: self.p + T + 1]  # (T+1, B)
        x = torch.nn.functional.one_hot(win[:-1], self.V).to(self.dtype)  # (T, B, V)
        hs, h = self.rnn(x, self.h)
        logits = self.out(hs)  # (T, B, V)
        loss = self.loss_fn(logits.reshape(-1, self.V), win[1:].reshape(-1))
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.params, 5.0)
        self.opt.step()
        self.h = tuple(a.detach() for a in h) if isinstance(h, tuple) else h.detach()
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


def worker_main(kind: str, data: str, cell: str, H: int, T: int, B: int, dtype: str) -> int:
    """A worker process (`engine.py --worker ...`): builds one contender, warms it up, then reads a round's
    length in seconds per line on stdin and answers that round's chars/s on stdout; an empty line ends it."""
    limit_threads()
    corpus = load_corpus(data, 0.1)
    if kind == "seed":
        c = SeedContender(corpus, H, T)
    elif kind == "rnncore":
        c = RnncoreContender(corpus, cell, H, T, B, dtype)
    else:
        import torch
        torch.set_num_threads(1)
        torch.manual_seed(0)
        c = TorchContender(torch, corpus, cell, H, T, B, dtype)
    for _ in range(2):  # warm up: buffers, caches, first-call costs
        c.step()
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        print(timed_round(c, float(line)), flush=True)
    return 0


class Worker:
    """One contender in a process of its own: a fresh interpreter and heap, under `python` (the torch
    contenders may run under another environment's Python)."""

    def __init__(self, python: str, kind: str, data: str, cell: str, H: int, T: int, B: int, dtype: str):
        self.name = kind
        cmd = [python, str(Path(__file__).resolve()), "--worker", kind, "--data", data,
               "--setting", cell, str(H), str(T), str(B), dtype]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the {kind} worker did not start ({' '.join(cmd)})")

    def round(self, seconds: float) -> float:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(30)


def torch_python(flag: str | None) -> tuple[str | None, str]:
    """The Python that runs the torch contenders and its torch version, or (None, why there is no torch)."""
    python = flag or os.environ.get(TORCH_PYTHON_ENV) or sys.executable
    try:
        out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{python} did not run ({e})"
    if out.returncode != 0:
        return None, f"torch does not import under {python}"
    return python, out.stdout.strip()


def measure(workers: list[Worker], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Interleaved rounds, the order alternating so that neither contender always goes first."""
    speeds = {w.name: [] for w in workers}
    for r in range(rounds):
        for w in (workers if r % 2 == 0 else workers[::-1]):
            speeds[w.name].append(w.round(seconds))
    return speeds


def ratio_cells(mine: list[float], theirs: list[float], target) -> str:
    """ratio of best rounds | per-round median | spread | target | met"""
    ratio = max(mine) / max(theirs)
    per = np.array(mine) / np.array(theirs)
    met = "—" if target is None else ("yes" if ratio >= target else "NO")
    return (f"{ratio:.2f}x | {float(np.median(per)):.2f}x | {per.min():.2f}–{per.max():.2f} | "
            f"{'—' if target is None else f'≥{target:g}x'} | {met} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="length of one timed round per contender")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds; the best one counts")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 s rounds, 2 of them")
    ap.add_argument("--rows", type=int, nargs="+", metavar="N", choices=range(1, len(SETTINGS) + 1),
                    help=f"only these settings, 1-based in table order (1..{len(SETTINGS)}); default all")
    ap.add_argument("--data", default=str(REPO / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--torch-python", metavar="PYTHON",
                    help=f"the Python that runs the PyTorch contenders (default: ${TORCH_PYTHON_ENV}, else this one)")
    ap.add_argument("--worker", choices=("seed", "rnncore", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--setting", nargs=5, help=argparse.SUPPRESS)  # cell H T B dtype, for --worker
    args = ap.parse_args(argv)
    if args.worker:
        cell, H, T, B, dtype = args.setting
        return worker_main(args.worker, args.data, cell, int(H), int(T), int(B), dtype)
    if args.quick:
        args.seconds, args.rounds = min(args.seconds, 0.3), min(args.rounds, 2)

    tpy, torch_version = torch_python(args.torch_python)
    corpus = load_corpus(args.data, 0.1)
    print(f"# rnncore vs the seed's loop and PyTorch: training chars/s, one thread, each in its own process, "
          f"best of {args.rounds} interleaved rounds of {args.seconds:g} s")
    print(f"- CPU: {cpu_name()}; Python {platform.python_version()}; numpy {np.__version__}"
          + (f"; torch {torch_version} ({tpy})" if tpy else f"; no torch column ({torch_version})"))
    print(f"- BLAS: {blas_info()}")
    print(f"- data: {args.data}: {len(corpus.train):,} train chars, vocab {corpus.vocab.size}; "
          "the seed always runs at B=1 float64\n", flush=True)

    seed_rows, torch_rows = [], []
    settings = SETTINGS if not args.rows else [SETTINGS[i - 1] for i in args.rows]
    for cell, H, T, B, dtype, target in settings:
        kinds = (["seed"] if cell == "rnn" else []) + ["rnncore"] + (["torch"] if tpy else [])
        if cell != "rnn" and not tpy:
            print(f"  skipped {cell} H={H}: its baseline is PyTorch ({torch_version})", file=sys.stderr)
            continue
        workers = []
        try:
            for kind in kinds:
                python = tpy if kind == "torch" else sys.executable
                workers.append(Worker(python, kind, args.data, cell, H, T, B, dtype))
            speeds = measure(workers, args.rounds, args.seconds)
        finally:
            for w in workers:
                w.close()
        best = {name: max(v) for name, v in speeds.items()}
        if cell == "rnn":
            row = (f"| {H} | {T} | {B} | {dtype} | {best['seed']:,.0f} | {best['rnncore']:,.0f} | "
                   + ratio_cells(speeds["rnncore"], speeds["seed"], target))
            if tpy:
                row += f" {best['torch']:,.0f} | {best['rnncore'] / best['torch']:.2f}x |"
            seed_rows.append(row)
        else:
            torch_rows.append(f"| {cell} | {H} | {T} | {B} | {dtype} | {best['torch']:,.0f} | {best['rnncore']:,.0f} | "
                              + ratio_cells(speeds["rnncore"], speeds["torch"], target))
        print(f"  measured {cell} H={H} T={T} B={B} {dtype}", file=sys.stderr, flush=True)
    if seed_rows:
        head = ("| H | T | B | dtype | seed chars/s | rnncore chars/s | rnncore/seed | per round | spread | target "
                "| met |")
        rule = "|---:|---:|---:|:---|---:|---:|---:|---:|:---:|---:|:---:|"
        if tpy:
            head += " torch chars/s | rnncore/torch |"
            rule += "---:|---:|"
        print("\n".join([head, rule] + seed_rows))
    if torch_rows:
        print("\n" if seed_rows else "", end="")
        print("| cell | H | T | B | dtype | torch chars/s | rnncore chars/s | rnncore/torch | per round | spread "
              "| target | met |")
        print("|:---|---:|---:|---:|:---|---:|---:|---:|---:|:---:|---:|:---:|")
        print("\n".join(torch_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
