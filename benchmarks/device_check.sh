#!/usr/bin/env bash
# GPU checks, run on demand on a machine with a CUDA GPU (never in CI): the CUDA tests of the
# ridge solvers, the torch decoders, the adapters and the open_clip encoder, then the ridge-CV benchmark at
# the full NSD shape on the GPU (ours vs himalaya's torch_cuda backend vs scikit-learn on the CPU).
#
#   OUT=/tmp/device-check bash benchmarks/device_check.sh
#   TESTS_ONLY=1 bash benchmarks/device_check.sh     # the CUDA tests only (about a minute)
#
# Python packages missing on a bare GPU image (open_clip_torch, ftfy, wcwidth, himalaya) can be
# put as wheels in .whl/ (pip download --no-deps ...); they are installed to /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi -L | tee "$OUT/device.txt"
# --noconftest: these tests need no MLflow store (the conftest's session store needs mlflow).
$PY -m pytest -q --noconftest -p no:cacheprovider -k cuda \
    tests/test_ridge.py tests/test_torch_decoders.py tests/test_adapters_unit.py tests/test_embeddings.py 2>&1 | tee "$OUT/pytest_cuda.txt"
[ -n "${TESTS_ONLY:-}" ] && exit 0
$PY benchmarks/bench_ridge.py --size nsd --device cuda --methods ours,himalaya --himalaya-model kernel 2>&1 \
    | tee "$OUT/bench_ridge_nsd_cuda.txt"
$PY benchmarks/bench_ridge.py --size nsd --device cuda --methods ours --solver eigh_loo 2>&1 \
    | tee "$OUT/bench_ridge_nsd_cuda_eigh.txt"
