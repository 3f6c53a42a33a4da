"""This checkout's rnncore against another revision's, on the seed's cell: do the engine's existing settings
keep their speed? Each contender trains in a process of its own; rounds alternate (the order flips every round).

    git worktree add /tmp/base 01239d9
    .venv/bin/python bench/against.py /tmp/base            # 8 rounds of 1.5 s per contender and setting
    .venv/bin/python bench/against.py /tmp/base --rounds 4

Prints, per setting, each side's best round (chars/s), their ratio, and the median over rounds of the ratio of
the two rounds run back to back. One BLAS thread. Not a test: it prints numbers for a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(100, 25, 1, "float64"), (512, 50, 1, "float64"), (100, 25, 64, "float32")]  # bench/engine.py rows 1-3
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from rnncore import TrainConfig, Trainer, load_corpus
H, T, B, dtype, seconds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
tr = Trainer(TrainConfig(hidden_size=H, seq_length=T, batch_size=B, dtype=dtype), load_corpus(sys.argv[7], 0.1))
tr.run(20)
t, n = time.perf_counter(), 0
while time.perf_counter() - t < seconds:
    tr.run(10)
    n += 10
print(json.dumps(n * T * B / (time.perf_counter() - t)))
"""


def rate(checkout: Path, setting, seconds: float, data: str) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkout), *map(str, setting), str(seconds), data],
                         capture_output=True, text=True, env=env, cwd=checkout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="a checkout of the revision to compare against")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--data", default=str(REPO / "data" / "tinyshakespeare.txt"))
    args = p.parse_args()
    print(f"# rnncore here vs {args.base}: training chars/s, one thread, best of {args.rounds} alternating rounds")
    print("| H | T | B | dtype | base chars/s | here chars/s | here/base | per round |")
    print("|---:|---:|---:|:---|---:|---:|---:|---:|")
    for setting in SETTINGS:
        here, base = [], []
        for r in range(args.rounds):
            pair = ((base, args.base), (here, REPO))
            for runs, checkout in (pair if r % 2 == 0 else pair[::-1]):
                runs.append(rate(checkout, setting, args.seconds, args.data))
        ratio = statistics.median(h / b for h, b in zip(here, base))
        H, T, B, dtype = setting
        print(f"| {H} | {T} | {B} | {dtype} | {max(base):,.0f} | {max(here):,.0f} | {max(here) / max(base):.3f} "
              f"| {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
