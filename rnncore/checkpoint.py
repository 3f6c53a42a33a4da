"""TrainState <-> one .npz file, loaded with allow_pickle=False.

Arrays: the model's weights by name (one rnn layer: the seed's Wxh (H,V), Whh (H,H), Why (V,H), bh (H,1),
by (V,1); rnncore.model.shapes lists every cell's); vocab (V,) unicode; the optimizer's memories m<name>
(and Adam's first moments mom<name>); h (B, S*H). Scalars: iteration, p, smooth_loss. JSON strings: config
(which names the cell and the layer count), rng_state. A file holding only the weights and vocab is enough
for `load_weights` (sampling, --init-from): the cell and the layer count are read off the arrays' shapes,
so files written before there were cells load as the seed's rnn. Sampling without a prime starts from h where
the file has one (`load_sampler`).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .data import Vocab
from .model import Params, shapes, state_size
from .trainer import TrainState, check_state, host_state

FORMAT = "rnncore-checkpoint-2"
WEIGHTS = Params.NAMES  # the seed's five arrays: every checkpoint has arrays of these names
GATES = {1: "rnn", 4: "lstm", 3: "gru"}  # gate blocks in Whh -> cell


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
    P = state.params
    arrays = {name: getattr(P, name) for name in P.names}
    arrays.update({"m" + name: getattr(state.mem, name) for name in P.names})
    if state.mom is not None:
        arrays.update({"mom" + name: getattr(state.mom, name) for name in P.names})
    arrays.update(vocab=vocab.to_array(), h=state.h, iteration=np.int64(state.iteration), p=np.int64(state.p),
                  smooth_loss=np.float64(state.smooth_loss), config=np.str_(cfg.to_json()),
                  rng_state=np.str_(json.dumps(state.rng.bit_generator.state)), format=np.str_(FORMAT))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, np.savez would append .npz to it
            np.savez(f, **arrays)

    save_atomically(path, write)


def save_atomically(path: str | os.PathLike, write) -> None:
    """Call write(temporary path) next to path, then rename it into place, readable as the umask allows: a reader
    sees the old file or the new one, never half of one (checkpoints here; the sweep's report files too)."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600: a teammate could not read the file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_mode() -> int:
    """The mode open() would give a new file: 0o666 less the umask. A temp file from mkstemp is 0600, and renamed
    into place it would stay so: a teammate could not read the checkpoint (or a sweep's tables)."""
    try:  # Linux says the umask without changing it; os.umask can only read it by setting it, under other threads
        with open("/proc/self/status", encoding="ascii") as f:
            mask = int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


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


def _model(path, z: dict) -> tuple[str, int]:
    """The cell and the layer count, read off the arrays (Whh's gate blocks; Whh1, Whh2, ... for layers)."""
    rows, H = z["Whh"].shape if z["Whh"].ndim == 2 else (0, 0)
    cell = GATES.get(rows // H if H and rows % H == 0 else 0)
    if cell is None:
        raise CheckpointError(f"{os.fspath(path)}: Whh has shape {z['Whh'].shape}; expected (G*H, H) with G = 1 "
                              "(rnn), 4 (lstm) or 3 (gru)")
    layers = 1 + sum(1 for k in z if re.fullmatch(r"Whh[1-9]\d*", k))
    return cell, layers


def load_weights(path: str | os.PathLike) -> tuple[Params, Vocab]:
    """The weight arrays and the vocabulary of any .npz that has them (Params.cell / num_layers say the model)."""
    return _weights(path, _open(path))


def load_sampler(path: str | os.PathLike) -> tuple[Params, Vocab, np.ndarray | None]:
    """What sampling needs: the weights (finite, else a CheckpointError), the vocabulary and the carried state
    h (B, S*H) that an unprimed sample starts from (rnncore.trainer.unprimed_start); h is None when the file has
    none that fits the model."""
    z = _open(path)
    P, vocab = _weights(path, z)
    diverged = [name for name in P.names if not np.isfinite(getattr(P, name)).all()]
    if diverged:  # every softmax would be NaN, and each draw the last character: "zzzz..."
        raise CheckpointError(f"{os.fspath(path)}: the weights {', '.join(diverged)} hold NaN or infinite values: the "
                              "run diverged (its loss became non-finite), so it cannot sample; train again with a "
                              "lower learning_rate or clip, or sample from a checkpoint saved before it diverged")
    h = z.get("h")
    fits = h is not None and h.ndim == 2 and len(h) >= 1 and h.shape[1] == state_size(P) and h.dtype.kind == "f"
    return P, vocab, h if fits else None


def _weights(path, z: dict) -> tuple[Params, Vocab]:
    _require(path, z, (*WEIGHTS, "vocab"))
    vocab = _vocab(path, z["vocab"])
    cell, layers = _model(path, z)
    H, V = z["Whh"].shape[1], vocab.size
    for name, shape in shapes(H, V, cell, layers).items():
        a = z.get(name)
        if a is None or a.shape != shape or a.dtype.kind != "f":
            got = "is missing" if a is None else f"has shape {a.shape} and dtype {a.dtype}"
            raise CheckpointError(f"{os.fspath(path)}: {name} {got}, expected a float array of shape {shape} "
                                  f"(a {layers}-layer {cell}, H={H}, V={V})")
    return Params.from_named(z, cell, layers), vocab


def load(path: str | os.PathLike) -> Checkpoint:
    """Everything needed to continue training bit for bit."""
    P, vocab = load_weights(path)
    z = _open(path)
    _require(path, z, ("config", "h", "iteration", "p", "smooth_loss", "rng_state", *("m" + n for n in P.names)))
    try:
        cfg = TrainConfig.from_dict(json.loads(str(z["config"])))
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(z["rng_state"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{os.fspath(path)}: unreadable config or RNG state: {e}") from None
    mom = None
    if cfg.optimizer == "adam":
        _require(path, z, ["mom" + n for n in P.names])
        mom = Params.from_named({n: z["mom" + n] for n in P.names}, P.cell, P.num_layers)
    state = TrainState(params=P, mem=Params.from_named({n: z["m" + n] for n in P.names}, P.cell, P.num_layers),
                       h=z["h"], p=int(z["p"]), iteration=int(z["iteration"]), smooth_loss=float(z["smooth_loss"]),
                       rng=rng, mom=mom)
    try:
        check_state(cfg, vocab.size, state)
    except ValueError as e:
        raise CheckpointError(f"{os.fspath(path)}: its config and arrays disagree: {e}") from None
    return Checkpoint(cfg=cfg, vocab=vocab, state=state)
