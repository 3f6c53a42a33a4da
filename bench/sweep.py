"""Sweep overhead: the same 8 trials (a) one after another in one process with rnncore alone, and
(b) through `python -m pipeline.sweep` with 2 CPUs, Ray Tune, MLflow logging and Parquet tables.

    .venv/bin/python bench/sweep.py [--iterations N]
    .venv/bin/python bench/sweep.py --against /tmp/base [--rounds 3]   # (b) here and in another checkout

Target on a 2-core machine: (b) <= 0.6 x (a), i.e. at most ~20 % over perfect 2-way scaling.

A shared machine's speed drifts by several per cent over minutes, so (a) runs in two halves, trials 0-3
before (b) and trials 4-7 after it: both sides of the ratio see the same stretch of time.

(c), for reference, is the machine's own 2-way scaling: the same 8 trials in two plain processes side by side
(4 each, rnncore alone, no Ray). (b) - (c) is what Ray, Tune, MLflow and the tables cost.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LRS = [0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15]
TRAIN = dict(hidden_size=128, seq_length=32, batch_size=8, dtype="float32", eval_every=1000,
             sample_every=2000, sample_length=200)


def sweep_yaml(iterations: int, output: Path) -> str:
    fixed = "\n".join(f"  {k}: {v}" for k, v in {**TRAIN, "iterations": iterations}.items())
    return f"""name: bench-sweep
data: {{path: {ROOT / 'data/tinyshakespeare.txt'}, val_fraction: 0.1}}
train:
  learning_rate: {{grid_search: {LRS}}}
{fixed}
num_samples: 1
seed: 0
scheduler: {{type: fifo}}
max_concurrent_trials: 2
resources: {{cpu: 1, gpu: 0}}
mlflow: {{experiment: bench-sweep}}
output: {output}
"""


def sequential(iterations: int, trials: range) -> float:
    from rnncore import TrainConfig, Trainer, load_corpus, train_loop
    from pipeline.trainable import trial_seed

    corpus = load_corpus(ROOT / "data/tinyshakespeare.txt", 0.1)
    t0 = time.perf_counter()
    for i in trials:
        lr = LRS[i]
        cfg = TrainConfig(**TRAIN, iterations=iterations, learning_rate=lr, seed=trial_seed(0, i))
        t = time.perf_counter()
        for _ in train_loop(Trainer(cfg, corpus)):
            pass
        print(f"  (a) trial {i} lr={lr}: {time.perf_counter() - t:.1f} s", flush=True)
    return time.perf_counter() - t0


def two_processes(iterations: int) -> float:
    lanes = [[sys.executable, __file__, "--iterations", str(iterations), "--lane", str(k)] for k in (0, 1)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for cmd in lanes]
    outs = [p.communicate()[0] for p in procs]
    dt = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        sys.exit("a (c) lane failed")
    print("".join(o.replace("(a)", "(c)") for o in outs), end="", flush=True)
    return dt


def through_pipeline(iterations: int, checkout: Path = ROOT, quiet: bool = False) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.yaml"
        path.write_text(sweep_yaml(iterations, Path(d) / "out"))
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
        env["PYTHONPATH"] = str(checkout)  # that checkout's pipeline and rnncore
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pipeline.sweep", str(path)], cwd=d, env=env,
                           capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"sweep failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        if quiet:
            return dt
        print("\n".join("  (b) " + l for l in r.stdout.splitlines() if l.startswith("[")), flush=True)
        import pandas as pd

        walls = pd.read_parquet(Path(d) / "out" / "trials.parquet")["wall_s"]
        print(f"  (b) trial wall s: {', '.join(f'{w:.1f}' for w in walls)} (sum {walls.sum():.1f}; over 2 CPUs "
              f"{walls.sum() / 2:.1f}; the rest of (b) is start-up, hand-overs and the end)", flush=True)
        return dt


def against(other: Path, iterations: int, rounds: int) -> None:
    """(b) for this checkout and `other`, one after the other, the order flipping every round: the sweep's own
    cost (start-up, hand-overs, end) compared side by side on the same stretch of the machine's time."""
    sides = {"this": ROOT, "other": other.resolve()}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    through_pipeline(iterations, ROOT, quiet=True)  # a first sweep builds the MLflow store template: not timed
    for r in range(rounds):
        for name in (("this", "other") if r % 2 == 0 else ("other", "this")):
            walls[name].append(through_pipeline(iterations, sides[name], quiet=True))
            print(f"  round {r + 1} {name} ({sides[name]}): {walls[name][-1]:.1f} s", flush=True)
    print(f"\n8 trials, {iterations} iterations each, {rounds} rounds\n")
    print("| checkout | best wall s | median wall s |\n| --- | --- | --- |")
    for name, path in sides.items():
        print(f"| {name} ({path}) | {min(walls[name]):.1f} | {statistics.median(walls[name]):.1f} |")
    ratio = statistics.median(a / b for a, b in zip(walls["this"], walls["other"]))
    print(f"\nmedian of the per-round ratios this / other: {ratio:.3f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=8000, help="per trial (8000 is about 15 s here)")
    p.add_argument("--lane", type=int, choices=(0, 1), help=argparse.SUPPRESS)  # one process of (c)
    p.add_argument("--against", type=Path, metavar="CHECKOUT",
                   help="instead: (b) of this checkout and of another revision's, rounds alternating")
    p.add_argument("--rounds", type=int, default=3, help="with --against (default 3)")
    args = p.parse_args()
    if args.lane is not None:
        sequential(args.iterations, range(args.lane, 8, 2))
        return
    if args.against:
        against(args.against, args.iterations, args.rounds)
        return
    print(f"8 trials: H={TRAIN['hidden_size']} T={TRAIN['seq_length']} B={TRAIN['batch_size']} "
          f"{TRAIN['dtype']}, {args.iterations} iterations, eval every {TRAIN['eval_every']}")
    # the machine may be shared: the 1-minute load average before each part says how comparable they are
    load_a = os.getloadavg()[0]
    a1 = sequential(args.iterations, range(0, 4))
    load_b = os.getloadavg()[0]
    from pipeline.tracking import _cache_dir

    templates = sorted(Path(_cache_dir()).glob("mlflow-*-store.db"))  # a machine's first sweep builds it (~3 s)
    print(f"  (b) MLflow store template: {templates[-1] if templates else 'none yet, (b) builds it'}")
    b = through_pipeline(args.iterations)
    c = two_processes(args.iterations)
    a2 = sequential(args.iterations, range(4, 8))
    a = a1 + a2
    print(f"\n(a) trials 0-3 before (b) and (c): {a1:.1f} s, trials 4-7 after them: {a2:.1f} s")
    print("\n| run | wall s | ratio to (a) |\n| --- | --- | --- |")
    print(f"| (a) rnncore alone, one after another | {a:.1f} | 1.00 |")
    print(f"| (b) pipeline.sweep, 2 CPUs, MLflow + Parquet | {b:.1f} | {b / a:.2f} |")
    print(f"| (c) for reference: two plain processes, 4 trials each | {c:.1f} | {c / a:.2f} |")
    print(f"\nload average before (a) {load_a:.1f}, before (b) {load_b:.1f} ({os.cpu_count()} CPUs)")
    print(f"target: (b) <= 0.60 x (a): {'met' if b <= 0.6 * a else 'NOT met'}")


if __name__ == "__main__":
    main()
