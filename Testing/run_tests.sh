#!/usr/bin/env bash
# Set up and run the default test suite (tiers 1 and 2): CPU torch, the project, slicer-core, ruff, pytest.
# Slow and GPU tests are excluded by default: add `-m slow` or `-m gpu` to run those.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0   # CPU build; never CUDA in CI
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q "slicer-core>=5.8" || echo "slicer-core could not be installed: tier-2 MRML tests will skip"
"$PY" -m ruff check .
"$PY" -m pytest "$@"
