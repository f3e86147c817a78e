#!/usr/bin/env bash
# Create .venv in the repository and install the requirements.
#   bash scripts/setup.sh          runtime requirements
#   bash scripts/setup.sh --test   plus the test-only oracles (diffusers, ftfy) and, for the web page's browser
#                                  tests, Playwright and Debian's chromium (installed with apt-get when root)
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
  # Playwright drives the system's chromium (its own browser download is not used).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "note: the web page's browser tests need chromium (as root: apt-get install chromium)"
    fi
  fi
fi
.venv/bin/python -c "import torch; print('environment ready: torch', torch.__version__)"
