"""Synthetic sweep results for tests/test_report.py, written without Ray.

- ``write_sweep``: trials.parquet and history.parquet through ``pipeline.results.ResultsTable``, for trial
  specs (searched values, status, final loss, where ASHA stopped it);
- ``make_checkpoint``: a real rnncore checkpoint from a few iterations on a slice of Tiny Shakespeare;
- ``log_to_mlflow``: the sweep driver's MLflow layout in any store (parent run tagged ``rnnsweep.sweep_id``
  with sweep.yaml, one child run per trial tagged ``trial_id`` and ``mlflow.parentRunId``, the checkpoint as
  ``model/checkpoint.npz`` and samples as ``samples/iter_XXXXXX.txt``);
- ``small_specs`` (6 trials: grid hidden_size x loguniform learning_rate, one stopped, one diverged) and
  ``realistic_specs`` (18 trials over hidden_size x seq_length x learning_rate under ASHA).

    python tests/fixtures_report.py OUT_DIR   # a realistic sweep (no MLflow) and its report, to look at
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.results import ResultsTable  # noqa: E402
from rnncore import TrainConfig, Trainer, make_corpus  # noqa: E402
from rnncore import checkpoint as ckpt  # noqa: E402

CORPUS_TEXT = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:4000]
PRIME = "Citizen:"  # every character is in CORPUS_TEXT's vocabulary
LN_V = math.log(65)  # initial loss of a uniform model over Tiny Shakespeare's 65 characters

SAMPLES = [
    "ROMEO:\nWhat light through yonder window breaks? It is the east,\nand Juliet is the sun.",
    "MENENIUS:\nI tell you, friends, most charitable care\nHave the patricians of you.",
    "First Citizen:\nWe are accounted poor citizens, the patricians good.",
]


def sweep_yaml(name: str, train: Mapping[str, Any], *, num_samples: int, output: str,
               tracking_uri: str | None = None, scheduler: Mapping[str, Any] | None = None,
               metric: str = "val_loss") -> str:
    doc: dict[str, Any] = {
        "name": name,
        "data": {"path": "data/tinyshakespeare.txt", "val_fraction": 0.1},
        "train": dict(train),
        "num_samples": num_samples,
        "seed": 0,
        "metric": metric,
        "mode": "min",
        "scheduler": dict(scheduler or {"type": "asha", "grace_period": 500, "reduction_factor": 3}),
        "mlflow": {"experiment": name, **({"tracking_uri": tracking_uri} if tracking_uri else {})},
        "output": output,
    }
    return "# synthetic sweep for tests/test_report.py\n" + yaml.safe_dump(doc, sort_keys=False,
                                                                            default_flow_style=None)


def _curve(final: float, lr: float, iterations: Iterable[int], rng: np.random.Generator) -> list[float]:
    """A plausible validation curve in nats/char that reaches `final` near the end."""
    its = list(iterations)
    tau = max(its) / (3.0 + 6.0 * min(1.0, lr / 0.05))
    out = []
    for it in its:
        v = final + (LN_V - final) * math.exp(-it / tau) + 0.15 * math.exp(-it / (4 * tau))
        out.append(v + rng.normal(0, 0.004))
    out[-1] = final
    return out


def build_trials(specs: list[Mapping[str, Any]], *, base: Mapping[str, Any], seed: int = 0
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Trials rows and history rows for specs of {hp..., status, final (nats/char), stop_at?}.

    status finished: history to base iterations; stopped: to stop_at; diverged: a few finite reports, then
    None/NaN metrics; running: a partial history and no final metrics; failed: an error, no metrics.
    """
    rng = np.random.default_rng(seed)
    target, every = int(base["iterations"]), int(base["eval_every"])
    trials, history = [], []
    for i, spec in enumerate(specs):
        tid = f"t{i:04d}"
        hp = {k: v for k, v in spec.items() if k not in ("status", "final", "stop_at")}
        cfg = TrainConfig.from_dict({**base, **hp, "seed": 1000 + i}).to_dict()
        status, final = spec["status"], spec.get("final")
        lr = cfg["learning_rate"]
        speed = 2.0e5 * (64 / cfg["hidden_size"]) ** 0.7 * (1 + rng.normal(0, 0.05))
        row: dict[str, Any] = {k: v for k, v in cfg.items() if k != "iterations"}
        row.update(trial_id=tid, status=status, target_iterations=target, node="node-" + "abc"[i % 3], sample=None, error=None)
        last = {"stopped": spec.get("stop_at", target // 4), "running": spec.get("stop_at", target // 2),
                "diverged": spec.get("stop_at", 2 * every), "failed": 0}.get(status, target)
        its = list(range(every, last + 1, every)) or [last]
        if status == "failed":
            its = []
        vals = _curve(final if final is not None else 3.0, lr, its, rng) if its else []
        for it, v in zip(its, vals):
            diverged_now = status == "diverged" and it == its[-1]
            val = float("nan") if diverged_now else v
            history.append({"trial_id": tid, "iteration": it, "train_loss": None if diverged_now else v - 0.05,
                            "val_loss": val if not diverged_now else None,
                            "val_bpc": None if diverged_now else v / math.log(2),
                            "chars_per_sec": speed, "elapsed_s": it * cfg["seq_length"] * cfg["batch_size"] / speed})
        finite = [v for it, v in zip(its, vals) if not (status == "diverged" and it == its[-1])]
        if status in ("finished", "stopped"):
            row.update(iterations=last, val_loss=final, val_bpc=final / math.log(2), train_loss=final - 0.05,
                       min_val_loss=min(finite), mean_chars_per_sec=speed, wall_s=last * 0.01,
                       sample=SAMPLES[i % len(SAMPLES)] + f"\n[{tid}]")
        elif status == "diverged":
            row.update(iterations=last, val_loss=None, val_bpc=float("nan"), train_loss=float("nan"),
                       min_val_loss=min(finite) if finite else None, mean_chars_per_sec=speed, wall_s=last * 0.01,
                       error=f"loss became non-finite by iteration {last}")
        elif status == "failed":
            row.update(iterations=0, error="RuntimeError: worker died")
        trials.append(row)
    return trials, history


def write_sweep(output: Path, sweep_text: str, trials: list[Mapping[str, Any]],
                history: list[Mapping[str, Any]]) -> ResultsTable:
    table = ResultsTable(Path(output), sweep_text=sweep_text)
    for i, row in enumerate(trials):
        table.set_trial(row.get("trial_id", f"t{i:04d}"), row)
    for row in history:
        table.add_report(row["trial_id"], {k: v for k, v in row.items() if k != "trial_id"})
    table.write()
    return table


def make_checkpoint(path: Path, iterations: int = 20) -> Path:
    """A real rnncore checkpoint: a tiny model trained for a few iterations on CORPUS_TEXT."""
    cfg = TrainConfig(hidden_size=16, seq_length=8, iterations=iterations, eval_every=iterations,
                      sample_every=0, seed=3)
    corpus = make_corpus(CORPUS_TEXT, 0.1)
    trainer = Trainer(cfg, corpus)
    trainer.run(iterations)
    ckpt.save(path, cfg, corpus.vocab, trainer.state)
    return Path(path)


def log_to_mlflow(uri: str, artifact_root: Path, *, name: str, sweep_text: str, trials: list[dict[str, Any]],
                  checkpoint: Path | None, sweep_id: str = "synthetic0000001") -> str:
    """The sweep driver's run layout; fills each trial's mlflow_run_id and returns the parent run id.

    Finished and stopped trials get the checkpoint; diverged, failed and running ones do not."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_root.as_uri())
    parent = client.create_run(exp_id, run_name=name, tags={"rnnsweep.sweep_id": sweep_id}).info.run_id
    client.log_text(parent, sweep_text, "sweep.yaml")
    for row in trials:
        tid = row["trial_id"]
        run = client.create_run(exp_id, run_name=tid, tags={"trial_id": tid, "mlflow.parentRunId": parent,
                                                            "rnnsweep.sweep_id": sweep_id}).info.run_id
        row["mlflow_run_id"] = run
        if row.get("sample"):
            client.log_text(run, row["sample"], f"samples/iter_{int(row['iterations']):06d}.txt")
        if checkpoint is not None and row["status"] in ("finished", "stopped"):
            client.log_artifact(run, str(checkpoint), "model")
        if row["status"] != "running":
            client.set_terminated(run, status={"finished": "FINISHED", "stopped": "FINISHED"}.get(row["status"],
                                                                                                 "FAILED"))
    client.set_terminated(parent, status="FINISHED")
    return parent


# ------------------------------------------------------------------------------------------ the sweeps

SMALL_BASE = {"seq_length": 16, "batch_size": 4, "dtype": "float32", "iterations": 2000, "eval_every": 250,
              "sample_every": 1000}
SMALL_TRAIN = {"hidden_size": {"grid_search": [16, 32]}, "learning_rate": {"loguniform": [0.003, 0.3]},
               **SMALL_BASE}


def small_specs() -> list[dict[str, Any]]:
    """6 trials (grid hidden_size [16, 32] x num_samples 3, loguniform learning_rate): t0002 stopped by
    ASHA, t0004 diverged; t0003 is the best."""
    return [
        {"hidden_size": 16, "learning_rate": 0.012, "status": "finished", "final": 1.92},
        {"hidden_size": 32, "learning_rate": 0.021, "status": "finished", "final": 1.81},
        {"hidden_size": 16, "learning_rate": 0.0041, "status": "stopped", "final": 2.31, "stop_at": 500},
        {"hidden_size": 32, "learning_rate": 0.055, "status": "finished", "final": 1.7426},
        {"hidden_size": 16, "learning_rate": 0.27, "status": "diverged", "stop_at": 750},
        {"hidden_size": 32, "learning_rate": 0.0078, "status": "finished", "final": 1.9537},
    ]


def write_small(root: Path) -> dict[str, Any]:
    """The small sweep written under `root` as a finished sweep leaves it: MLflow runs (a local store with a
    checkpoint on every child) and the results folder. Returns uri, out, text, trials, checkpoint, parent."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "results" / "small"
    text = sweep_yaml("small", SMALL_TRAIN, num_samples=3, output=str(out), tracking_uri=uri)
    trials, history = build_trials(small_specs(), base=SMALL_BASE)
    checkpoint = make_checkpoint(root / "checkpoint.npz")
    parent = log_to_mlflow(uri, root / "artifacts", name="small", sweep_text=text, trials=trials,
                           checkpoint=checkpoint)
    write_sweep(out, text, trials, history)
    return {"uri": uri, "out": out, "text": text, "trials": trials, "checkpoint": checkpoint, "parent": parent}


REALISTIC_BASE = {"batch_size": 8, "dtype": "float32", "iterations": 6000, "eval_every": 500,
                  "sample_every": 2000}
REALISTIC_TRAIN = {"hidden_size": {"grid_search": [64, 128, 256]}, "seq_length": {"choice": [16, 32, 64]},
                   "learning_rate": {"loguniform": [0.002, 0.3]}, **REALISTIC_BASE}


def realistic_specs(seed: int = 7) -> list[dict[str, Any]]:
    """18 trials (3 grid sizes x num_samples 6) with a loss surface like a real char-RNN sweep: a learning-rate
    optimum near 0.03, bigger and longer-context models slightly better, ASHA stopping the weak third at 1500
    and 3000 iterations, the largest learning rates diverging and one worker failure."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(18):
        h = (64, 128, 256)[i % 3]
        s = int(rng.choice([16, 32, 64]))
        lr = float(math.exp(rng.uniform(math.log(0.002), math.log(0.3))))
        final = (1.50 + 0.22 * (math.log10(lr) + 1.5) ** 2 - 0.07 * math.log2(h / 64) - 0.035 * math.log2(s / 16)
                 + rng.normal(0, 0.015))
        spec: dict[str, Any] = {"hidden_size": h, "seq_length": s, "learning_rate": round(lr, 6),
                                "status": "finished", "final": round(final, 4)}
        if lr > 0.2:
            spec.update(status="diverged", stop_at=1000)
        elif i == 11:
            spec.update(status="failed")
        specs.append(spec)
    done = [sp for sp in specs if sp["status"] == "finished"]
    for sp in sorted(done, key=lambda sp: -sp["final"])[: len(done) // 3]:  # the weakest third: stopped early
        sp.update(status="stopped", stop_at=1500 if sp["final"] > 1.9 else 3000,
                  final=round(sp["final"] + (0.35 if sp["final"] > 1.9 else 0.12), 4))
    return specs


def write_realistic(output: Path, *, tracking_uri: str | None = None, name: str = "shakespeare_synth"
                    ) -> tuple[str, list[dict[str, Any]]]:
    text = sweep_yaml(name, REALISTIC_TRAIN, num_samples=6, output=str(output), tracking_uri=tracking_uri)
    trials, history = build_trials(realistic_specs(), base=REALISTIC_BASE)
    write_sweep(output, text, trials, history)
    return text, trials


if __name__ == "__main__":
    from pipeline.report import write_report

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rnnsweep_report_demo")
    write_realistic(out)
    print(write_report(out, log_to_mlflow=False))
