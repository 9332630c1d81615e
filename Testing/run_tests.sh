#!/usr/bin/env bash
# Set up and run the default test suite (tiers 1 and 2): CPU torch, the project, slicer-core, ruff, pytest.
# Slow and GPU tests are excluded by default: add `-m slow` or `-m gpu` to run those.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then   # the CPU build: PyPI's Linux torch is the CUDA one (GBs)
  if [ "$(uname -s)" = Linux ]; then              # offline (CI): pip's own find-links / indexes still answer
    "$PY" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || "$PY" -m pip install -q torch==2.13.0
  else "$PY" -m pip install -q torch==2.13.0; fi
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q "slicer-core>=5.8" || {   # tier 2 needs the real MRML libraries: no silent skips
  echo "run_tests.sh: slicer-core (PyPI) could not be installed for $("$PY" --version); the tier-2 MRML tests need it." >&2
  echo "Use a Python for which PyPI has slicer-core wheels, or run the tier-1 tests alone: python -m pytest --ignore-glob='*test_slicer_*'" >&2
  exit 1; }
"$PY" -m ruff check .
"$PY" -m pytest "$@"
