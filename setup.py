"""Builds irda_ext._C, the operator library, against the installed torch.

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu) are built when the
installed torch is a CUDA build and nvcc is found (no GPU needed), or when
FORCE_CUDA=1, in which case a missing toolkit is an error rather than a silent
CPU-only build. IRDA_CPU_ONLY=1 skips them (a quicker build where no GPU will run).
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default "8.0;9.0").
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvcc_available():
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and (
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
    )


def _extension():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    cpu_only = os.environ.get("IRDA_CPU_ONLY", "0") == "1"
    if force_cuda and cpu_only:
        sys.exit("FORCE_CUDA=1 and IRDA_CPU_ONLY=1 contradict each other: set one of them")
    # A GPU is not needed to compile for one: torch built with CUDA plus nvcc is enough.
    want_cuda = force_cuda or (not cpu_only and torch.version.cuda is not None and _nvcc_available())
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    sources = ["csrc/ops.cpp"] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No -std flag: torch.utils.cpp_extension adds the standard its headers need
    # (C++17 up to torch 2.9, C++20 after).
    # -fno-math-errno: sqrt in a loop vectorises (the kernels never read errno).
    # -ffp-contract=off: no fused multiply-adds in the AVX2/AVX-512 clones, so the
    # surrogate's backward recomputes each logit bit for bit as forward did (in float32
    # a logit of 1e6 rounded differently by an FMA moved gradients by percents).
    cxx_flags = opt + ["-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-DIRDA_PYTHON_MODULE"]
    if want_cuda:
        problems = []
        if torch.version.cuda is None:
            problems.append(f"the installed torch {torch.__version__} is a CPU-only build")
        if not _nvcc_available():
            problems.append("nvcc was not found (set CUDA_HOME)")
        if not cuda_sources:
            problems.append("there are no CUDA sources under csrc/cuda")
        if problems:
            if force_cuda:
                sys.exit("FORCE_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
            want_cuda = False
    if want_cuda:
        # A default that covers the data-centre GPUs the benchmarks target; override with
        # TORCH_CUDA_ARCH_LIST for other cards.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc_flags = opt + ["--expt-relaxed-constexpr"]
        return CUDAExtension(
            "irda_ext._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    print("irda_ext: building the CPU kernels only"
          + (" (IRDA_CPU_ONLY=1)" if cpu_only else " (torch has no CUDA or nvcc was not found)"), file=sys.stderr)
    return CppExtension(
        "irda_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
    )


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    packages=find_packages(include=["irda_ext", "irda_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
)
