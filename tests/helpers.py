"""Helpers the test modules share: each is defined here once and imported (`from helpers import ...`).

- Sweep files: `write_sweep` puts a sweep file (and a corpus) in a folder, `edit` changes nested keys of a
  sweep dict, `make_read_only_dir` sets up an output folder nobody may write to, `alias_bomb` is a sweep file
  whose one valid key hides a YAML "billion laughs".
- Sweep outputs: `read_trials` and `read_history` read a sweep's Parquet tables in a fixed row order.
- Servers: `free_port`, a TCP port free on 127.0.0.1.
- Numbers: `rel_diff`, the relative difference every parity test judges its tolerance by, and
  `assert_same_state`, the bit-for-bit comparison of two trainers' states that every resume test makes.

Fixtures (working directories, CLI subprocesses) are in conftest.py.
"""
from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml

if TYPE_CHECKING:
    import pandas as pd

# ------------------------------------------------------------------------------------------ sweep files


def write_sweep(folder: Path, sweep: dict[str, Any] | str, corpus: str | bytes | None = None,
                name: str = "sweep.yaml") -> Path:
    """Write the sweep file `folder/name` (a dict as YAML, a str as it is) and, unless `corpus` is None, the
    corpus as `folder/corpus.txt` (a str as UTF-8, bytes as they are); returns the sweep file's path."""
    if corpus is not None:
        target = folder / "corpus.txt"
        target.write_bytes(corpus) if isinstance(corpus, bytes) else target.write_text(corpus, encoding="utf-8")
    path = folder / name
    path.write_text(sweep if isinstance(sweep, str) else yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def edit(**changes: Any) -> Callable[[dict], dict]:
    """A change to a sweep dict, applied in place and returned: keys like train__hidden_size set a nested value
    (missing parents are created); None removes the key. `edit(a=1, b__c=None)(sweep)`."""

    def apply(sweep: dict) -> dict:
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = sweep
            for p in parents:
                node = node.setdefault(p, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        return sweep

    return apply


def alias_bomb(depth: int, width: int = 9) -> str:
    """A sweep file (corpus.txt, output out) whose `train.seq_length: {choice: ...}` nests `depth` anchored lists,
    each holding the one before and `width - 1` aliases to it: about width**(depth + 1) values once expanded,
    in a file of a few hundred bytes."""
    inner = "&a0 [" + ", ".join(["lol"] * width) + "]"
    for i in range(1, depth + 1):
        inner = f"&a{i} [{inner}, " + ", ".join([f"*a{i - 1}"] * (width - 1)) + "]"
    return f"name: bomb\ndata: {{path: corpus.txt}}\noutput: out\ntrain:\n  seq_length: {{choice: {inner}}}\n"


def make_read_only_dir(folder: Path) -> None:
    """`folder/ro`, readable but not writable: an output folder under it cannot be created (unless run as root)."""
    (folder / "ro").mkdir()
    (folder / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- sweep outputs


def read_trials(out: Path) -> pd.DataFrame:
    """`out/trials.parquet`, one row per trial, sorted by trial_id."""
    import pandas as pd  # here, not at the top: the engine's tests import this module and need no pandas

    return pd.read_parquet(out / "trials.parquet").sort_values("trial_id", ignore_index=True)


def read_history(out: Path) -> pd.DataFrame:
    """`out/history.parquet`, one row per report, sorted by trial_id and iteration."""
    import pandas as pd

    return pd.read_parquet(out / "history.parquet").sort_values(["trial_id", "iteration"], ignore_index=True)


# ---------------------------------------------------------------------------------------------- numbers


def rel_diff(a, b) -> float:
    """max |a - b| / max |b|, in float64; a and b may be numpy or CuPy arrays, lists or scalars.

    0 when a equals b. Where b is all zero, any difference counts as huge (divided by 1e-300), not as
    relative to nothing.
    """
    a, b = (np.asarray(x.get() if hasattr(x, "__cuda_array_interface__") else x, np.float64) for x in (a, b))
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_same_state(a, b) -> None:
    """Two trainer states (rnncore's TrainState) are equal bit for bit: parameters with their dtypes, optimizer
    memories, hidden state, data pointer, iteration, smoothed loss and the RNG."""
    assert a.params.names == b.params.names
    for name in a.params.names:
        np.testing.assert_array_equal(getattr(a.params, name), getattr(b.params, name), err_msg=name)
        assert getattr(a.params, name).dtype == getattr(b.params, name).dtype, name
        np.testing.assert_array_equal(getattr(a.mem, name), getattr(b.mem, name), err_msg="m" + name)
        if a.mom is not None or b.mom is not None:
            np.testing.assert_array_equal(getattr(a.mom, name), getattr(b.mom, name), err_msg="mom" + name)
    np.testing.assert_array_equal(a.h, b.h)
    assert a.h.dtype == b.h.dtype
    assert (a.p, a.iteration, a.smooth_loss) == (b.p, b.iteration, b.smooth_loss)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
