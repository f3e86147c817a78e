#!/usr/bin/env bash
# Create .venv in the repository and install the requirements.
#   bash scripts/setup.sh          runtime requirements
#   bash scripts/setup.sh --test   plus the test-only oracles (diffusers, ftfy)
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0), so that no other requirement pulls a
# different build: on CPU-only machines that is the CPU wheel, never several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
fi
.venv/bin/python -c "import torch; print('environment ready: torch', torch.__version__)"
