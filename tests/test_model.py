"""The best trial as an MLflow model (pipeline/mlflow_model.py, logged by pipeline.tracking.log_best_model), on the
synthetic sweep layout of fixtures_report (no Ray): logged on the trial's run, registered once per call, loaded
where rnnsweep is not importable, and sampling exactly what pipeline.sample and rnncore.sample give.

Serving it (`mlflow models serve`) and the sweep that logs it are tested on the end-to-end sweep in test_sweep.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_report import PRIME, write_small

REPO = Path(__file__).resolve().parents[1]
NAME = "small-best"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The small sweep's best trial (t0003) logged twice as NAME (versions 1 and 2), and once unregistered."""
    from pipeline import tracking

    root = tmp_path_factory.mktemp("model")
    small = write_small(root)
    uri, out, parent, checkpoint = small["uri"], small["out"], small["parent"], small["checkpoint"]
    best = next(t for t in small["trials"] if t["trial_id"] == "t0003")
    uris = [tracking.log_best_model(uri, best, parent_run_id=parent, register_as=NAME) for _ in range(2)]
    plain = tracking.log_best_model(uri, best, parent_run_id=None)
    return {"root": root, "uri": uri, "out": out, "parent": parent, "best": best, "checkpoint": checkpoint,
            "uris": uris, "plain": plain}


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """This interpreter with a clean environment (no PYTHONPATH, no MLFLOW_*), from cwd."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=300)


def test_each_call_logs_a_model_on_the_trials_run_and_registers_a_new_version(logged):
    from mlflow import MlflowClient

    assert logged["uris"] == [f"models:/{NAME}/1", f"models:/{NAME}/2"]
    assert logged["plain"].startswith("models:/m-")
    client = MlflowClient(logged["uri"])
    assert client.get_run(logged["parent"]).data.tags["best_model"] == f"models:/{NAME}/2"  # the latest
    run = client.get_run(logged["best"]["mlflow_run_id"])
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])  # the sweep's experiment
    assert len(models) == 3
    for m in models:
        assert m.name == "best_model" and m.source_run_id == run.info.run_id and m.tags["trial_id"] == "t0003"
        assert str(m.status) in ("READY", "LoggedModelStatus.READY")
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert all(v.run_id == run.info.run_id for v in versions)


def test_the_signature_takes_prompts_and_the_sampling_params(logged):
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(logged["uri"])
    try:
        model = mlflow.pyfunc.load_model(logged["uris"][0])
    finally:
        mlflow.set_tracking_uri(before)
    sig = model.metadata.signature
    assert [c.type.name for c in sig.inputs.inputs] == ["string"]
    assert [c.type.name for c in sig.outputs.inputs] == ["string"]
    params = {p.name: (p.dtype.name, p.default) for p in sig.params.params}
    assert params == {"length": ("long", 500), "temperature": ("double", 0.8), "seed": ("long", 0)}
    assert model.metadata.flavors["python_function"]["artifacts"]["checkpoint"]["path"] == "artifacts/checkpoint.npz"


def test_the_model_loads_without_rnnsweep_and_samples_like_rnncore(logged, tmp_path):
    """In a fresh process, from another folder, with rnnsweep's `pipeline` made unimportable: rnncore comes from the
    model's own code/ folder, and predict gives rnncore.sample.generate's text for each prompt."""
    code = f"""
import json, sys
class NoPipeline:
    def find_spec(self, name, path=None, target=None):
        if name == "pipeline" or name.startswith("pipeline."):
            raise ImportError("rnnsweep's pipeline is not installed here")
sys.meta_path.insert(0, NoPipeline())
import mlflow
mlflow.set_tracking_uri({logged['uri']!r})
model = mlflow.pyfunc.load_model({logged['uris'][1]!r})
import rnncore
out = model.predict([{PRIME!r}, "Ci", ""], params={{"length": 40, "temperature": 0.7, "seed": 3}})
print(json.dumps({{"rnncore": rnncore.__file__, "out": out, "default": model.predict([{PRIME!r}])}}))
"""
    r = _python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert "/code/rnncore/" in got["rnncore"] and str(REPO) not in got["rnncore"]
    from rnncore.sample import generate

    want = [generate(str(logged["checkpoint"]), 40, 0.7, p, 3) for p in (PRIME, "Ci", "")]
    assert got["out"] == want
    assert got["default"] == [generate(str(logged["checkpoint"]), 500, 0.8, PRIME, 0)]  # the signature's defaults


def test_pipeline_sample_takes_a_model_uri_and_gives_the_same_text(logged, tmp_path):
    from pipeline.sample import sample_model, sample_trial

    text, origin = sample_model(logged["uris"][0], length=50, prime=PRIME, seed=1, tracking_uri=logged["uri"])
    assert origin == {"run_id": logged["best"]["mlflow_run_id"], "trial_id": "t0003"}
    best, _ = sample_trial(logged["out"], None, length=50, prime=PRIME, seed=1)  # the sweep folder's --best
    assert text == best and text.startswith(PRIME) and len(text) == len(PRIME) + 50
    env = {"MLFLOW_TRACKING_URI": logged["uri"], "PYTHONPATH": str(REPO)}
    r = _python(f"from pipeline.sample import main; raise SystemExit(main(['models:/{NAME}/2', '--length', '50', "
                f"'--prime', {PRIME!r}, '--seed', '1']))", cwd=tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text + "\n"
    assert f"# model models:/{NAME}/2: trial t0003, MLflow run {logged['best']['mlflow_run_id']}" in r.stderr


@pytest.mark.parametrize("args, words", [
    ([f"models:/{NAME}/9"], ["no MLflow model models:/small-best/9", "--tracking-uri"]),
    (["models:/nobody/1"], ["no MLflow model models:/nobody/1"]),
    ([f"models:/{NAME}/1", "--best"], ["--trial and --best pick a trial of a sweep folder", "drop them"]),
    ([f"models:/{NAME}/1", "--prime", "é"], ["characters the model never saw"]),
])
def test_pipeline_sample_model_errors(logged, capsys, args, words):
    from pipeline.sample import main

    assert main([*args, "--tracking-uri", logged["uri"], "--length", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(w in err for w in words), err


def test_predict_checks_its_params_and_takes_prompts_in_any_form(logged):
    import numpy as np
    import pandas as pd

    from pipeline.mlflow_model import CharRNN, prompts
    from rnncore.checkpoint import load_sampler

    model = CharRNN()
    model.P, model.vocab, model.h = load_sampler(logged["checkpoint"])
    for bad in ({"length": 0}, {"temperature": 0.0}, {"temperature": float("nan")}, {"seed": -1}):
        with pytest.raises(ValueError, match="params must have length > 0"):
            model.predict(None, ["Ci"], bad)
    want = ["a", "b"]
    for form in (want, np.array(want), pd.Series(want), pd.DataFrame({"prompt": want}), pd.DataFrame({0: want})):
        assert prompts(form) == want
    assert prompts("a") == ["a"]


def test_the_model_module_imports_nothing_but_mlflow_and_rnncore():
    """What pipeline.mlflow_model adds to what `import mlflow.pyfunc` loads: rnncore (and the module itself)."""
    code = ("import sys; import mlflow.pyfunc; before = set(sys.modules); import pipeline.mlflow_model; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    r = _python(code, cwd=REPO, PYTHONPATH=str(REPO))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['pipeline', 'rnncore']"
