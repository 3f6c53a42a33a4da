"""The seam to Ray's private and developer APIs: it still fits the pinned Ray, and nothing else reaches past it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"


def test_every_private_ray_api_rnnsweep_uses_still_fits_the_installed_ray():
    from pipeline import raycompat

    assert raycompat.problems() == []


def test_the_check_names_what_a_changed_ray_lacks(monkeypatch):
    import ray
    from ray.tune.schedulers import PopulationBasedTraining

    from pipeline import raycompat

    monkeypatch.setattr(ray, "__version__", "9.9.9")
    original = PopulationBasedTraining.__init__

    def without_state(self, *a, **k):
        original(self, *a, **k)
        del self._trial_state

    monkeypatch.setattr(PopulationBasedTraining, "__init__", without_state)
    found = raycompat.problems()
    assert any("Ray 9.9.9 is installed" in p and raycompat.CHECKED_VERSION in p for p in found), found
    assert "PopulationBasedTraining has no _trial_state" in found


def test_the_pinned_ray_is_the_version_the_seam_was_checked_with():
    from pipeline import raycompat

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[tune]=={raycompat.CHECKED_VERSION}"' in pyproject


def _private_ray_uses(path: Path) -> list[str]:
    """Imports of ray._private and attribute reads of Ray objects' underscore names (PBT's, the Tuner's)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray._"):
            found.append(f"{path.name}:{node.lineno} from {node.module}")
        through_seam = isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "raycompat"
        if isinstance(node, ast.Attribute) and not through_seam and node.attr in ("_local_tuner", "_run_config", "_trial_state",
                                                             "_perturbation_interval", "trial_dir_name",
                                                             "error_file", "get_storage"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.Constant) and node.value in ("trial_dir_name", "error_file"):
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


def test_only_raycompat_uses_rays_private_and_developer_apis():
    outside = [use for path in sorted(PIPELINE.rglob("*.py")) if path.name != "raycompat.py"
               for use in _private_ray_uses(path)]
    assert outside == []
    assert _private_ray_uses(PIPELINE / "raycompat.py")  # the scan does see them where they are


def test_importing_the_pipeline_sets_no_environment_variable():
    # Ray and MLflow first: what they set for themselves on import (RAY_CLIENT_MODE) is theirs
    code = ("import os, ray.tune, mlflow; before = dict(os.environ); import pipeline.sweep, pipeline.tracking, pipeline.callback, "
            "pipeline.trainable, pipeline.search, pipeline.results, pipeline.report, pipeline.sample; "
            "print(sorted(k for k in os.environ if os.environ.get(k) != before.get(k)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
