# usersync for a container work pool (docker, Kubernetes): the code, its Python dependencies and
# the profiles under /opt/usersync. One image serves every deployment in prefect.yaml: the
# deployment's pull step finds the code through USERSYNC_HOME (set below) and reads the other
# settings from the run's environment (the pool's job variables) or from Prefect variables.
#
#   docker build -t registry.example.com/usersync:2026.12 .
#   docker push registry.example.com/usersync:2026.12
#
# Secrets are never baked in: profiles name Prefect Secret blocks or environment variables
# the pool's job variables provide. Keep the Prefect version the server's (pyproject pins 3.9).
# BASE: another Python 3.11 image with `python` and `pip` on PATH (a mirror, or one built
# locally when Docker Hub is unreachable): docker build --build-arg BASE=... .
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    USERSYNC_HOME=/opt/usersync

WORKDIR /opt/usersync
COPY pyproject.toml README.md ./
COPY usersync ./usersync
COPY tasks ./tasks
COPY flows ./flows
COPY cli ./cli
COPY sandbox ./sandbox
RUN pip install '.[postgres]'
# The profiles last: they change more often than the code (or mount them over this folder,
# or point USERSYNC_MAPPINGS_DIR at a mounted one).
COPY mappings ./mappings

RUN useradd --system --home-dir /opt/usersync usersync \
    && mkdir -p var && chown usersync var
USER usersync
