"""rnncore: Karpathy's min-char-rnn, kept faithful and made fast. numpy only.

    from rnncore import TrainConfig, load_corpus, Trainer, train_loop
    trainer = Trainer(TrainConfig(hidden_size=100), load_corpus("data/tinyshakespeare.txt"))
    for progress in train_loop(trainer):
        print(progress.iteration, progress.val_bpc)
"""
from .checkpoint import Checkpoint, CheckpointError, load, load_sampler, load_weights, save
from .config import TrainConfig
from .data import Corpus, CorpusError, Vocab, check_fits, load_corpus, make_corpus, read_text
from .model import Params, evaluate, init_params, sample
from .trainer import Progress, Trainer, TrainState, init_state, train_loop

__all__ = [
    "TrainConfig", "Corpus", "CorpusError", "Vocab", "check_fits", "load_corpus", "make_corpus", "read_text",
    "Params", "evaluate", "init_params", "sample", "Progress", "Trainer", "TrainState", "init_state",
    "train_loop", "Checkpoint", "CheckpointError", "load", "load_sampler", "load_weights", "save",
]
