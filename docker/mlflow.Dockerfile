# MLflow tracking server with the PostgreSQL driver.
#
# MLFLOW_IMAGE: the base, an image with MLflow, `python` and `pip` on PATH. As in ../Dockerfile,
# `--build-context wheels=DIR` installs from a folder of wheels instead of PyPI.
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.17.2

# Empty unless `--build-context wheels=DIR` replaces it.
FROM scratch AS wheels

FROM ${MLFLOW_IMAGE}

RUN --mount=type=bind,from=wheels,target=/wheels \
    if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && pip install --no-cache-dir psycopg2-binary==2.9.13
