#!/usr/bin/env bash
# Creates .venv in the checkout and installs monkeyjobs with its dev extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on CPU machines.
python -m pip install -q "torch==${MONKEYJOBS_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e '.[dev]'
