#!/usr/bin/env bash
# CI compile check of the CUDA kernels, no GPU needed: builds irda_ext._C with
# FORCE_CUDA=1 into a temporary directory (never in place, so a CPU build in the
# working tree is left alone), then loads that library and asserts that every op
# defined in csrc/ops.cpp has a CUDA kernel (and a CPU one) registered in the
# dispatcher, and that the library records the CUDA release torch was built with.
#
#   .ci/cuda_compile.sh                      # torch 2.14.1+cu130, nvcc 13.0, sm_90
#   IRDA_CUDA_BUILD_DIR=/path .ci/cuda_compile.sh   # keep (and reuse) the build
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# No CUDA_HOME: setup.py finds the toolkit itself (behind the nvcc on the PATH, which here is
# a wrapper script), as it must for a user.
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

if [[ -n "${IRDA_CUDA_BUILD_DIR:-}" ]]; then
  BUILD="$IRDA_CUDA_BUILD_DIR"
  mkdir -p "$BUILD"
else
  BUILD="$(mktemp -d -t irda_cuda_build.XXXXXX)"
  trap 'rm -rf "$BUILD"' EXIT
fi

python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
nvcc --version | tail -n 2
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS build dir $BUILD"

start=$SECONDS
python setup.py build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp"
echo "compile time: $((SECONDS - start)) s"

LIB="$(ls "$BUILD"/lib/irda_ext/_C*.so)"
python "$ROOT/.ci/check_cuda_kernels.py" "$LIB"
