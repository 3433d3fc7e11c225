#!/usr/bin/env bash
# Builds the op library with CMake against the installed libtorch (the C++ users' path) and
# checks that it loads and runs. Usage: .ci/cmake_build.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-$(mktemp -d)}
mkdir -p "$build"
args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')")
# A CUDA build of torch makes find_package(Torch) look for the CUDA runtime even for a CPU-only
# library: point it at nvcc and at the runtime libraries of torch's nvidia wheels.
nv=$(python - <<'PY'
import glob, os, torch
if torch.version.cuda:
    import nvidia
    for root in nvidia.__path__:
        hits = glob.glob(os.path.join(root, "*", "lib", "libcudart.so*"))
        if hits:
            print(os.path.dirname(os.path.dirname(hits[0])))
            break
PY
)
if [ -n "$nv" ]; then
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}" -DCUDA_INCLUDE_DIRS="$nv/include"
         -DCUDA_CUDART_LIBRARY="$(ls "$nv"/lib/libcudart.so* | head -1)"
         -DCUDA_nvrtc_LIBRARY="$(ls "$nv"/lib/libnvrtc.so* | head -1)")
fi
cmake -S . -B "$build" "${args[@]}" > "$build/configure.log" 2>&1 || { tail -40 "$build/configure.log"; exit 1; }
cmake --build "$build" -j 2 > "$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }
python - "$build" <<'PY'
import glob, sys, torch
lib = glob.glob(f"{sys.argv[1]}/libirda_ext_ops*.so")[0]
torch.ops.load_library(lib)
count, mean, scatter = torch.ops.irda_ext.bin_moments(torch.randn(5, 3), torch.tensor([0, 1, 1, 2, 0]), 3)
assert count.tolist() == [2, 2, 1], count
print("CMake-built library loads and runs:", lib)
PY
