# Sourced by gpu_check.sh and train_gpu.sh: make a bare GPU machine able to run this checkout.
# cycleinr from the checkout itself, first on the path (pip cannot install the project there: no network and
# no SimpleITK, whose 53 MB wheel does not fit in a device call; volumes are then read and written as NRRD by
# cycleinr.nrrd), and the wheels carried in .whl (PyWavelets, which the SNLI estimate needs; see the device
# tool's README).
export PYTHONPATH="$PWD/CycleINRSR${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import pywt" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python -c "import cycleinr.metrics" || { echo "cycleinr cannot be imported here (see above)" >&2; exit 1; }
