"""Sample text from a checkpoint, like char-rnn's sample.lua:

    python -m rnncore.sample model.npz --length 500 --temperature 0.8 --prime "ROMEO:"
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .checkpoint import CheckpointError, load_sampler
from .config import OptionError, check_value
from .data import Vocab
from .model import Params, advance, sample
from .trainer import unprimed_start


def generate(path: str, length: int = 500, temperature: float = 1.0, prime: str = "", seed: int = 0) -> str:
    """prime + `length` sampled characters from the checkpoint at `path`; deterministic for a given seed. Without a
    prime it starts where the checkpoint's training-time samples start: stream 0's carried state, a newline."""
    P, vocab, h = load_sampler(path)
    return generate_from(P, vocab, length, temperature, prime, seed, h=h)


def argument_problem(length: int, temperature: float) -> str | None:
    """What is wrong with a sampler's --length and --temperature, or None. The temperature keeps the engine's
    rule (finite, > 0): NaN or inf turn every softmax into NaN, and each draw into the last character."""
    try:
        check_value("temperature", temperature)
    except OptionError:
        return (f"--temperature must be a finite number > 0, but got {temperature}; 1.0 samples the model's own "
                "distribution, lower is safer")
    return None if length > 0 else f"--length must be > 0, but got {length}; ask for at least one character"


def generate_from(P: Params, vocab: Vocab, length: int = 500, temperature: float = 1.0, prime: str = "",
                  seed: int = 0, *, h: np.ndarray | None = None) -> str:
    """The same from weights already loaded (a served model loads them once and samples many times); h is the
    checkpoint's carried state (B, S*H), None for a file of weights only (then an unprimed sample starts from a
    zero state, which a model trained without wrapping its streams may never have learned from)."""
    rng = np.random.default_rng(seed)
    if prime:
        missing = sorted(set(prime) - set(vocab.chars))
        if missing:
            raise ValueError(f"prime text has characters the model never saw: {''.join(missing)!r}; remove them")
        ids = vocab.encode(prime)
        h, seed_ix = advance(P, None, ids[:-1]), int(ids[-1])
    else:
        h, seed_ix = unprimed_start(h, vocab, rng)
    return prime + vocab.decode(sample(P, h, seed_ix, length, rng, temperature))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnncore.sample", description="Sample from a checkpoint.")
    p.add_argument("checkpoint", help=".npz written by rnncore.train or a sweep trial")
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--temperature", type=float, default=1.0, help="lower = safer, higher = wilder")
    p.add_argument("--prime", default="", help="text to start from")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problem = argument_problem(args.length, args.temperature)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        print(generate(args.checkpoint, args.length, args.temperature, args.prime, args.seed))
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
