"""The sweep-file schema: the contract file, a table of bad files, search domains, import weight."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import alias_bomb, edit, make_read_only_dir, write_sweep
from pipeline.config import (
    FILE_KEYS,
    SEARCH_KINDS,
    AshaScheduler,
    ConfigError,
    Domain,
    FifoScheduler,
    SweepConfig,
    load_sweep,
)
from rnncore.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CORPUS_TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak.\n" * 30)[:2000]

# A small sweep that loads; each bad case below changes one thing in it.
BASE: dict[str, Any] = {
    "name": "t",
    "data": {"path": "corpus.txt"},
    "train": {
        "hidden_size": {"grid_search": [8, 16]},
        "seq_length": 16,
        "learning_rate": {"loguniform": [0.01, 0.3]},
        "iterations": 100,
        "eval_every": 50,
    },
    "num_samples": 2,
    "scheduler": {"type": "asha", "grace_period": 10},
    "output": "out/t",
}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, holding a 2000-character corpus."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return tmp_path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def rename_train_key(old: str, new: str) -> Callable[[dict], dict]:
    def apply(sweep: dict) -> dict:
        sweep["train"] = {new if k == old else k: v for k, v in sweep["train"].items()}
        return sweep

    return apply


def setup_file(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


# (id, change to BASE or raw YAML text, setup in the workspace, substrings the error must contain)
BAD_CASES: list[tuple[str, Callable[[dict], dict] | str, Callable[[Path], None] | None, list[str]]] = [
    ("yaml-syntax", "name: t\ntrain:\n  hidden_size: 8\n   seq_length: 16\n", None,
     ["invalid YAML at line 4, column 14", "mapping values are not allowed"]),
    ("top-level-list", "- name: t\n- data: corpus.txt\n", None,
     ["(top level): must be a mapping", "but got a list"]),
    ("empty-file", "# nothing here\n", None, ["(top level): must be a mapping", "but got an empty file"]),
    ("yaml-alias-bomb", alias_bomb(6), None,  # 5 million values in 300 bytes (the CLI test takes depth 8)
     ["yaml: aliases (*name) may expand the file to at most 100,000 values, but they expand it to 5,380,854; "
      "write the values out, or alias less"]),
    ("yaml-alias-inside-its-anchor", "name: t\ndata: {path: corpus.txt}\ntrain: &loop {hidden_size: *loop}\n", None,
     ["yaml: an alias must not sit inside its own anchor, but the node at line 3, column 8"]),
    ("yaml-nested-past-recursion", "name: t\ntrain: {seq_length: " + "[" * 5000 + "]" * 5000 + "}\n", None,
     ["yaml: must nest at most a few hundred levels deep"]),
    ("yaml-date-out-of-range", "name: t\ndata: {path: corpus.txt}\ntrain: {seed: 2024-13-01}\n", None,
     ["yaml: every value must be readable as its type, but one is not (month must be in 1..12); fix it, or quote"]),
    ("yaml-integer-past-4300-digits", "name: t\ndata: {path: corpus.txt}\ntrain: {seed: " + "9" * 5000 + "}\n", None,
     ["yaml: every value must be readable as its type, but one is not (Exceeds the limit (4300 digits)"]),
    ("duplicate-train-key", "name: t\ndata: {path: corpus.txt}\ntrain:\n  learning_rate: 0.1\n  seq_length: 16\n"
     "  learning_rate: 0.2\n", None,
     ["train.learning_rate: a key must appear once in its mapping, but it appears at lines 4 and 6; YAML would keep "
      "only the last, so delete the others"]),
    ("duplicate-top-key", "name: t\noutput: a\ndata: {path: corpus.txt}\noutput: b\n", None,
     ["output: a key must appear once in its mapping, but it appears at lines 2 and 4"]),
    ("int-past-int64", edit(train__seed=2**63), None,  # the tables store it as int64
     [f"train.seed: must fit in 64 bits (at most {2**63 - 1}), but got seed={2**63}"]),
    ("int-past-int64-in-a-range", edit(train__iterations={"randint": [10, 2**64]}), None,
     ["train.iterations.randint: largest value must fit in 64 bits"]),
    ("infinite-float", edit(train__learning_rate=float("inf")), None,
     ["train.learning_rate: must be a finite number, but got learning_rate=inf; write a finite value"]),
    ("infinite-float-in-a-choice", edit(train__temperature={"choice": [1.0, float("-inf")]}), None,
     ["train.temperature.choice: value 1 must be a finite number, but got temperature=-inf"]),
    ("unknown-top-key", edit(num_sample=3), None, ["num_sample: unknown key; did you mean 'num_samples'?"]),
    ("source-key-is-not-a-file-key", edit(source_text="x"), None, ["source_text: unknown key; load_sweep fills it in"]),
    ("unknown-train-key", rename_train_key("hidden_size", "hidden_sise"), None,
     ["train.hidden_sise: unknown key; did you mean 'hidden_size'?"]),
    ("unknown-scheduler-key", edit(scheduler={"type": "asha", "grace": 10}), None,
     ["scheduler.grace: unknown key; did you mean 'grace_period'?"]),
    ("asha-key-under-fifo", edit(scheduler={"type": "fifo", "grace_period": 10}), None,
     ["scheduler.grace_period: unknown key for type fifo; grace_period needs type: asha"]),
    ("unknown-scheduler-type", edit(scheduler={"type": "ashe"}), None,
     ["scheduler.type: must be one of 'fifo', 'asha', 'pbt', but got 'ashe'; did you mean 'asha'?"]),
    ("unknown-data-key", edit(data__val_frac=0.2), None, ["data.val_frac: unknown key; did you mean 'val_fraction'?"]),
    ("unknown-resources-key", edit(resources={"gpus": 1}), None, ["resources.gpus: unknown key; did you mean 'gpu'?"]),
    ("gpu-device-without-gpu-share", edit(train__device="gpu"), None,
     ["train.device: device gpu needs a GPU for each trial, but got resources.gpu=0"]),
    ("packing-needs-fifo", edit(packing={"max_trials": 4}, scheduler={"type": "asha"}), None,
     ["packing: packed trials run with scheduler fifo", "set scheduler: fifo or remove packing"]),
    ("packing-max-trials-positive", edit(packing={"max_trials": 0}), None, ["packing.max_trials"]),
    ("unknown-mlflow-key", edit(mlflow={"tracking_url": "http://x"}), None,
     ["mlflow.tracking_url: unknown key; did you mean 'tracking_uri'?"]),
    ("registered-model-name", edit(mlflow={"experiment": "e", "register_model": "my model/v1"}), None,
     ["mlflow.register_model: must be letters, digits, '.', '_' or '-'", "models:/NAME/VERSION",
      "but got 'my model/v1'; try 'my-model-v1'"]),
    ("unknown-ray-key", edit(ray={"adress": "auto"}), None, ["ray.adress: unknown key; did you mean 'address'?"]),
    ("wrong-type", edit(train__hidden_size="big"), None,
     ["train.hidden_size: must be an integer, but got 'big'; write a whole number such as 100 (the default)"]),
    ("yaml-reads-1e-3-as-text", edit(train__learning_rate="1e-3"), None,
     ["train.learning_rate: must be a number, but got '1e-3'", "write 0.001 instead"]),
    ("hidden-size-zero", edit(train__hidden_size=0), None,
     ["train.hidden_size: must be > 0, but got hidden_size=0; use a positive number of hidden units"]),
    ("negative-learning-rate", edit(train__learning_rate=-1), None,
     ["train.learning_rate: must be > 0, but got learning_rate=-1.0"]),
    ("loguniform-low-above-high", edit(train__learning_rate={"loguniform": [0.3, 0.01]}), None,
     ["train.learning_rate.loguniform: low < high must hold, but got (low=0.3, high=0.01); swap them"]),
    ("randint-empty-range", edit(train__hidden_size={"randint": [16, 16]}), None,
     ["train.hidden_size.randint: low < high must hold, but got (low=16, high=16); widen the range"]),
    ("loguniform-from-zero", edit(train__learning_rate={"loguniform": [0, 0.3]}), None,
     ["train.learning_rate.loguniform: low > 0 must hold on a log scale, but got low=0"]),
    ("quniform-bounds-off-grid", edit(train__learning_rate={"quniform": [0.01, 0.3, 0.1]}), None,
     ["train.learning_rate.quniform: low and high must be multiples of q"]),
    ("range-endpoint-breaks-engine-rule", edit(train__learning_rate={"uniform": [0, 0.1]}), None,
     ["train.learning_rate.uniform: smallest value must be > 0, but got learning_rate=0"]),
    ("wrong-arity", edit(train__learning_rate={"uniform": [0.1]}), None,
     ["train.learning_rate.uniform: takes [low, high], but got 1 value(s) [0.1]"]),
    ("empty-choice", edit(train__seq_length={"choice": []}), None,
     ["train.seq_length.choice: must list at least one value, but got []"]),
    ("bad-grid-value", edit(train__hidden_size={"grid_search": [8, -1]}), None,
     ["train.hidden_size.grid_search: value 1 must be > 0, but got hidden_size=-1"]),
    ("two-search-keys", edit(train__seq_length={"choice": [8], "randint": [8, 16]}), None,
     ["train.seq_length: a searched option is a one-key mapping"]),
    ("unknown-search-key", edit(train__learning_rate={"logunif": [0.01, 0.3]}), None,
     ["train.learning_rate.logunif: unknown search key; did you mean 'loguniform'?"]),
    ("float-distribution-on-int-option", edit(train__hidden_size={"loguniform": [8, 64]}), None,
     ["train.hidden_size.loguniform: hidden_size is an integer option", "use lograndint instead"]),
    ("range-on-text-option", edit(train__dtype={"uniform": [1, 2]}), None,
     ["train.dtype.uniform: dtype is a text option", "grid_search or choice"]),
    ("bad-dtype-choice", edit(train__dtype={"choice": ["float32", "float16"]}), None,
     ["train.dtype.choice: value 1 must be one of float64, float32, but got dtype='float16'"]),
    ("num-samples-zero", edit(num_samples=0), None, ["num_samples: must be >= 1, but got 0"]),
    ("max-concurrent-zero", edit(max_concurrent_trials=0), None, ["max_concurrent_trials: must be >= 1, but got 0"]),
    ("zero-cpus", edit(resources={"cpu": 0}), None, ["resources.cpu: must be > 0, but got 0"]),
    ("time-budget-zero", edit(time_budget_s=0), None, ["time_budget_s: must be > 0, but got 0"]),
    ("max-failures-negative", edit(max_failures=-1), None, ["max_failures: must be >= 0, but got -1"]),
    ("num-samples-float", edit(num_samples=2.5), None, ["num_samples: must be an integer, but got 2.5"]),
    ("metric-accuracy", edit(metric="accuracy"), None,
     ["metric: must be one of 'val_loss', 'val_bpc', 'train_loss', but got 'accuracy'"]),
    ("maximize-a-loss", edit(mode="max"), None,
     ["mode: val_loss is a loss, so mode must be min, but got mode='max'; use mode: min"]),
    ("val-metric-without-val-split", edit(data__val_fraction=0), None,
     ["metric: val_loss needs a validation split, but got data.val_fraction=0"]),
    ("val-fraction-one", edit(data__val_fraction=1), None, ["data.val_fraction: must be < 1"]),
    ("missing-name", edit(name=None), None, ["name: required key is missing"]),
    ("name-with-a-slash", edit(name="a/b"), None, ["name: must be letters, digits", "try 'a_b'"]),
    ("grace-period-beyond-iterations", edit(scheduler={"type": "asha", "grace_period": 500}), None,
     ["scheduler.grace_period: must be <= the smallest possible iterations, but got grace_period=500 > "
      "iterations=100"]),
    ("grace-period-beyond-searched-iterations",
     edit(train__iterations={"grid_search": [40, 200]}, scheduler={"type": "asha", "grace_period": 50}), None,
     ["grace_period=50 > iterations=40"]),
    ("unknown-cell", edit(train__cell="lstn"), None,
     ["train.cell: must be one of rnn, lstm, gru, but got cell='lstn'; did you mean 'lstm'?"]),
    ("unknown-cell-in-a-choice", edit(train__cell={"choice": ["rnn", "lstn"]}), None,
     ["train.cell.choice: value 1 must be one of rnn, lstm, gru, but got cell='lstn'; did you mean 'lstm'?"]),
    ("dropout-one", edit(train__dropout=1.0), None,
     ["train.dropout: must be in [0, 1), but got dropout=1.0; use 0 for none"]),
    ("dropout-negative", edit(train__dropout=-0.1), None,
     ["train.dropout: must be in [0, 1), but got dropout=-0.1; use 0 for none"]),
    ("dropout-range-reaching-one", edit(train__dropout={"uniform": [0.0, 1.0]}), None,
     ["train.dropout.uniform: largest value must be in [0, 1), but got dropout=1.0; use 0 for none"]),
    ("num-layers-zero", edit(train__num_layers=0), None,
     ["train.num_layers: must be >= 1, but got num_layers=0; use 1 for a single layer, 2 or 3 to stack"]),
    ("pbt-mutates-num-layers",
     edit(scheduler={"type": "pbt", "perturbation_interval": 50, "mutations": {"num_layers": {"choice": [1, 2]}}}),
     None, ["scheduler.mutations.num_layers: cannot change while a trial trains, because num_layers shapes the model",
            "search it under train: instead", "mutate one of dropout, learning_rate"]),
    ("pbt-mutates-cell",
     edit(scheduler={"type": "pbt", "perturbation_interval": 50, "mutations": {"cell": {"choice": ["rnn", "lstm"]}}}),
     None, ["scheduler.mutations.cell: cannot change while a trial trains, because cell shapes the model",
            "search it under train: instead"]),
    ("warmup-beyond-iterations", edit(train__warmup=500), None,
     ["train.warmup: warmup must be <= iterations, but got warmup=500 with iterations=100; lower warmup",
      "or raise iterations"]),
    ("searched-warmup-can-exceed-iterations", edit(train__warmup={"randint": [0, 200]}), None,
     ["train.warmup: warmup must be <= iterations, but got warmup=199 with iterations=100 (the largest warmup the "
      "search can draw); lower warmup"]),
    ("warmup-beyond-searched-iterations", edit(train__warmup=60, train__iterations={"choice": [50, 100]}), None,
     ["train.warmup: warmup must be <= iterations, but got warmup=60 with iterations=50 (the fewest iterations the "
      "search can draw); lower warmup"]),
    ("seq-length-longer-than-training-split", edit(train__seq_length={"choice": [16, 5000]}), None,
     ["train.seq_length: the largest seq_length=5000", "1800 characters", "lower seq_length or batch_size"]),
    ("corpus-missing", edit(data__path="missing.txt"), None,
     ["data.path: must name an existing file, but got 'missing.txt', which was not found"]),
    ("corpus-is-a-device", edit(data__path="/dev/zero"), None,  # reading it never ends
     ["data.path: must name a file, but got '/dev/zero', which is a character device (/dev/zero); save the text "
      "to a file"]),
    ("corpus-is-a-named-pipe", edit(data__path="pipe.txt"), lambda folder: os.mkfifo(folder / "pipe.txt"),
     ["data.path: must name a file, but got 'pipe.txt', which is a named pipe (", "save the text to a file"]),
    ("corpus-is-a-folder", edit(data__path="texts"), lambda folder: (folder / "texts").mkdir(),
     ["data.path: must name a file, but got 'texts', which is a folder (", "point it at the UTF-8 text file inside"]),
    ("corpus-empty", edit(data__path="empty.txt"), setup_file("empty.txt", b""),
     ["data.path: corpus file is empty"]),
    ("corpus-not-utf8", edit(data__path="latin1.txt"), setup_file("latin1.txt", b"a" * 1234 + b"\xe9t\xe9" * 300),
     ["data.path: corpus file is not valid UTF-8", "byte 0xe9 at offset 1234"]),
    ("output-is-a-file", edit(output="taken"), setup_file("taken", b"x"),
     ["output: must be a folder, but got", "which is an existing file"]),
    ("output-under-read-only-folder", edit(output="ro/sweep"), make_read_only_dir,
     ["output: must be creatable", "is not writable"]),
    ("storage-is-a-file", edit(storage="taken"), setup_file("taken", b"x"),
     ["storage: must be a folder, but got"]),
]


def test_base_sweep_loads(workspace: Path) -> None:
    cfg = load_sweep(write_sweep(workspace, BASE))
    assert cfg.num_trials == 4
    assert cfg.output == workspace / "out" / "t"
    assert isinstance(cfg.scheduler, AshaScheduler) and cfg.scheduler.max_t == 100


@pytest.mark.parametrize("case_id, change, setup, expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_sweep_is_rejected_without_side_effects(
    workspace: Path, case_id: str, change: Callable[[dict], dict] | str,
    setup: Callable[[Path], None] | None, expected: list[str],
) -> None:
    if setup:
        setup(workspace)
    if case_id == "output-under-read-only-folder" and os.access(workspace / "ro", os.W_OK):
        pytest.skip("chmod does not stop this user from writing (running as root)")
    sweep = change if isinstance(change, str) else change(copy.deepcopy(BASE))
    path = write_sweep(workspace, sweep)
    before = listing(workspace)

    with pytest.raises(ConfigError) as info:
        load_sweep(path)

    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    assert len(info.value.problems) == 1, message  # the one change causes exactly one problem
    assert listing(workspace) == before  # nothing created: no output folder, no cache


def test_merge_key_may_be_overridden(workspace: Path) -> None:
    """YAML's merge key (<<) exists to be overridden: that is not a key given twice."""
    text = ("name: t\ndata: {path: corpus.txt}\nsmall: &small {hidden_size: 8, seq_length: 16}\n"
            "train:\n  <<: *small\n  hidden_size: 16\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(workspace, text))
    assert info.value.problems == ["small: unknown key; valid keys: " + ", ".join(FILE_KEYS)]


HUGE_VALUES = [  # each breaks one rule with a value whose full repr runs to 100 kB or more
    ("long-list-in-a-choice", edit(train__seq_length={"choice": [list(range(20_000))]})),
    ("long-list-as-a-range", edit(train__learning_rate={"uniform": list(range(20_000))})),
    ("long-text", edit(train__cell="x" * 100_000)),
    ("long-name", edit(name="a/" * 50_000)),
    ("long-mapping-key-list", edit(train__seq_length={str(i): i for i in range(10_000)})),
    ("alias-bomb-under-the-alias-limit", alias_bomb(4)),  # 59,049 values, each list shared
]


@pytest.mark.parametrize("change", [c for _, c in HUGE_VALUES], ids=[i for i, _ in HUGE_VALUES])
def test_a_message_quotes_at_most_a_few_hundred_characters_of_a_value(workspace: Path, change) -> None:
    sweep = change if isinstance(change, str) else change(copy.deepcopy(BASE))
    path = write_sweep(workspace, sweep)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert all(len(p) < 400 for p in info.value.problems), [p[:500] for p in info.value.problems]
    assert len(str(info.value)) < 2000, str(info.value)[:3000]


def test_read_only_ancestor_is_reported_even_as_root(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check as the table's read-only case, with os.access saying what a non-root user would see."""
    (workspace / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == workspace / "ro" else real_access(p, mode))
    path = write_sweep(workspace, edit(output="ro/a/b")(copy.deepcopy(BASE)))
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert info.value.problems == [f"output: must be creatable, but got {workspace / 'ro/a/b'}, and "
                                   f"{workspace / 'ro'} is not writable; choose a folder you can write"]


def test_many_problems_are_reported_together(workspace: Path) -> None:
    (workspace / "taken").write_text("x")
    sweep = copy.deepcopy(BASE)
    sweep.update(num_sample=3, metric="accuracy", output="taken")
    sweep["train"].update(hidden_size=0, learning_rate={"loguniform": [0.3, 0.01]},
                          seq_length={"choice": [16, 5000]}, hidden_sise=3)
    path = write_sweep(workspace, sweep)
    before = listing(workspace)

    with pytest.raises(ConfigError) as info:
        load_sweep(path)

    problems = info.value.problems
    expected = ["num_sample: unknown key", "train.hidden_sise: unknown key", "train.hidden_size: must be > 0",
                "train.learning_rate.loguniform: low < high", "train.seq_length: the largest seq_length=5000",
                "metric: must be one of", "output: must be a folder"]
    for part in expected:
        assert sum(p.startswith(part) for p in problems) == 1, (part, problems)
    assert len(problems) == len(expected)
    assert str(info.value).startswith(f"{len(expected)} problems in ")
    assert listing(workspace) == before


def test_problems_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(ConfigError(["a: rule, but got 1; fix", "b: x"], "s.yaml")))
    assert error.problems == ["a: rule, but got 1; fix", "b: x"] and error.source == "s.yaml"


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the contract file


def test_contract_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_sweep("sweeps/basic.yaml")

    assert cfg.name == "basic" and cfg.num_samples == 3 and cfg.num_trials == 6
    assert cfg.data.path == REPO / "data" / "tinyshakespeare.txt" and cfg.data.val_fraction == 0.1
    assert cfg.fixed == {"hidden_size": 128, "optimizer": "adam", "lr_schedule": "cosine", "init_scale": 0.08,
                         "batch_size": 32, "dtype": "float32", "iterations": 1200, "eval_every": 300,
                         "sample_every": 1200, "sample_length": 200, "eval_streams": 128}
    assert cfg.searched == {"cell": Domain("grid_search", ("gru", "lstm")),
                            "seq_length": Domain("choice", (32, 64)),
                            "learning_rate": Domain("loguniform", (0.003, 0.01))}
    assert cfg.scheduler == AshaScheduler(type="asha", grace_period=300, reduction_factor=3, max_t=1200)
    assert (cfg.metric, cfg.mode, cfg.seed, cfg.max_concurrent_trials) == ("val_loss", "min", 0, 2)
    assert (cfg.resources.cpu, cfg.resources.gpu) == (1, 0)
    assert cfg.mlflow.experiment == "basic" and cfg.mlflow.tracking_uri is None
    assert cfg.output == REPO / "results" / "basic"
    assert (cfg.time_budget_s, cfg.max_failures, cfg.ray.address, cfg.storage) == (None, 2, None, None)
    assert cfg.source_path == REPO / "sweeps" / "basic.yaml"
    assert cfg.source_text == (REPO / "sweeps" / "basic.yaml").read_text()


def test_contract_plan_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    plan = load_sweep("sweeps/basic.yaml").plan_text()
    assert "6 trials" in plan
    for line in ("cell           grid_search over ['gru', 'lstm']", "seq_length     choice of [32, 64]",
                 "learning_rate  loguniform in [0.003, 0.01]", "batch_size     32",
                 "ASHA: grace_period 300", f"output:     {REPO / 'results' / 'basic'}", "experiment 'basic'"):
        assert line in plan, f"{line!r} not in:\n{plan}"


def test_contract_base_values_keep_defaults_for_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    base = load_sweep("sweeps/basic.yaml").base_values()
    assert base == TrainConfig(hidden_size=128, optimizer="adam", lr_schedule="cosine", init_scale=0.08,
                               batch_size=32, dtype="float32", iterations=1200, eval_every=300, sample_every=1200,
                               eval_streams=128).to_dict()
    assert base["cell"] == TrainConfig.cell and base["seq_length"] == TrainConfig.seq_length  # searched: defaults


def test_a_searched_option_at_its_default_may_break_a_rule_that_only_trials_keep(workspace: Path) -> None:
    """warmup 20000 is fine for every trial (30000 or 40000 iterations), though not with the default 10000."""
    sweep = edit(train__warmup=20000, train__iterations={"choice": [30000, 40000]})(copy.deepcopy(BASE))
    cfg = load_sweep(write_sweep(workspace, sweep))
    assert cfg.base_values()["warmup"] == 20000 and cfg.base_values()["iterations"] == TrainConfig.iterations
    assert "warmup" in cfg.plan_text()


def test_shakespeare_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_sweep("sweeps/shakespeare.yaml")
    assert cfg.num_trials == 6 and cfg.output == REPO / "results" / "shakespeare"
    assert cfg.searched["hidden_size"].values() == (128, 256, 512)
    assert cfg.scheduler.grace_period == 4000 and cfg.scheduler.max_t == 20000
    assert cfg.mlflow.experiment == "shakespeare"


# --------------------------------------------------------------------------- defaults and paths


def test_defaults(workspace: Path) -> None:
    cfg = load_sweep(write_sweep(workspace, {"name": "d", "data": {"path": "corpus.txt"}}))
    assert cfg.train == {} and cfg.num_trials == 1 and cfg.base_values() == TrainConfig().to_dict()
    assert isinstance(cfg.scheduler, FifoScheduler)
    assert (cfg.num_samples, cfg.seed, cfg.metric, cfg.mode, cfg.max_concurrent_trials) == (1, 0, "val_loss", "min",
                                                                                           None)
    assert (cfg.resources.cpu, cfg.resources.gpu, cfg.max_failures) == (1, 0, 2)
    assert cfg.output == workspace / "results" / "d" and cfg.mlflow.experiment == "d"
    assert cfg.data.val_fraction == 0.1


def test_num_trials_multiplies_grids_only(workspace: Path) -> None:
    sweep = copy.deepcopy(BASE)
    sweep["train"]["seq_length"] = {"grid_search": [8, 16, 32]}
    sweep["num_samples"] = 5
    assert load_sweep(write_sweep(workspace, sweep)).num_trials == 5 * 2 * 3


def test_data_path_prefers_the_sweep_folder_then_the_working_dir(workspace: Path) -> None:
    (workspace / "sub").mkdir()
    sweep_path = write_sweep(workspace / "sub", BASE)
    assert load_sweep(sweep_path).data.path == workspace / "corpus.txt"  # found via the working dir
    (workspace / "sub" / "corpus.txt").write_text(CORPUS_TEXT)
    assert load_sweep(sweep_path).data.path == workspace / "sub" / "corpus.txt"  # the sweep's folder wins


def test_check_corpus_false_skips_reading_but_not_existence(workspace: Path) -> None:
    (workspace / "latin1.txt").write_bytes(b"\xe9" * 100)
    sweep = edit(data__path="latin1.txt")(copy.deepcopy(BASE))
    assert load_sweep(write_sweep(workspace, sweep), check_corpus=False).data.path == workspace / "latin1.txt"
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_sweep(write_sweep(workspace, sweep))
    with pytest.raises(ConfigError, match="data.path: must name an existing file"):
        load_sweep(write_sweep(workspace, edit(data__path="gone.txt")(copy.deepcopy(BASE))), check_corpus=False)


def test_optional_keys(workspace: Path) -> None:
    sweep = {**BASE, "time_budget_s": 60, "max_failures": 0, "ray": {"address": "auto"}, "storage": "store",
             "mlflow": {"experiment": "e", "tracking_uri": "http://localhost:5000", "register_model": "char-rnn"},
             "resources": {"gpu": 0.5}}
    cfg = load_sweep(write_sweep(workspace, sweep))
    assert (cfg.time_budget_s, cfg.max_failures, cfg.ray.address) == (60, 0, "auto")
    assert cfg.storage == str(workspace / "store") and cfg.resources.gpu == 0.5
    assert (cfg.mlflow.experiment, cfg.mlflow.tracking_uri) == ("e", "http://localhost:5000")
    assert cfg.mlflow.register_model == "char-rnn"
    plan = cfg.plan_text()
    assert "time budget 60 s" in plan and "auto" in plan and "http://localhost:5000" in plan
    assert "the best model registered as 'char-rnn'" in plan


def test_max_t_defaults_to_the_largest_iterations(workspace: Path) -> None:
    sweep = edit(train__iterations={"qrandint": [50, 300, 50]})(copy.deepcopy(BASE))
    cfg = load_sweep(write_sweep(workspace, sweep))
    assert cfg.scheduler.max_t == 300 and cfg.value_range("iterations") == (50, 300)


def test_int_search_normalises_and_fixed_values_are_coerced(workspace: Path) -> None:
    sweep = edit(train__hidden_size={"grid_search": [8.0, 16]}, train__clip=1)(copy.deepcopy(BASE))
    cfg = load_sweep(write_sweep(workspace, sweep))
    assert cfg.searched["hidden_size"].values() == (8, 16)
    assert all(type(v) is int for v in cfg.searched["hidden_size"].values())
    assert cfg.fixed["clip"] == 1.0 and type(cfg.fixed["clip"]) is float


# --------------------------------------------------------------------------- Domain


TUNE_CASES = [
    ("grid_search", (1, 2), None, None),
    ("choice", ("a", "b"), "Categorical", "_Uniform"),
    ("uniform", (0.5, 2.0), "Float", "_Uniform"),
    ("quniform", (0.5, 2.0, 0.5), "Float", "Quantized"),
    ("loguniform", (0.01, 0.3), "Float", "_LogUniform"),
    ("qloguniform", (0.1, 3.0, 0.1), "Float", "Quantized"),
    ("randint", (2, 9), "Integer", "_Uniform"),
    ("qrandint", (2, 20, 4), "Integer", "Quantized"),
    ("lograndint", (2, 64), "Integer", "_LogUniform"),
]


def test_tune_cases_cover_every_kind() -> None:
    assert sorted(c[0] for c in TUNE_CASES) == sorted(SEARCH_KINDS)


@pytest.mark.parametrize("kind, args, domain_cls, sampler_cls", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_to_tune(kind: str, args: tuple, domain_cls: str | None, sampler_cls: str | None) -> None:
    import numpy as np
    from ray.tune.search import sample

    domain = Domain(kind, args)
    tuned = domain.to_tune()
    if kind == "grid_search":
        assert tuned == {"grid_search": [1, 2]}
        return
    assert type(tuned) is getattr(sample, domain_cls)
    assert type(tuned.get_sampler()).__name__ == sampler_cls
    if domain.is_categorical:
        assert tuned.categories == list(args)
        return
    assert (tuned.lower, tuned.upper) == args[:2]
    if domain.q is not None:
        assert tuned.get_sampler().q == domain.q
    low, high = domain.extremes()
    draws = tuned.sample(size=2000, random_state=np.random.default_rng(0))
    assert all(low - 1e-9 <= x <= high + 1e-9 for x in draws), (min(draws), max(draws), (low, high))
    if domain_cls == "Integer":  # the drawn range reaches the extremes we check against
        assert (min(draws), max(draws)) == (low, high)


def test_log_base_is_accepted_but_not_passed_on() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Ray 2.60 deprecates `base`; passing it would warn
        tuned = Domain("loguniform", (0.01, 0.3, 10)).to_tune()
    assert (tuned.lower, tuned.upper) == (0.01, 0.3)


@pytest.mark.parametrize("kind, args, message", [
    ("uniform", (2, 1), "low < high must hold, but got (low=2, high=1); swap them"),
    ("qrandint", (1, 3, 5), "a multiple of q must lie in [low, high]"),
    ("quniform", (0, 1, 0), "q > 0 must hold"),
    ("lograndint", (0, 10), "low > 0 must hold on a log scale"),
    ("randint", (1.5, 4), "low must be an integer for randint"),
    ("loguniform", (0.1, 1, 1), "base > 0 and base != 1 must hold"),
    ("choice", (), "must list at least one value"),
    ("normal", (0, 1), "unknown search key"),
])
def test_bad_domain(kind: str, args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Domain(kind, args)
    assert message in str(info.value)


def test_domain_accessors() -> None:
    grid, rng = Domain("grid_search", [64, 128]), Domain("randint", (1.0, 5.0))
    assert grid.is_grid and grid.values() == (64, 128) and grid.extremes() == (64, 128)
    assert not rng.is_grid and rng.bounds() == (1, 5) and rng.extremes() == (1, 4)
    assert type(rng.args[0]) is int
    with pytest.raises(TypeError):
        grid.bounds()
    with pytest.raises(TypeError):
        rng.values()


# --------------------------------------------------------------------------- import weight


def test_import_does_not_load_ray_or_mlflow() -> None:
    code = "import pipeline.config, sys; assert 'ray' not in sys.modules and 'mlflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_direct_construction_validates_train() -> None:
    with pytest.raises(Exception, match="train.hidden_size: must be > 0"):
        SweepConfig.model_validate({"name": "x", "data": {"path": str(REPO / "data" / "tinyshakespeare.txt")},
                                    "train": {"hidden_size": 0}})
