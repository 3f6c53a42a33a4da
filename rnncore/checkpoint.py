"""TrainState <-> one .npz file, loaded with allow_pickle=False.

Arrays: the seed's Wxh (H,V), Whh (H,H), Why (V,H), bh (H,1), by (V,1); vocab (V,) unicode; Adagrad
memories mWxh ... mby; h (B,H). Scalars: iteration, p, smooth_loss. JSON strings: config, rng_state.
A file holding only the five weights and vocab is enough for `load_weights` (sampling, --init-from).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .data import Vocab
from .model import Params, shapes
from .trainer import TrainState, host_state

FORMAT = "rnncore-checkpoint-1"
WEIGHTS = Params.NAMES


class CheckpointError(ValueError):
    """A file that is not a usable rnncore checkpoint; the message says which and why."""


@dataclass
class Checkpoint:
    cfg: TrainConfig
    vocab: Vocab
    state: TrainState


def save(path: str | os.PathLike, cfg: TrainConfig, vocab: Vocab, state: TrainState) -> None:
    """Write atomically (temp file + rename): a crash leaves the old file or the new one, never half."""
    path = os.fspath(path)
    state = host_state(state)
    arrays = {name: a for name, a in zip(WEIGHTS, state.params.arrays())}
    arrays.update({"m" + name: a for name, a in zip(WEIGHTS, state.mem.arrays())})
    arrays.update(vocab=vocab.to_array(), h=state.h, iteration=np.int64(state.iteration), p=np.int64(state.p),
                  smooth_loss=np.float64(state.smooth_loss), config=np.str_(cfg.to_json()),
                  rng_state=np.str_(json.dumps(state.rng.bit_generator.state)), format=np.str_(FORMAT))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _open(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy gives an ndarray, which has no `with`
            raise CheckpointError(f"{path} is a single .npy array, not an rnncore checkpoint (.npz)")
        with z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except CheckpointError:
        raise
    except ValueError as e:  # object arrays refused by allow_pickle=False land here too
        raise CheckpointError(f"{path} is not an rnncore checkpoint: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path} is not an rnncore checkpoint (.npz): {e}") from None


def _require(path, z: dict, names) -> None:
    missing = [n for n in names if n not in z]
    if missing:
        raise CheckpointError(f"{os.fspath(path)} lacks {', '.join(missing)}; an rnncore checkpoint holds "
                              f"{', '.join(WEIGHTS)} and vocab at least")


def _vocab(path, a: np.ndarray) -> Vocab:
    if a.ndim != 1 or a.dtype.kind != "U" or any(len(c) != 1 for c in a.tolist()):
        raise CheckpointError(f"{os.fspath(path)}: vocab must be a 1-D unicode array of single characters")
    return Vocab(tuple(a.tolist()))


def load_weights(path: str | os.PathLike) -> tuple[Params, Vocab]:
    """The five weight arrays and the vocabulary of any .npz that has them."""
    z = _open(path)
    _require(path, z, (*WEIGHTS, "vocab"))
    vocab = _vocab(path, z["vocab"])
    H, V = z["Whh"].shape[0], vocab.size
    for name, shape in shapes(H, V).items():
        a = z[name]
        if a.shape != shape or a.dtype.kind != "f":
            raise CheckpointError(f"{os.fspath(path)}: {name} has shape {a.shape} and dtype {a.dtype}, "
                                  f"expected a float array of shape {shape} (H={H}, V={V})")
    return Params.from_arrays(*(z[n] for n in WEIGHTS)), vocab


def load(path: str | os.PathLike) -> Checkpoint:
    """Everything needed to continue training bit for bit."""
    P, vocab = load_weights(path)
    z = _open(path)
    _require(path, z, ("config", "h", "iteration", "p", "smooth_loss", "rng_state", *("m" + n for n in WEIGHTS)))
    try:
        cfg = TrainConfig.from_dict(json.loads(str(z["config"])))
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(z["rng_state"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{os.fspath(path)}: unreadable config or RNG state: {e}") from None
    state = TrainState(params=P, mem=Params.from_arrays(*(z["m" + n] for n in WEIGHTS)), h=z["h"], p=int(z["p"]),
                       iteration=int(z["iteration"]), smooth_loss=float(z["smooth_loss"]), rng=rng)
    return Checkpoint(cfg=cfg, vocab=vocab, state=state)
