"""Smarter search, measured: (1) random search vs Optuna TPE with the same trial budget on the same space,
(2) Population Based Training vs a fixed-learning-rate ASHA sweep of about equal compute; each over several
seeds, every sweep run through `python -m pipeline.sweep` on tinyshakespeare.

    .venv/bin/python bench/search.py [--seeds 5] [--budget 16] [--quick]

Prints, per method, the best val_loss (nats/char) reached after the first n trials (in the order the
search proposed them) averaged over the seeds, the per-seed values, and the iterations trained. Numbers
move with the seeds: the table is evidence for this space and budget, not a general verdict.
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

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tinyshakespeare.txt"

# (1) the search space: wide on purpose, so that where a trial lands matters
SEARCH_TRAIN = {
    "hidden_size": {"choice": [32, 64, 128]},
    "seq_length": {"choice": [16, 32]},
    "learning_rate": {"loguniform": [0.001, 1.0]},
    "batch_size": 8, "dtype": "float32", "iterations": 800, "eval_every": 200, "sample_every": 800,
}
# (2) one model, the learning rate is what PBT schedules and ASHA only picks
PBT_TRAIN = {
    "hidden_size": 64, "seq_length": 32, "learning_rate": {"loguniform": [0.001, 1.0]},
    "batch_size": 8, "dtype": "float32", "eval_every": 200, "sample_every": 0,
}


def sweep_file(folder: Path, name: str, seed: int, **keys) -> Path:
    doc = {"name": name, "data": {"path": str(CORPUS), "val_fraction": 0.1}, "seed": seed,
           "metric": "val_loss", "mode": "min", "output": str(folder / "out"), **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.sweep", str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{path.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = path.parent / "out"
    return pd.read_parquet(out / "trials.parquet"), pd.read_parquet(out / "history.parquet"), wall


def best_after(trials: pd.DataFrame, checkpoints: list[int]) -> list[float]:
    """The best val_loss among the first n trials (trial ids count in proposal order), for each n."""
    t = trials.sort_values("trial_id")
    loss = t["best_val_loss"].where(t["status"].isin(["finished", "stopped"]))
    return [float(loss.iloc[:n].min()) for n in checkpoints]


def search_sweeps(seeds: list[int], budget: int, startup: int) -> list[str]:
    checkpoints = sorted({max(2, budget // 4), budget // 2, 3 * budget // 4, budget})
    rows: dict[str, list[list[float]]] = {"random": [], "optuna TPE": []}
    lines = []
    for seed in seeds:
        for method, search in (("random", {"type": "random"}),
                               ("optuna TPE", {"type": "optuna", "startup_trials": startup})):
            with tempfile.TemporaryDirectory(prefix="bs") as d:
                path = sweep_file(Path(d), "bench-search", seed, train=SEARCH_TRAIN, num_samples=budget,
                                  search_alg=search, scheduler={"type": "fifo"}, max_concurrent_trials=2,
                                  resources={"cpu": 1, "gpu": 0})
                trials, _, wall = run(path)
            rows[method].append(best_after(trials, checkpoints))
            print(f"  seed {seed} {method:>10}: best after {checkpoints} trials = "
                  f"{', '.join(f'{v:.4f}' for v in rows[method][-1])}  ({wall:.0f} s)", flush=True)
    head = "| method | " + " | ".join(f"best after {n}" for n in checkpoints) + " | per seed (all trials) |"
    lines += [head, "|" + "---|" * (len(checkpoints) + 2)]
    for method, per_seed in rows.items():
        means = [statistics.mean(col) for col in zip(*per_seed)]
        lines.append(f"| {method} | " + " | ".join(f"{m:.4f}" for m in means) + " | "
                     + ", ".join(f"{r[-1]:.4f}" for r in per_seed) + " |")
    return lines


def pbt_sweeps(seeds: list[int], iterations: int) -> list[str]:
    results: dict[str, list[tuple[float, int]]] = {"PBT (4 trials)": [], "ASHA, fixed lr (6 trials)": []}
    for seed in seeds:
        pbt = dict(train={**PBT_TRAIN, "iterations": iterations}, num_samples=4, max_concurrent_trials=4,
                   resources={"cpu": 0.5, "gpu": 0},
                   scheduler={"type": "pbt", "perturbation_interval": 2 * PBT_TRAIN["eval_every"],
                              "mutations": {"learning_rate": {"loguniform": [0.001, 1.0]}},
                              "quantile_fraction": 0.5, "resample_probability": 0.25})
        # ASHA with reduction factor 2 from a quarter of the iterations: 6 trials train about 4 x iterations
        asha = dict(train={**PBT_TRAIN, "iterations": iterations}, num_samples=6, max_concurrent_trials=4,
                    resources={"cpu": 0.5, "gpu": 0},
                    scheduler={"type": "asha", "grace_period": iterations // 4, "reduction_factor": 2})
        for method, keys in (("PBT (4 trials)", pbt), ("ASHA, fixed lr (6 trials)", asha)):
            with tempfile.TemporaryDirectory(prefix="bp") as d:
                trials, _, wall = run(sweep_file(Path(d), "bench-pbt", seed, **keys))
            ok = trials[trials["status"].isin(["finished", "stopped"])]
            trained = int(trials["iterations"].sum())  # (a PBT copy goes on from its source's iteration)
            results[method].append((float(ok["val_loss"].min()), trained))
            print(f"  seed {seed} {method:>26}: best final val_loss {results[method][-1][0]:.4f}, "
                  f"{trained} iterations trained ({wall:.0f} s)", flush=True)
    lines = ["| method | best final val_loss (mean) | per seed | iterations trained (mean) |", "|---|---|---|---|"]
    for method, rs in results.items():
        lines.append(f"| {method} | {statistics.mean(r[0] for r in rs):.4f} | "
                     f"{', '.join(f'{r[0]:.4f}' for r in rs)} | {statistics.mean(r[1] for r in rs):,.0f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=16, help="trials per random/TPE sweep")
    p.add_argument("--startup", type=int, default=4, help="TPE's random start-up trials")
    p.add_argument("--pbt-iterations", type=int, default=1600, help="iterations per PBT trial")
    p.add_argument("--quick", action="store_true", help="1 seed, budget 8, 800 PBT iterations: a smoke run")
    p.add_argument("--only", choices=["search", "pbt"])
    a = p.parse_args()
    if a.quick:
        a.seeds, a.budget, a.startup, a.pbt_iterations = 1, 8, 3, 800
    seeds = list(range(a.seeds))
    t0 = time.perf_counter()
    out = []
    if a.only != "pbt":
        print(f"(1) random vs Optuna TPE: {a.budget} trials each (TPE: {a.startup} random first), seeds {seeds}, "
              f"FIFO, 2 at a time; space {SEARCH_TRAIN}", flush=True)
        out += ["", f"Random search vs TPE, best val_loss (nats/char) after n trials, mean of {len(seeds)} seeds:",
                "", *search_sweeps(seeds, a.budget, a.startup)]
    if a.only != "search":
        print(f"(2) PBT vs ASHA with fixed learning rates, {a.pbt_iterations} iterations per trial, seeds {seeds}",
              flush=True)
        out += ["", f"PBT vs ASHA of about equal compute, mean of {len(seeds)} seeds:", "",
                *pbt_sweeps(seeds, a.pbt_iterations)]
    print("\n".join(out))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
