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
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true
export MOE2DENSE_SHARED_DATA="${MOE2DENSE_SHARED_DATA:-$(pwd)/../shared/data}"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
