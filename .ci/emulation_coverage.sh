#!/usr/bin/env bash
# How much of the CUDA kernels' code the emulated tests run (not part of CI): builds the CPU
# library with gcov instrumentation in a temporary copy of the tree, runs the tests that use
# the emulated device, and prints, for each CUDA source, the share of its kernel lines
# (csrc/kernels/<op>.h, the code the .cu file launches) that the emulation executed.
#
#   bash .ci/emulation_coverage.sh [REPORT_DIR]     # about 5 minutes on 2 cores
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT="${1:-}"
WORK="$(mktemp -d -t irda_coverage.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
cd "$WORK"
# -O0: every source line keeps its own code, so gcov's line counts mean what they say.
sed -i 's/    opt = \["-O0", "-g"\] if debug else \["-O3"\]/    opt = ["-O0", "-g", "--coverage"]/' setup.py
IRDA_CPU_ONLY=1 LDFLAGS="--coverage" python setup.py -q build_ext --inplace > build.log 2>&1 || {
  tail -n 30 build.log
  exit 1
}
python -m pytest -q -p no:cacheprovider -x python_tests/test_emulation.py python_tests/test_cuda_precision.py \
  python_tests/test_bin_stats.py python_tests/test_surrogate.py python_tests/test_wfds.py -k "emulated or emulation" \
  > tests.log 2>&1 || { tail -n 30 tests.log; exit 1; }
tail -n 1 tests.log

OBJ="$(dirname "$(find build -name emulated_ops.o | head -n 1)")"
(cd "$OBJ" && gcov -p -o . emulated_ops.o > /dev/null)
python - "$OBJ" <<'PY'
import glob, os, re, sys

obj = sys.argv[1]
# The device code of a header is everything above its host side, which starts at the first
# launch helper (a template over the executor) or the struct of prepared host tensors.
HOST_SIDE = re.compile(r"class Exec>|^struct (Buckets|Prepared) \{")
print(f"{'CUDA source':<26} {'kernel code':<32} {'device code run':>16} {'whole header run':>17}")
for cu, header in [("bin_stats.cu", "bin_stats.h"), ("merge_bin_moments.cu", "merge_bin_moments.h"),
                   ("wfds_smooth.cu", "wfds_smooth.h"), ("irda_surrogate.cu", "irda_surrogate.h")]:
    path = [f for f in glob.glob(os.path.join(obj, "*.gcov")) if f.endswith("#kernels#" + header + ".gcov")][0]
    counts = {"device": [0, 0], "all": [0, 0]}
    host, last = False, 0
    for line in open(path):
        count, number, source = (line.split(":", 2) + ["", ""])[:3]
        count = count.strip().rstrip("*")  # "1*": run by some template instances only
        # the listing's own lines; each template instance repeats its lines after it
        if not number.strip().isdigit() or int(number) <= last:
            continue
        last = int(number)
        host = host or bool(HOST_SIDE.search(source))
        if count == "-":
            continue
        ran = count not in ("#####", "=====")
        for key in ("all",) + (() if host else ("device",)):
            counts[key][0] += ran
            counts[key][1] += 1
    d, a = counts["device"], counts["all"]
    print(f"csrc/cuda/{cu:<16} csrc/kernels/{header:<19} {d[0]:>4}/{d[1]:<4} {100 * d[0] / d[1]:3.0f}%"
          f"   {a[0]:>4}/{a[1]:<4} {100 * a[0] / a[1]:3.0f}%")
PY
if [[ -n "$REPORT" ]]; then
  mkdir -p "$REPORT"
  cp "$OBJ"/*#kernels#*.gcov "$REPORT"/
  echo "gcov files in $REPORT"
fi
