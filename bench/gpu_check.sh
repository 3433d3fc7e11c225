#!/usr/bin/env bash
# Everything a GPU session has to do, in one run of under 8 minutes, with every result under $OUT:
#   1. environment: GPU, driver, torch, nvcc, and whether ninja and compute-sanitizer exist;
#   2. build: `pip install --no-build-isolation --no-deps --no-index -e .` against the installed
#      torch (nothing downloaded), CUDA kernels for this GPU's architecture only (FORCE_CUDA=1);
#      where there is no ninja, bench/ninja_stand_in.py stands in for it (torch would otherwise
#      compile the sources one after another);
#   3. dispatcher: every op has a CUDA kernel, and the library records torch's CUDA release;
#   4. CUDA tests: python_tests/test_cuda_precision.py and the "cuda" cases of the op tests;
#   5. quick benchmarks (bench/bench_gpu.py --quick): BinStats.update at n=256, D=2048, B=100
#      against ISDA's one-hot update and as % of the measured device-to-device copy bandwidth,
#      wfds_smooth, the fused against the dense surrogate, one IRDA step over one MSE step of a
#      ResNet-50 at batch 256 (target: at most 10% overhead);
#   6. where compute-sanitizer exists: memcheck and racecheck of the three ops at awkward shapes
#      (bench/sanitize_ops.py: D = 1, 63, 65, 130; bins with a number of samples not a multiple of 16).
# Every step has a time limit within the whole budget; the steps after a failed build are skipped.
# $OUT gets gpu_check.log (everything), summary.md (one line per step), environment.txt,
# build.log, junit_cuda.xml, gpu_<name>.{json,md} and sanitizer_*.log.
#
#   OUT=/path/to/results bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --dry-run     # no GPU needed: the plan, and bench_gpu.py --dry-run
#
# Options:
#   --dry-run        print the steps and their commands, and run bench_gpu.py --dry-run (CPU)
#   --skip-build     use the CUDA build already in irda_ext/ (steps 1 and 3-6)
#   --no-sanitizer   skip step 6
#   --full-bench     benchmarks without --quick (longer than the budget allows with the rest)
#   --budget S       the whole run's time limit in seconds (default 450)
#   -h, --help       this text
# Environment: OUT (default bench/results/gpu_check), PYTHON (default python, else python3).
# Exit status: 0 when every step that ran passed, 1 otherwise, 2 for a usage error.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

DRY=0 SKIP_BUILD=0 SANITIZER=1 QUICK=(--quick) BUDGET=450
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --no-sanitizer) SANITIZER=0 ;;
    --full-bench) QUICK=() ;;
    --budget)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget needs a number of seconds" >&2; exit 2; }
      BUDGET=$2
      shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results/gpu_check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PIP_DISABLE_PIP_VERSION_CHECK=1
printf '| step | status | seconds |\n|---|---|---|\n' > "$OUT/summary.md"
status=0

# run NAME CAP COMMAND...: the step, limited to CAP seconds and to what is left of the budget
# (minus RESERVE for the steps after it); its result goes to summary.md.
RESERVE=20
run() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - SECONDS - RESERVE))
  local limit=$((cap < left ? cap : left))
  echo
  echo "=== $name ($(date +%H:%M:%S), ${SECONDS}s of ${BUDGET}s; limit ${limit}s) ==="
  if [[ $DRY -eq 1 ]]; then
    printf '  %q' "$@"
    echo
    return 0
  fi
  if ((limit < 10)); then
    echo "SKIPPED: no time left"
    echo "| $name | skipped (time) | 0 |" >> "$OUT/summary.md"
    return 1
  fi
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local took=$((SECONDS - start)) word=passed
  ((rc == 124 || rc == 137)) && word="timed out after ${limit}s"
  ((rc != 0 && rc != 124 && rc != 137)) && word="failed (exit $rc)"
  echo "--- $name: $word in ${took}s"
  echo "| $name | $word | $took |" >> "$OUT/summary.md"
  ((rc == 0)) || status=1
  return $rc
}

# 1. environment ---------------------------------------------------------------------------------
environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda); print("gpu", torch.cuda.get_device_name(0), "capability %d.%d" % torch.cuda.get_device_capability(0))'
  nvcc --version | tail -n 2 || echo "no nvcc on the PATH"
  echo "ninja: $(ninja --version 2>/dev/null || echo 'none: bench/ninja_stand_in.py stands in')"
  echo "compute-sanitizer: $(sanitizer_path || echo none)"
  echo "cpus: $(nproc)"
}
sanitizer_path() {
  command -v compute-sanitizer && return 0
  local toolkit  # the toolkit setup.py builds with (cuda_toolkit.py sees through a wrapper nvcc)
  toolkit="$(cd "$ROOT" && "$PYTHON" -c 'import cuda_toolkit; print(cuda_toolkit.find_toolkit().root)' 2>/dev/null)"
  for candidate in "$toolkit/bin/compute-sanitizer" "$toolkit/extras/compute-sanitizer/compute-sanitizer" \
                   /usr/local/cuda/bin/compute-sanitizer; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return 0; }
  done
  return 1
}
if [[ $DRY -eq 1 ]]; then
  run "environment" 30 environment
else
  run "environment" 30 bash -c "$(declare -f environment sanitizer_path); PYTHON='$PYTHON' ROOT='$ROOT'; environment" \
    | tee "$OUT/environment.txt" || { echo "no usable GPU: stopping"; exit 1; }
fi

# 2. build ---------------------------------------------------------------------------------------
build() {
  local arch
  arch="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')" || return 1
  export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  unset IRDA_CPU_ONLY
  if ! ninja --version > /dev/null 2>&1; then
    local bin
    bin="$(mktemp -d)"
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PYTHON" "$ROOT/bench/ninja_stand_in.py" > "$bin/ninja"
    chmod +x "$bin/ninja"
    export PATH="$bin:$PATH"
  fi
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS ninja=$(command -v ninja)"
  # The installed torch, setuptools and compilers; nothing from an index.
  if ! "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v -e "$ROOT"; then
    echo "pip could not install it editable: building in place with setup.py (still no isolation)"
    "$PYTHON" setup.py build_ext --inplace || return 1
  fi
  ls "$ROOT"/irda_ext/_C*.so > /dev/null 2>&1 || "$PYTHON" setup.py build_ext --inplace
}
if [[ $SKIP_BUILD -eq 0 ]]; then
  if [[ $DRY -eq 1 ]]; then
    run "build" 240 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v -e "$ROOT"
  else
    run "build" 240 bash -c "$(declare -f build); PYTHON='$PYTHON' ROOT='$ROOT'; build" > "$OUT/build.log" 2>&1 || {
      tail -n 40 "$OUT/build.log"
      echo "BUILD FAILED: the remaining steps need it"
      exit 1
    }
    tail -n 3 "$OUT/build.log"
  fi
fi

# 3. dispatcher ----------------------------------------------------------------------------------
run "dispatcher" 60 "$PYTHON" - <<'PY' || { [[ $DRY -eq 1 ]] || { echo "no CUDA kernels: stopping"; exit 1; }; }
import torch
import irda_ext
from irda_ext._cuda_check import check_cuda_version
print("irda_ext from", irda_ext.__file__, "built with CUDA", check_cuda_version())
missing = [op for op in irda_ext.OP_NAMES
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"irda_ext::{op}", "CUDA")]
assert not missing, f"ops without a CUDA kernel: {missing}"
print("CUDA kernels registered for", ", ".join(irda_ext.OP_NAMES))
PY

# 4. CUDA tests ----------------------------------------------------------------------------------
run "CUDA tests" 180 "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/junit_cuda.xml" \
  python_tests/test_cuda_precision.py python_tests/test_bin_stats.py python_tests/test_surrogate.py \
  python_tests/test_wfds.py -k "cuda"

# 5. quick benchmarks ----------------------------------------------------------------------------
if [[ $DRY -eq 1 ]]; then
  run "benchmarks" 150 "$PYTHON" bench/bench_gpu.py --out "$OUT" "${QUICK[@]}"
  echo "(dry run: bench_gpu.py --dry-run checks the benchmark code on the CPU)"
  "$PYTHON" bench/bench_gpu.py --dry-run --out "$OUT" || status=1
else
  run "benchmarks" 150 "$PYTHON" bench/bench_gpu.py --out "$OUT" "${QUICK[@]}"
fi

# 6. compute-sanitizer ---------------------------------------------------------------------------
if [[ $SANITIZER -eq 1 ]]; then
  SAN="$(sanitizer_path || true)"
  if [[ -z "$SAN" && $DRY -eq 1 ]]; then
    SAN=compute-sanitizer
  fi
  if [[ -n "$SAN" ]]; then
    # Only this library's kernels (namespace irda), where the sanitizer's version can filter.
    ONLY_OURS=()
    if [[ $DRY -eq 1 ]] || "$SAN" --help 2>/dev/null | grep -q -- "--kernel-regex"; then
      ONLY_OURS=(--kernel-regex kns=irda)
    fi
    # Without the caching allocator every tensor is its own allocation, so memcheck sees the
    # end of each one.
    run "memcheck" 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck "${ONLY_OURS[@]}" \
      --error-exitcode 1 --log-file "$OUT/sanitizer_memcheck.log" "$PYTHON" bench/sanitize_ops.py
    # Shared memory: only bin_cov has any.
    run "racecheck" 90 "$SAN" --tool racecheck --racecheck-report all "${ONLY_OURS[@]}" --error-exitcode 1 \
      --log-file "$OUT/sanitizer_racecheck.log" "$PYTHON" bench/sanitize_ops.py --only bin_stats
  else
    echo "| sanitizer | not available | 0 |" >> "$OUT/summary.md"
  fi
fi

echo
echo "=== done in ${SECONDS}s, status $status; results in $OUT ==="
cat "$OUT/summary.md"
exit $status
