# Project image: runs the Ray head, the Ray workers and the sweep driver.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user that owns the app's writable paths.
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid app --create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Install the package and its pinned dependencies (see pyproject.toml).
# ray[default] adds the dashboard and the Ray client server (port 10001);
# keep its version equal to the ray pin in pyproject.toml.
COPY pyproject.toml README.md ./
COPY rnncore/ rnncore/
COPY pipeline/ pipeline/
RUN pip install . "ray[default]==2.60.0" \
 && rm -rf build *.egg-info

# Sweep definitions and the training corpus.
COPY sweeps/ sweeps/
COPY data/ data/

# Sweep output; mounted as a volume by docker-compose.yml.
RUN mkdir -p /app/results && chown app:app /app/results

USER app

CMD ["python", "-m", "pipeline.sweep", "sweeps/basic.yaml"]
