"""Train one model without Ray, like char-rnn's train.lua:

    python -m rnncore.train --data data/tinyshakespeare.txt --hidden-size 100 --seq-length 25 \
        --learning-rate 0.1 --iterations 20000 --out model.npz
"""
from __future__ import annotations

import argparse
import json
import sys

from . import checkpoint
from .config import TrainConfig
from .data import CorpusError, load_corpus
from .trainer import Trainer, train_loop


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m rnncore.train", description="Train a character-level RNN.")
    p.add_argument("--data", default="data/tinyshakespeare.txt", help="UTF-8 text file (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction held out (0 = seed)")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--seq-length", type=int, default=d.seq_length)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dtype", choices=["float64", "float32"], default=d.dtype)
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="0 = sample only at the end")
    p.add_argument("--sample-length", type=int, default=d.sample_length)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", help="write a checkpoint here at every evaluation and at the end")
    p.add_argument("--init-from", help="start from the weights and vocab of this .npz")
    p.add_argument("--resume", help="continue a run exactly from this checkpoint (its config wins)")
    p.add_argument("--metrics-jsonl", help="append one JSON object per iteration and per evaluation")
    return p.parse_args(argv)


def build(args) -> Trainer:
    if args.resume:
        ck = checkpoint.load(args.resume)
        cfg = ck.cfg.replace(iterations=max(args.iterations, ck.cfg.iterations)) \
            if args.iterations != TrainConfig().iterations else ck.cfg
        corpus = load_corpus(args.data, args.val_fraction, vocab=ck.vocab)
        return Trainer(cfg, corpus, ck.state)
    state, vocab, hidden = None, None, args.hidden_size
    if args.init_from:
        params, vocab = checkpoint.load_weights(args.init_from)
        hidden = params.hidden_size
    cfg = TrainConfig(hidden_size=hidden, seq_length=args.seq_length, learning_rate=args.learning_rate,
                      batch_size=args.batch_size, dtype=args.dtype, iterations=args.iterations,
                      eval_every=args.eval_every, sample_every=args.sample_every,
                      sample_length=args.sample_length, temperature=args.temperature, seed=args.seed)
    corpus = load_corpus(args.data, args.val_fraction, vocab=vocab)
    if args.init_from:
        from .trainer import init_state
        state = init_state(cfg, vocab.size)
        state.params.flat[...] = params.flat  # weights from the file; Adagrad memory starts fresh
    return Trainer(cfg, corpus, state)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        trainer = build(args)
    except (CorpusError, checkpoint.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, corpus = trainer.cfg, trainer.corpus
    print(f"data {corpus.path}: {len(corpus.train):,} train / {len(corpus.val):,} val chars, vocab {corpus.vocab.size}"
          f" | H={cfg.hidden_size} T={cfg.seq_length} B={cfg.batch_size} lr={cfg.learning_rate} {cfg.dtype}")
    log = open(args.metrics_jsonl, "a", encoding="utf-8") if args.metrics_jsonl else None
    try:
        for pr in train_loop(trainer):
            if log:
                first = pr.iteration - len(pr.losses) + 1
                log.writelines(json.dumps({"iteration": first + i, "loss": float(l)}) + "\n"
                               for i, l in enumerate(pr.losses))
                if pr.val_loss is not None:
                    log.write(json.dumps({"iteration": pr.iteration, "train_loss": pr.train_loss,
                                          "val_loss": pr.val_loss, "val_bpc": pr.val_bpc,
                                          "chars_per_sec": pr.chars_per_sec}) + "\n")
                log.flush()
            if pr.diverged:
                print(f"iter {pr.iteration}: diverged (loss became {pr.last_loss}); "
                      f"lower the learning rate (now {cfg.learning_rate})", file=sys.stderr)
                return 1
            val = f" | val {pr.val_loss:.4f} nats/char ({pr.val_bpc:.3f} bpc)" if pr.val_loss is not None else ""
            print(f"iter {pr.iteration:>7,}/{cfg.iterations:,} | train {pr.train_loss:.4f} nats/char{val}"
                  f" | {pr.chars_per_sec:,.0f} chars/s | {pr.elapsed_s:.0f}s", flush=True)
            if pr.sample is not None:
                print(f"----\n{pr.sample}\n----", flush=True)
            if args.out and (pr.val_loss is not None or pr.done):
                checkpoint.save(args.out, cfg, corpus.vocab, trainer.state)
    except KeyboardInterrupt:
        if args.out:
            checkpoint.save(args.out, cfg, corpus.vocab, trainer.state)
            print(f"\ninterrupted at iteration {trainer.state.iteration}; saved {args.out}; "
                  f"continue with --resume {args.out}", file=sys.stderr)
        return 130
    finally:
        if log:
            log.close()
    if args.out:
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
