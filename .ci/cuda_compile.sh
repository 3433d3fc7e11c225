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

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
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
"$CUDA_HOME/bin/nvcc" --version | tail -n 2
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS build dir $BUILD"

start=$SECONDS
python setup.py build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp"
echo "compile time: $((SECONDS - start)) s"

LIB="$(ls "$BUILD"/lib/irda_ext/_C*.so)"
# A fresh interpreter that never imports the irda_ext package: the in-place CPU
# library would register the same schemas a second time.
python - "$LIB" "$ROOT" <<'PY'
import importlib.util
import re
import sys

import torch

lib, root = sys.argv[1], sys.argv[2]
with open(f"{root}/csrc/ops.cpp") as f:
    ops = re.findall(r'm\.def\("([A-Za-z0-9_]+)\(', f.read())
assert ops, "no schemas found in csrc/ops.cpp"

spec = importlib.util.spec_from_file_location("_cuda_check", f"{root}/irda_ext/_cuda_check.py")
cuda_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_check)
built = cuda_check.check_cuda_version(lib)
assert built is not None, f"{lib} has no CUDA build marker: were the CUDA sources compiled?"
print(f"library built with CUDA {built}, torch has CUDA {torch.version.cuda}")

torch.ops.load_library(lib)
missing = []
for op in ops:
    for key in ("CUDA", "CPU"):
        ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"irda_ext::{op}", key)
        print(f"  irda_ext::{op:<26} {key:<4} {'ok' if ok else 'MISSING'}")
        if not ok:
            missing.append(f"{op} ({key})")
if missing:
    sys.exit("ops without a kernel: " + ", ".join(missing))
print(f"all {len(ops)} ops have CPU and CUDA kernels")
PY
