"""Text from a sweep trial's final checkpoint, or from a logged or registered model:

    python -m pipeline.sample results/basic [--trial t0003 | --best] --length 500 --temperature 0.8 \
        --prime "ROMEO:" [--seed N] [--tracking-uri URI]
    python -m pipeline.sample models:/NAME/VERSION --length 500 --prime "ROMEO:" [--tracking-uri URI]

Finds the trial's MLflow run in trials.parquet, downloads its ``model/checkpoint.npz`` (from wherever the
run's artifacts live) into a temporary folder and samples with ``rnncore.sample.generate``; for a ``models:/``
URI (the best model a sweep logged, see pipeline/mlflow_model.py) it downloads the model's checkpoint instead,
and the text is what the model's ``predict`` gives for the same prompt and params. The text goes to stdout,
which trial it came from to stderr. Exit 2 with a message for an unknown trial (the valid ids are
listed), a folder without trials.parquet, or a trial without a checkpoint. Imports no Ray.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, Sequence

from . import tracking, vocab
from .report import ReportError, SweepResults, fmt_value, load_results, resolve_tracking_uri

__all__ = ["SampleError", "pick_trial", "download_checkpoint", "sample_model", "sample_trial", "main",
           "CHECKPOINT_ARTIFACT", "MODEL_URI_PREFIX"]

CHECKPOINT_ARTIFACT = "model/checkpoint.npz"
MODEL_URI_PREFIX = "models:/"


class SampleError(Exception):
    """Nothing to sample from; the message says why and what to pass instead (exit code 2)."""


def pick_trial(res: SweepResults, trial: str | None = None) -> dict[str, Any]:
    """The row of trial `trial`, or of the best trial (the sweep's metric and mode) when None."""
    ids = list(res.trials["trial_id"])
    if trial is None:
        best = res.best()
        if best is None:
            raise SampleError(f"{res.output}: no trial has finished with a finite {res.metric} yet, so there is "
                              f"no best trial; pass --trial with one of: {', '.join(ids) or '(none)'}")
        return best.to_dict()
    key = vocab.parse_trial_key(trial)
    if key not in ids:
        raise SampleError(f"unknown trial {trial!r} in {res.output}; valid trial ids: {', '.join(ids) or '(none)'}")
    return res.trials[res.trials["trial_id"] == key].iloc[0].to_dict()


def download_checkpoint(run_id: str, uri: str, dst: str) -> str:
    """Download model/checkpoint.npz of an MLflow run into dst; the local path."""
    try:
        return tracking.download_artifact(uri, run_id, CHECKPOINT_ARTIFACT, dst)
    except tracking.TrackingError as e:
        raise SampleError(str(e)) from None


def sample_trial(output_dir: str | os.PathLike, trial: str | None = None, *, length: int = 500,
                 temperature: float = 0.8, prime: str = "", seed: int = 0,
                 tracking_uri: str | None = None) -> tuple[str, dict[str, Any]]:
    """(prime + `length` sampled characters, the trial's row); `trial` None = the best trial."""
    from rnncore.checkpoint import CheckpointError
    from rnncore.sample import generate

    try:
        res = load_results(output_dir)
    except ReportError as e:
        raise SampleError(str(e)) from None
    row = pick_trial(res, trial)
    tid, status, run_id = row["trial_id"], row.get("status"), row.get("mlflow_run_id")
    if not run_id:
        raise SampleError(f"trial {tid} ({status}) has no MLflow run, so no checkpoint; pick a finished trial")
    uri = resolve_tracking_uri(tracking_uri, res)
    with tempfile.TemporaryDirectory(prefix="rnnsweep-sample-") as d:
        try:
            path = download_checkpoint(run_id, uri, d)
        except SampleError as e:
            hint = "" if status in vocab.CLOSED else " (checkpoints are logged when a trial ends)"
            raise SampleError(f"trial {tid} ({status}) has no checkpoint: {e}{hint}") from None
        try:
            text = generate(path, length, temperature, prime, seed)
        except (CheckpointError, ValueError) as e:
            raise SampleError(f"trial {tid}: {e}") from None
    return text, row


def sample_model(model_uri: str, *, length: int = 500, temperature: float = 0.8, prime: str = "", seed: int = 0,
                 tracking_uri: str | None = None) -> tuple[str, dict[str, str]]:
    """(prime + `length` sampled characters, the model's origin: trial_id, run_id) from a ``models:/`` URI."""
    from rnncore.checkpoint import CheckpointError
    from rnncore.sample import generate

    uri = tracking.resolve_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="rnnsweep-sample-") as d:
        try:
            path, origin = tracking.download_model_checkpoint(uri, model_uri, d)
            return generate(path, length, temperature, prime, seed), origin
        except tracking.TrackingError as e:
            raise SampleError(str(e)) from None
        except (CheckpointError, ValueError) as e:
            raise SampleError(f"{model_uri}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sample",
                                description="Sample text from a sweep trial's final checkpoint (in MLflow).")
    p.add_argument("folder", help="the sweep's output folder, e.g. results/basic; or a model, models:/NAME/VERSION")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="trial id, e.g. t0003 (see trials.parquet or the report)")
    which.add_argument("--best", action="store_true", help="the best trial by the sweep's metric (the default)")
    p.add_argument("--length", type=int, default=500, help="characters to sample after the prime (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="lower = safer, higher = wilder (default 0.8)")
    p.add_argument("--prime", default="", help="text to start from, e.g. \"ROMEO:\"")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep file's mlflow.tracking_uri, "
                                          "else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    args = p.parse_args(argv)
    from rnncore.sample import argument_problem

    problem = argument_problem(args.length, args.temperature)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print("error: --seed must be >= 0", file=sys.stderr)
        return 2
    if args.folder.startswith(MODEL_URI_PREFIX):
        return _main_model(args)
    try:
        text, row = sample_trial(args.folder, None if args.best else args.trial, length=args.length,
                                 temperature=args.temperature, prime=args.prime, seed=args.seed,
                                 tracking_uri=args.tracking_uri)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# trial {row['trial_id']} ({row.get('status')}), val_bpc {fmt_value(row.get('val_bpc'))}, "
          f"MLflow run {row.get('mlflow_run_id')}", file=sys.stderr)
    print(text)
    return 0


def _main_model(args: argparse.Namespace) -> int:
    if args.trial or args.best:
        print(f"error: --trial and --best pick a trial of a sweep folder; {args.folder} is one model already, "
              "so drop them", file=sys.stderr)
        return 2
    try:
        text, origin = sample_model(args.folder, length=args.length, temperature=args.temperature, prime=args.prime,
                                    seed=args.seed, tracking_uri=args.tracking_uri)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# model {args.folder}: trial {origin.get('trial_id') or '?'}, MLflow run {origin.get('run_id') or '?'}",
          file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
