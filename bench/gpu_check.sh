#!/usr/bin/env bash
# Everything a GPU session has to do, in one script of a few minutes:
#   1. build the CUDA kernels in place (skipped when irda_ext/_C already has them,
#      built for this torch's CUDA release),
#   2. check that every op has a CUDA kernel in the dispatcher,
#   3. run the CUDA tests (every test case on "cuda" and python_tests/test_cuda_precision.py),
#   4. run the GPU benchmarks (bench/bench_gpu.py) into bench/results/gpu_<gpu name>.{json,md}.
# The log, the JUnit report and the benchmark results are also copied to $OUT when it is set.
#
#   bench/gpu_check.sh               # all of it
#   QUICK=1 bench/gpu_check.sh       # fewer benchmark repetitions
#   FULL_TESTS=1 bench/gpu_check.sh  # then the whole test suite (CPU cases too)
# Exit status: 0 when the build, the tests and every benchmark section succeeded.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-$ROOT/bench/results/gpu_check}"
mkdir -p "$DEST"
exec > >(tee "$DEST/gpu_check.log") 2>&1

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo; echo "=== $* ($(date +%H:%M:%S), ${SECONDS}s) ==="; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0))" \
  || { echo "torch sees no GPU"; exit 1; }

step "build"
if python - <<'PY'
import sys
from irda_ext._cuda_check import build_cuda_version, library_path
path = library_path()
sys.exit(0 if path and build_cuda_version(path) else 1)
PY
then
  echo "irda_ext/_C already has CUDA kernels: not rebuilding"
else
  ARCH="$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" python setup.py build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
fi

step "dispatcher"
python - <<'PY' || exit 1
import torch
import irda_ext
from irda_ext._cuda_check import check_cuda_version
print("library built with CUDA", check_cuda_version())
missing = [op for op in irda_ext.OP_NAMES
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"irda_ext::{op}", "CUDA")]
assert not missing, f"ops without a CUDA kernel: {missing}"
print("CUDA kernels registered for", ", ".join(irda_ext.OP_NAMES))
PY

step "CUDA tests"
timeout 600 python -m pytest python_tests -k cuda -q -rs -p no:cacheprovider \
  --junitxml="$DEST/junit_cuda.xml" || { echo "CUDA TESTS FAILED"; status=1; }

step "benchmarks"
timeout 600 python bench/bench_gpu.py --out "$ROOT/bench/results" ${QUICK:+--quick} || { echo "BENCHMARKS FAILED"; status=1; }
cp "$ROOT"/bench/results/gpu_*.json "$ROOT"/bench/results/gpu_*.md "$DEST"/ 2>/dev/null || true

if [[ -n "${FULL_TESTS:-}" ]]; then
  step "full test suite"
  timeout 900 python -m pytest python_tests -q -p no:cacheprovider --junitxml="$DEST/junit_all.xml" \
    || { echo "TESTS FAILED"; status=1; }
fi

step "done, status $status"
exit $status
