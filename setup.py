"""Builds irda_ext._C, the operator library, against the installed torch.

The CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are built, as
pytorch_scatter, torchvision and apex do, when a GPU is there to run them
(torch.cuda.is_available()) or when FORCE_CUDA=1 asks for them (a build machine without a
GPU); IRDA_CPU_ONLY=1 skips them. The CUDA toolkit is found and checked by cuda_toolkit.py
(CUDA_HOME or CUDA_PATH, else the toolkit behind nvcc, else /usr/local/cuda) before anything
is compiled. TORCH_CUDA_ARCH_LIST picks the GPU architectures (default "8.0;9.0+PTX").
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # an isolated build does not put the source folder on sys.path

import cuda_toolkit  # noqa: E402


def _say(message: str) -> None:
    print(f"irda_ext: {message}", file=sys.stderr)


def _cuda_toolkit():
    """The checked toolkit, with torch's cpp_extension pointed at it (its own guess from a
    wrapper script is wrong), or exit with the one-sentence reason."""
    try:
        toolkit = cuda_toolkit.find_toolkit()
    except cuda_toolkit.ToolkitError as err:
        sys.exit(str(err))
    os.environ["CUDA_HOME"] = toolkit.root
    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.CUDA_HOME = toolkit.root  # read at import time; set it for an earlier import too
    return toolkit


def _extension():
    import torch

    try:
        want_cuda, reason = cuda_toolkit.should_build_cuda(os.environ, torch.version.cuda, torch.cuda.is_available())
    except cuda_toolkit.ToolkitError as err:
        sys.exit(f"irda_ext: {err}")
    # csrc/emulated: the CUDA kernels' code run on the CPU for tests, part of every build
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + sorted(
        glob.glob(os.path.join("csrc", "emulated", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No -std flag: torch.utils.cpp_extension adds the standard its headers need
    # (C++17 up to torch 2.9, C++20 after).
    # -fno-math-errno: sqrt in a loop vectorises (the kernels never read errno).
    # -ffp-contract=off: no fused multiply-adds of the compiler's choosing in the AVX2/AVX-512
    # clones, so the surrogate's backward recomputes each logit bit for bit as forward did (in
    # float32 a logit of 1e6 rounded differently by an FMA moved gradients by percents); the
    # exp and log polynomials fuse theirs explicitly (mul_add in csrc/cpu/simd.h), the same
    # way wherever they are called.
    # -fno-trapping-math: a float comparison may not raise, so gcc turns the kernels' selects
    # (the clamps in exp, the own-bin test) into blends and vectorises the surrogate's loops
    # for AVX2 and SSE2 too; without it only AVX-512's masked instructions could, and an AVX2
    # machine ran the surrogate ~9x slower than its vector width allows. Results are unchanged:
    # no code reads the floating-point exception flags.
    cxx_flags = opt + ["-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
                       "-DIRDA_PYTHON_MODULE"]
    # IRDA_CPU_ISA=avx2 compiles the vectorised CPU loops for AVX2 only (x86-64-v3: with FMA, as
    # every AVX2 server has) instead of AVX-512, AVX2 and baseline chosen at load time: how
    # bench/surrogate_bound.py measures an AVX2 machine on an AVX-512 one. Not for installs.
    isa = os.environ.get("IRDA_CPU_ISA")
    if isa:
        if isa not in ("avx2", "avx512f", "default"):
            sys.exit(f"irda_ext: IRDA_CPU_ISA must be avx2, avx512f or default, got {isa!r}")
        cxx_flags.append(f"-DIRDA_CPU_ISA_{isa.upper()}")  # simd.h: one target instead of the clones
    if not want_cuda:
        _say(f"building the CPU kernels only ({reason})")
        from torch.utils.cpp_extension import CppExtension

        return CppExtension("irda_ext._C", sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=["-fopenmp"])

    toolkit = _cuda_toolkit()
    from torch.utils.cpp_extension import CUDAExtension

    # The cuBLAS/cuSPARSE/cuSOLVER headers that torch's CUDA headers include come with the
    # nvidia wheels torch runs on; a toolkit with only nvcc and the runtime lacks them.
    site_packages = [os.path.dirname(os.path.dirname(torch.__file__))]
    try:
        import nvidia

        site_packages = list(nvidia.__path__)
    except ImportError:
        site_packages = [os.path.join(p, "nvidia") for p in site_packages]
    include_dirs = toolkit.include_dirs + cuda_toolkit.wheel_include_dirs(site_packages)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cuda_toolkit.DEFAULT_ARCH_LIST)
    _say(f"building the CPU and CUDA kernels ({reason}; toolkit {toolkit.root} from {toolkit.found_by}; "
         f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    # --fmad=false: as -ffp-contract=off on the CPU, no fused multiply-adds, so the surrogate's
    # backward recomputes each logit bit for bit as forward did, and the own-bin terms that
    # cancel exactly (R1 = R2 = 0 in paper mode) do; nvcc would contract a*b+c differently in
    # the two kernels. The other kernels are bandwidth-bound: they lose nothing by it.
    nvcc_flags = opt + ["--expt-relaxed-constexpr", "--fmad=false"]
    return CUDAExtension(
        "irda_ext._C",
        sources + cuda_sources,
        include_dirs=include_dirs,
        library_dirs=[toolkit.library_dir],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    packages=find_packages(include=["irda_ext", "irda_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
)
