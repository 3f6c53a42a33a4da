"""Train one model without Ray, like char-rnn's train.lua:

    python -m rnncore.train --data data/tinyshakespeare.txt --hidden-size 100 --seq-length 25 \
        --learning-rate 0.1 --iterations 20000 --out model.npz
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import signal
import sys
import threading
from dataclasses import fields

from . import checkpoint
from .config import FIELD_NAMES, FIELD_TYPES, TrainConfig
from .data import CorpusError, load_corpus
from .trainer import Trainer, train_loop


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other bad input of this CLI (argparse adds usage)
        flag = re.match(r"unrecognized arguments: (--[\w-]+)", message)
        if flag:
            close = difflib.get_close_matches(flag.group(1).split("=")[0], self._option_string_actions, n=1)
            message += f"; did you mean {close[0]}?" if close else "; see --help for the flags"
        self.exit(2, f"error: {message}\n")


def _meanings() -> dict[str, str]:
    """Each option's trailing comment in config.py: its meaning, written once, shown by --help."""
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):  # no source shipped
        return {}
    return dict(re.findall(r"^\s+(\w+): \w+ = .*#\s*(.+)$", source, re.M))


def _typed(name: str):
    """argparse's type for option `name`: the declared type, with the rule's own wording when the text is not one."""
    t, what = FIELD_TYPES[name], {int: "an integer", float: "a number"}.get(FIELD_TYPES[name], "text")

    def convert(text: str):
        try:
            return t(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, but got {text!r}; "
                                             f"write e.g. {getattr(TrainConfig, name)!r} (the default)") from None
    return convert


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m rnncore.train", description="Train a character-level RNN.")
    p.add_argument("--data", default="data/tinyshakespeare.txt", help="UTF-8 text file (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction held out (0 = seed)")
    engine = p.add_argument_group("engine options", "every field of rnncore.config.TrainConfig; unset = its default")
    meanings = _meanings()
    for f in fields(TrainConfig):  # one flag per option: --hidden-size for hidden_size
        engine.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_typed(f.name), default=None,
                            metavar=FIELD_TYPES[f.name].__name__.upper(),
                            help=f"{meanings.get(f.name, '')} (default: {f.default})".replace("%", "%%").lstrip())
    p.add_argument("--out", help="write a checkpoint here at every evaluation and at the end")
    p.add_argument("--init-from", help="start from the weights and vocab of this .npz")
    p.add_argument("--resume", help="continue a run exactly from this checkpoint (its config wins)")
    p.add_argument("--metrics-jsonl", help="append one JSON object per iteration and per evaluation")
    return p.parse_args(argv)


def build(args) -> Trainer:
    given = {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name) is not None}
    cfg = TrainConfig.from_dict(given)  # every value checked, and the rules that tie them, before any file is read
    if args.resume:
        ck = checkpoint.load(args.resume)
        cfg = ck.cfg.replace(iterations=max(cfg.iterations, ck.cfg.iterations)) if "iterations" in given else ck.cfg
        corpus = load_corpus(args.data, args.val_fraction, vocab=ck.vocab)
        return Trainer(cfg, corpus, ck.state)
    state, vocab = None, None
    if args.init_from:  # the file's weights fix the model; a flag that asks for another one is a mistake
        params, vocab = checkpoint.load_weights(args.init_from)
        model = {"cell": params.cell, "num_layers": params.num_layers, "hidden_size": params.hidden_size}
        clash = [f"--{k.replace('_', '-')} {given[k]}" for k in model if k in given and given[k] != model[k]]
        if clash:
            raise ValueError(f"--init-from {args.init_from} holds a {params.num_layers}-layer {params.cell} with "
                             f"hidden_size {params.hidden_size}, but got {', '.join(clash)}; leave "
                             f"{'them' if len(clash) > 1 else 'it'} out to go on with that model, or drop --init-from")
        cfg = cfg.replace(**model)
    corpus = load_corpus(args.data, args.val_fraction, vocab=vocab)
    if args.init_from:
        from .trainer import init_state
        state = init_state(cfg, vocab.size)
        state.params.flat[...] = params.flat  # weights from the file; Adagrad memory starts fresh
    return Trainer(cfg, corpus, state)


def stop_like_ctrl_c() -> None:
    """SIGTERM (docker stop, Kubernetes, Slurm) and SIGHUP (a closed terminal) raise KeyboardInterrupt, as Ctrl-C
    does, so the run saves its checkpoint and says how to continue."""
    if threading.current_thread() is threading.main_thread():  # (signal handlers belong to the main thread)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_like_ctrl_c()
    try:
        trainer = build(args)
    except (CorpusError, checkpoint.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, corpus = trainer.cfg, trainer.corpus
    print(f"data {corpus.path}: {len(corpus.train):,} train / {len(corpus.val):,} val chars, vocab {corpus.vocab.size}"
          f" | {cfg.cell} L={cfg.num_layers} H={cfg.hidden_size} T={cfg.seq_length} B={cfg.batch_size}"
          f" {cfg.optimizer} lr={cfg.learning_rate} {cfg.lr_schedule} {cfg.dtype}")
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
