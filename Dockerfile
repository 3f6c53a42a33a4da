# Project image: runs the Ray head, the Ray workers and the sweep driver.
#
# PYTHON_IMAGE: the base, a Debian-based Python 3.11 image with `python` and `pip` on PATH.
# Python packages come from PyPI; to build without it (air-gapped), give a folder of wheels as the
# build context `wheels`:
#   docker build --build-context wheels=/path/to/wheels .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# Empty unless `--build-context wheels=DIR` replaces it.
FROM scratch AS wheels

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user that owns the app's writable paths.
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid app --create-home --shell /usr/sbin/nologin app

WORKDIR /app

# The pinned dependencies (see pyproject.toml), in a layer of their own: a change to the code
# below reinstalls only the package. ray[default] adds the dashboard and the Ray client server
# (port 10001); keep its version equal to the ray pin in pyproject.toml.
COPY pyproject.toml ./
RUN --mount=type=bind,from=wheels,target=/wheels \
    if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "ray[default]==2.60.0" \
 && rm /tmp/requirements.txt

# The package itself.
COPY README.md ./
COPY rnncore/ rnncore/
COPY pipeline/ pipeline/
RUN --mount=type=bind,from=wheels,target=/wheels \
    if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && pip install --no-deps . \
 && rm -rf build *.egg-info

# Sweep definitions and the training corpus.
COPY sweeps/ sweeps/
COPY data/ data/

# Sweep output; mounted as a volume by docker-compose.yml.
RUN mkdir -p /app/results && chown app:app /app/results

USER app

CMD ["python", "-m", "pipeline.sweep", "sweeps/basic.yaml"]
