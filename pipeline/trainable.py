"""The Ray Tune trainable: restore, loop over the engine, report. The only module importing Ray and rnncore.

Each report carries the metrics of one evaluation, the newest sample text (if any) and a checkpoint, so
ASHA can stop the trial and a restarted worker continues bit for bit from the newest report.

A checkpoint folder holds the rnncore checkpoint and the report it came with (report.json). Tune hands a
restarted trial the newest checkpoint its saved state knows of, which can be older than the newest one in
the trial's folder (the worker or the driver was killed before Tune's state caught up). The trial continues
from the newest complete one in its folder and first sends that checkpoint's report again, so the driver has
it (the driver ignores reports it already has).

A checkpoint folder is written in `.tmp` inside the trial's own folder (`scratch_folder`) before tune.report
copies it into place: a worker killed meanwhile (out of memory, or with its driver) leaves it there, inside the
sweep's output, not in the system's temp folder, and the trial's next start removes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from rnncore import Corpus, TrainConfig, Trainer, train_loop
from rnncore import checkpoint as ckpt
from rnncore.optim import learning_rate_at

from . import raycompat
from .diskfull import describe, disk_full
from .lineage import clone_fields, run_fields
from .vocab import trial_key

CHECKPOINT_FILE = "checkpoint.npz"
REPORT_FILE = "report.json"
SCRATCH = ".tmp"  # in a trial's folder: checkpoint folders being written, until tune.report has copied them
# Fault-injection tests only: when set, every start of a trial (first run, retry or resume) appends
# "<pid> <iteration it starts from>" to <dir>/<trial key>.starts, so a test can kill that worker and check
# where the trial picked up. Unset in normal use; nothing else reads or writes there.
TEST_PIDFILE_ENV = "RNNSWEEP_TEST_PIDFILE_DIR"


def trial_index(trial_id: str, dirname: str = "") -> int:
    """A trial's position in generation order, from 0.

    Tune's default search names trials <experiment-hash>_<00000>: the suffix counts them. Other search
    algorithms (Optuna) give random ids; the trial's folder, <trainable>_<id>_<n>_<values>_<date>, then holds
    its position n, counted from 1."""
    head, _, tail = trial_id.rpartition("_")
    if head and tail.isdigit():
        return int(tail)
    found = re.search(rf"_{re.escape(trial_id)}_(\d+)", os.path.basename(dirname.rstrip("/")))
    if found is None:
        raise ValueError(f"cannot tell the position of trial {trial_id} from its folder {dirname!r}")
    return int(found.group(1)) - 1


def trial_seed(sweep_seed: int, index: int) -> int:
    """A per-trial engine seed that depends only on the sweep seed and the trial's position."""
    digest = hashlib.sha256(f"rnnsweep:{sweep_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def train_config(base: dict[str, Any], config: dict[str, Any], seed: int, *, derive_seed: bool) -> TrainConfig:
    """The engine config of one trial: fixed values, then its searched values, then (unless the sweep file
    sets `train.seed` itself) the seed derived for it."""
    values = {**base, **config}
    if derive_seed:
        values["seed"] = seed
    return TrainConfig.from_dict(values)


def train_trial(config: dict[str, Any], *, corpus: Corpus, base: dict[str, Any], sweep_seed: int,
                derive_seed: bool) -> None:
    """One trial. `corpus` arrives once through Ray's object store; `base` holds the fixed options."""
    ctx = tune.get_context()
    index = trial_index(ctx.get_trial_id(), ctx.get_trial_dir())
    cfg = train_config(base, config, trial_seed(sweep_seed, index), derive_seed=derive_seed)
    with _out_of_memory_ends_it(cfg, {"trial_index": index}):
        _train_trial(ctx, cfg, corpus, index)


def _train_trial(ctx, cfg: TrainConfig, corpus: Corpus, index: int) -> None:
    scratch = scratch_folder(raycompat.trial_folder(ctx))
    start = _restore(ctx, cfg, corpus, index, scratch)
    if start.report.get("diverged"):  # it ended there: training a non-finite state on would only add a report
        return
    fixed = {**_where(), "trial_index": index, "trial_seed": cfg.seed,
             "target_iterations": cfg.iterations,
             **run_fields(start=start.iteration, token=start.token)}  # which run of the trial, where it took over
    exploit = start.exploit
    for pr in train_loop(start.trainer):
        val = pr.val_loss
        if val is None and not pr.diverged:
            val = start.trainer.evaluate()  # a sample-only boundary: Tune wants the metric in every report
        metrics = {
            "iteration": pr.iteration,
            **_losses(pr.train_loss, val),
            "chars_per_sec": pr.chars_per_sec,
            "elapsed_s": start.elapsed_s + pr.elapsed_s,
            "diverged": pr.diverged,
            "sample": pr.sample or "",
            "lr": learning_rate_at(cfg, max(0, pr.iteration - 1)),  # the rate of the latest update
            **fixed,
            **(exploit or {}),  # the first report after PBT cloned another trial into this one says so
        }
        exploit = None
        with _unless_disk_full(metrics, scratch), tempfile.TemporaryDirectory(dir=scratch) as d:
            ckpt.save(os.path.join(d, CHECKPOINT_FILE), cfg, corpus.vocab, start.trainer.state)
            with open(os.path.join(d, REPORT_FILE), "w", encoding="utf-8") as f:
                json.dump(metrics, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


@contextlib.contextmanager
def _out_of_memory_ends_it(cfg: TrainConfig, fields: dict[str, Any]) -> Iterator[None]:
    """A MemoryError (an array the node cannot hold) ends the trial with a report that says so, which the driver
    records as the trial's failure; raised, it would be retried (max_failures) and fail the same way each time.
    (A process the OOM killer ends is a worker failure, retried as such.)"""
    try:
        yield
    except MemoryError as e:
        where = _where()
        tune.report({"memory_error": f"out of memory on node {where['node_ip']}: {e}",
                     "iteration": 0, "val_loss": math.inf, "val_bpc": math.inf, "train_loss": math.inf,
                     "target_iterations": cfg.iterations, **where, **fields})


@contextlib.contextmanager
def _unless_disk_full(metrics: dict[str, Any], scratch: str) -> Iterator[None]:
    """Writing a checkpoint (and Tune copying it into place) on a full disk: instead of failing, which Tune would
    retry to no avail, the trial reports `disk_full` without a checkpoint and waits. The driver then stops the
    sweep as on Ctrl-C (see pipeline.diskfull); --resume continues from the newest complete checkpoint."""
    try:
        yield
    except OSError as e:
        full = disk_full(e)
        if full is None:
            raise
        tune.report({**metrics, "disk_full": describe(full, where=scratch)})
        while True:  # until the driver stops this trial (and its worker)
            time.sleep(1.0)


@dataclass
class _Start:
    """Where a run of a trial starts: its trainer, the report it continues from, and PBT's clone fields."""

    trainer: Trainer
    report: dict[str, Any]
    exploit: dict[str, Any] | None
    elapsed_s: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # which run: a restart is another run

    @property
    def iteration(self) -> int:
        return self.trainer.state.iteration


def scratch_folder(trial_folder: str) -> str:
    """`.tmp` in the trial's folder, emptied of what a killed run of the trial left there: where this run writes
    its checkpoint folders. (One run of a trial at a time: nothing else writes there.)"""
    path = os.path.join(trial_folder, SCRATCH)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    return path


def _restore(ctx, cfg: TrainConfig, corpus: Corpus, index: int, scratch: str) -> _Start:
    """The trial's trainer: new, or from Tune's checkpoint, or from a newer complete one in the trial's folders
    (whose report is first sent again, as a report of this start)."""
    state, report, newer, exploit = None, {}, None, None
    with tempfile.TemporaryDirectory(dir=scratch) as keep:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                loaded = ckpt.load(os.path.join(d, CHECKPOINT_FILE))
                state, report = loaded.state, _read_report(d)
            exploit = _exploit(report, loaded.cfg, cfg, index)
        if exploit is None:  # (a trial PBT just cloned goes on from the clone: its own folder is an old branch)
            newer = _newer_checkpoint(ctx, restored, cfg, state.iteration if state else 0, keep)
        if newer is not None:
            state, report = newer
        start = _Start(Trainer(cfg, corpus, state), report, exploit,
                       float(report.get("elapsed_s", 0.0)) if state is not None else 0.0)
        _note_start(index, start.iteration)
        if newer is not None:  # sent again as a report of this start (not of the one that first sent it)
            start.report = {**{k: v for k, v in report.items() if k != "exploit"},
                            **run_fields(start=start.iteration, token=start.token)}
            tune.report(start.report, checkpoint=tune.Checkpoint.from_directory(keep))
    return start


def _exploit(report: dict[str, Any], source_cfg: TrainConfig, cfg: TrainConfig, index: int) -> dict[str, Any] | None:
    """Tune restored this trial from another trial's checkpoint (PBT's exploit step): the report fields that say
    so (pipeline.lineage.clone_fields); else None."""
    source = report.get("trial_index")
    if source is None or int(source) == index:
        return None
    return clone_fields(source=int(source), iteration=int(report.get("iteration", 0)), old=source_cfg.to_dict(),
                        new=cfg.to_dict())


def _read_report(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, REPORT_FILE), encoding="utf-8") as f:
            report = json.load(f)
        return report if isinstance(report, dict) else {}
    except (OSError, ValueError):
        return {}


def _newer_checkpoint(ctx, restored: "tune.Checkpoint | None", cfg: TrainConfig, iteration: int, dest: str):
    """(state, report) of the newest complete checkpoint in this trial's folders (on the sweep's storage)
    beyond `iteration`, copied into the empty folder `dest`; None if there is none.

    Complete = both files load, the report matches the checkpoint and the engine config is this trial's; a
    folder cut short by a kill fails that and is skipped. Folder names do not order them (a resumed trial
    numbers its checkpoints from Tune's count again): iterations do. A copy is needed, not the folder itself:
    Tune may persist the re-sent report onto that very folder."""
    import pyarrow.fs as pafs

    found = raycompat.trial_folders(ctx)
    if found is not None:
        fs, folders = found
    elif restored is not None:  # not in a Tune session: Tune's checkpoint's folder
        fs, folders = restored.filesystem, [posixpath.dirname(restored.path.rstrip("/"))]
    else:
        return None
    infos = []
    for folder in folders:
        try:
            infos += fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            pass
    best = None
    for info in infos:
        if info.type != pafs.FileType.Directory or not posixpath.basename(info.path).startswith("checkpoint_"):
            continue
        try:
            with tune.Checkpoint(path=info.path, filesystem=fs).as_directory() as src:
                loaded = ckpt.load(os.path.join(src, CHECKPOINT_FILE))
                report = _read_report(src)
        except (OSError, ValueError):  # a folder cut short by a kill (CheckpointError is a ValueError)
            continue
        if (loaded.state.iteration > max(iteration, best[0] if best else -1)
                and report.get("iteration") == loaded.state.iteration and loaded.cfg.to_dict() == cfg.to_dict()):
            best = (loaded.state.iteration, loaded.state, report, info.path)
    if best is None:
        return None
    try:
        with tune.Checkpoint(path=best[3], filesystem=fs).as_directory() as src:
            for name in (CHECKPOINT_FILE, REPORT_FILE):
                shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    except OSError:
        return None
    return best[1], best[2]


def _where() -> dict[str, str]:
    """The Ray node a trial runs on: its id, and its IP address for people (the trials table's node, node_ip)."""
    return {"node": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def _note_start(index: int, iteration: int) -> None:
    folder = os.environ.get(TEST_PIDFILE_ENV)
    if folder:
        with open(os.path.join(folder, f"{trial_key(index)}.starts"), "a") as f:
            f.write(f"{os.getpid()} {iteration}\n")


def _losses(train_loss: float, val_loss: float | None) -> dict[str, float]:
    """The loss metrics of one report, nats/char and val bits/char; non-finite or missing ones as +inf."""
    return {"train_loss": _finite(train_loss), "val_loss": _finite(val_loss),
            "val_bpc": _finite(val_loss / math.log(2)) if val_loss is not None else math.inf}


def _finite(x: float | None) -> float:
    """Tune's schedulers compare metrics: a diverged value reports as +inf (the worst, in mode min)."""
    return math.inf if x is None or not math.isfinite(x) else float(x)


PACK_FILE = "pack.json"


def member_file(index: int) -> str:
    return f"member_{index:04d}.npz"


def train_pack(config: dict[str, Any], *, corpus: Corpus, base: dict[str, Any], sweep_seed: int, derive_seed: bool,
               trials: list[dict[str, Any]], packs: list[list[int]]) -> None:
    """One pack: the trials packs[config["pack"]] trained as one batched computation (PackedTrainer).

    Every report carries one entry per member under "members" (the driver turns them into the members'
    own MLflow runs and Parquet rows) and a checkpoint holding each member's rnncore checkpoint."""
    members = packs[config["pack"]]
    cfgs = [train_config(base, trials[i], trial_seed(sweep_seed, i), derive_seed=derive_seed) for i in members]
    with _out_of_memory_ends_it(cfgs[0], {"members": []}):
        _train_pack(cfgs, members, trials, corpus)


def _train_pack(cfgs: list[TrainConfig], members: list[int], trials: list[dict[str, Any]], corpus: Corpus) -> None:
    from rnncore.trainer import PackedTrainer

    states, meta = None, {}
    scratch = scratch_folder(raycompat.trial_folder(tune.get_context()))
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            states = [ckpt.load(os.path.join(d, member_file(i))).state for i in members]
            with open(os.path.join(d, PACK_FILE)) as f:
                meta = json.load(f)
    pt = PackedTrainer(cfgs, corpus, states)
    for k, (active, diverged) in enumerate(zip(meta.get("active", []), meta.get("diverged", []))):
        if not active:  # ended before the restart: keep it ended, as it was
            pt.diverged[k] = diverged
            pt.freeze(k)
    c0, where = cfgs[0], _where()
    ended = {k for k in range(len(members)) if not pt.active[k]}
    for pr in train_loop(pt):
        val = pr.val_loss if pr.val_loss is not None else pt.evaluate()  # Tune wants the metric in every report
        states = [pt.member_state(k) for k in range(len(members))]  # host copies: the report and the checkpoint
        out = []
        for k, i in enumerate(members):
            if k in ended:
                continue
            st, diverged = states[k], bool(pr.diverged[k])
            out.append({"trial_index": i, "config": trials[i], "iteration": st.iteration,
                        **_losses(st.smooth_loss, None if diverged else float(val[k])),
                        "chars_per_sec": float(pr.chars_per_sec[k]), "elapsed_s": pr.elapsed_s,
                        "diverged": diverged, "sample": pr.sample[k] or "", "trial_seed": cfgs[k].seed,
                        "ended": diverged or pr.done, "lr": learning_rate_at(cfgs[k], max(0, st.iteration - 1))})
            if diverged or pr.done:
                ended.add(k)
        vals = [m["val_loss"] for m in out if not m["diverged"]]
        metrics = {"iteration": pt.iteration, "val_loss": min(vals, default=math.inf),
                   "val_bpc": min(vals, default=math.inf) / math.log(2),
                   "train_loss": min((m["train_loss"] for m in out), default=math.inf),
                   "members": out, **where, "target_iterations": c0.iterations}
        with _unless_disk_full(metrics, scratch), tempfile.TemporaryDirectory(dir=scratch) as d:
            for k, i in enumerate(members):
                ckpt.save(os.path.join(d, member_file(i)), cfgs[k], corpus.vocab, states[k])
            with open(os.path.join(d, PACK_FILE), "w") as f:
                json.dump({"active": pt.active.tolist(), "diverged": pt.diverged.tolist()}, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
