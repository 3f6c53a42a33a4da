"""Corpus loading, the sorted vocabulary, the train/val split and batch windows."""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

import numpy as np


class CorpusError(ValueError):
    """A corpus that cannot be trained on; the message names the file and the fix."""


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # index -> character, sorted so every process builds the same order
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stoi", {ch: i for i, ch in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self.stoi[ch] for ch in text), dtype=np.int32, count=len(text))
        except KeyError as e:
            raise CorpusError(f"character {e.args[0]!r} is not in the model's vocabulary of {self.size} "
                              "characters; train on a corpus that contains it") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_array(self) -> np.ndarray:
        return np.array(self.chars, dtype="<U1")  # (V,) unicode, one char each, in index order


@dataclass(frozen=True)
class Corpus:
    path: str  # where the text came from (for messages and logging)
    vocab: Vocab
    train: np.ndarray  # (N,) int32 character indices of the training split
    val: np.ndarray  # (M,) int32 indices of the validation split (M = 0 when val_fraction = 0)
    sha256: str  # of the UTF-8 bytes, so a run records exactly which text it saw


def not_a_file(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists but is no regular file ("a folder", "a character device", ...), else None.
    Reading one would not end (/dev/zero), block (a FIFO nobody writes) or fail; the message names which."""
    mode = os.stat(path).st_mode
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    return next((kind for is_kind, kind in kinds if is_kind(mode)), None if stat.S_ISREG(mode) else "a special file")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text, or a CorpusError that says what is wrong with it and how to fix it."""
    path = os.fspath(path)
    try:
        kind = not_a_file(path)
        if kind:
            raise CorpusError(f"corpus path is {kind}, not a file: {path}; pass a UTF-8 text file")
        raw = open(path, "rb").read()
    except FileNotFoundError:
        raise CorpusError(f"corpus file not found: {path}; pass the path of an existing UTF-8 text file") from None
    except PermissionError:
        raise CorpusError(f"corpus file is not readable: {path}; check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus file is not valid UTF-8: {path}: byte 0x{raw[e.start]:02x} at offset {e.start} "
                          f"({e.reason}); re-encode it, e.g. iconv -f latin1 -t utf-8") from None
    if not text:
        raise CorpusError(f"corpus file is empty: {path}; it needs some text to learn from")
    return text


def make_corpus(text: str, val_fraction: float = 0.1, *, vocab: Vocab | None = None,
                path: str = "<text>", sha256: str | None = None) -> Corpus:
    """Split off the last `val_fraction` of `text` for validation (0 = train on everything, like the seed)."""
    if not 0.0 <= val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in [0, 1), but got {val_fraction}; 0.1 holds out the last tenth")
    if not text:
        raise CorpusError(f"corpus is empty: {path}; it needs some text to learn from")
    vocab = vocab or Vocab.from_text(text)
    ids = vocab.encode(text)  # (N+M,)
    n_val = int(len(ids) * val_fraction)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    if val_fraction > 0 and len(val) < 2:
        raise CorpusError(f"validation split of {path} has {len(val)} characters, but evaluation needs at least 2; "
                          f"raise val_fraction (now {val_fraction}) or set it to 0 to train on everything")
    digest = sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(path=path, vocab=vocab, train=train, val=val, sha256=digest)


def load_corpus(path: str | os.PathLike, val_fraction: float = 0.1, *, vocab: Vocab | None = None) -> Corpus:
    return make_corpus(read_text(path), val_fraction, vocab=vocab, path=os.fspath(path))


def check_fits(corpus: Corpus, seq_length: int, batch_size: int = 1) -> None:
    """Each of the B streams owns N // B characters and needs at least seq_length + 2 of them."""
    n, need = len(corpus.train), (seq_length + 2) * batch_size
    if n < need:
        what = f"seq_length + 2 = {need}" if batch_size == 1 else \
            f"(seq_length + 2) x batch_size = {seq_length + 2} x {batch_size} = {need}"
        raise CorpusError(f"training split of {corpus.path} has {n} characters, but {what} are needed; "
                          "lower seq_length or batch_size, or add text")


def stream_length(n_train: int, batch_size: int) -> int:
    """Characters owned by each stream: stream b reads train[b*L : (b+1)*L]."""
    return n_train // batch_size


def window_index(n_train: int, seq_length: int, batch_size: int) -> np.ndarray:
    """(T+1, B) offsets: train[index + p] holds inputs [:-1] and targets [1:] of every stream at position p."""
    L = stream_length(n_train, batch_size)
    return np.arange(seq_length + 1)[:, None] + L * np.arange(batch_size)[None, :]
