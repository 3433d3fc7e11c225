"""Build-time decisions for setup.py: whether to compile the CUDA kernels, and where the
CUDA toolkit is. Kept apart from setup.py so the tests can run it against fake toolkit
layouts (python_tests/test_cuda_toolkit.py) without building anything.

The rule is the ecosystem's (pytorch_scatter, torchvision, apex): compile the CUDA kernels
when a GPU is there to run them (``torch.cuda.is_available()``) or when ``FORCE_CUDA=1``
asks for them (a build machine without a GPU); otherwise build the CPU kernels only, which
takes a fraction of the time. ``IRDA_CPU_ONLY=1`` is the explicit opt-out.

The toolkit is looked for in this order, and checked before anything is compiled so that a
broken install fails in seconds with one sentence instead of at the link step:

1. ``CUDA_HOME`` or ``CUDA_PATH``, when set;
2. the toolkit behind the ``nvcc`` on the PATH: the symlink is followed, and a wrapper script
   (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``, as on this project's machines) is asked
   where it lives with ``nvcc --dryrun``, which prints the real binary's folder;
3. ``/usr/local/cuda``.

torch's own guess (``torch.utils.cpp_extension.CUDA_HOME``) takes the folder above the
``nvcc`` on the PATH, which for a wrapper in ``/usr/local/bin`` is ``/usr/local``: the
compile then runs for minutes and fails with ``cannot find -lcudart``.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Tuple

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # A100 and H100 as SASS, PTX for newer GPUs to JIT
DEFAULT_ROOT = "/usr/local/cuda"
_OVERRIDE_HINT = "set CUDA_HOME to the toolkit's root (the folder with bin/nvcc, include/ and lib64/)"


class ToolkitError(RuntimeError):
    """The CUDA kernels were asked for but cannot be built; the message says why and what to set."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def should_build_cuda(env: Mapping[str, str], torch_cuda: Optional[str], gpu_available: bool) -> Tuple[bool, str]:
    """Whether to compile the CUDA kernels, and the reason in a few words.

    Args:
        env: the environment (``FORCE_CUDA``, ``IRDA_CPU_ONLY``).
        torch_cuda: ``torch.version.cuda`` (None for a CPU build of torch).
        gpu_available: ``torch.cuda.is_available()``.

    Raises:
        ToolkitError: the two switches contradict each other, or ``FORCE_CUDA=1`` with a
            CPU-only torch.
    """
    force, cpu_only = _flag(env, "FORCE_CUDA"), _flag(env, "IRDA_CPU_ONLY")
    if force and cpu_only:
        raise ToolkitError("FORCE_CUDA=1 and IRDA_CPU_ONLY=1 contradict each other: set one of them")
    if cpu_only:
        return False, "IRDA_CPU_ONLY=1"
    if force:
        if torch_cuda is None:
            raise ToolkitError("FORCE_CUDA=1, but the installed torch is a CPU-only build: install a CUDA "
                               "build of torch or drop FORCE_CUDA")
        return True, "FORCE_CUDA=1"
    if gpu_available and torch_cuda is not None:
        return True, "a GPU is available"
    if torch_cuda is None:
        return False, "the installed torch is a CPU-only build"
    return False, "no GPU is visible; FORCE_CUDA=1 compiles the CUDA kernels anyway"


@dataclass(frozen=True)
class Toolkit:
    """A CUDA toolkit that passed the checks: ``root`` holds ``bin/nvcc``."""

    root: str
    include_dirs: List[str]  # the toolkit's headers (cuda_runtime.h)
    library_dir: str  # the folder with libcudart.so
    found_by: str  # how it was found, for the build log


def _nvcc_root_from_wrapper(nvcc: str, run: Callable) -> Optional[str]:
    """The root of the toolkit a wrapper script around nvcc runs, or None.

    ``nvcc --dryrun`` lists the steps it would take without compiling anything, starting with
    ``#$ _HERE_=<folder of the real nvcc binary>``; the script's own text is the fallback.
    """
    try:
        done = run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                   capture_output=True, text=True, timeout=60)
        found = re.search(r"^#\$ _HERE_=(.+)$", (done.stdout or "") + (done.stderr or ""), re.MULTILINE)
        if found:
            return os.path.dirname(os.path.realpath(found.group(1).strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open(nvcc, "r", errors="replace") as f:
            text = f.read(64 * 1024)
    except OSError:
        return None
    for path in re.findall(r"(/[^\s\"'$;]+)/bin/nvcc\b", text):
        candidate = os.path.join(path, "bin", "nvcc")
        if os.path.isfile(candidate) and os.path.realpath(candidate) != os.path.realpath(nvcc):
            return os.path.realpath(path)
    return None


def _has_cudart(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "libcudart.so*")))


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def locate_root(env: Mapping[str, str], which: Callable = shutil.which, run: Callable = subprocess.run,
                default_root: str = DEFAULT_ROOT) -> Tuple[str, str]:
    """``(root, how it was found)`` of the CUDA toolkit, before any check of its contents."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(name):
            return os.path.abspath(env[name]), name
    nvcc = which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        if not _is_script(real):  # the compiler itself (maybe through symlinks): its toolkit
            return os.path.dirname(os.path.dirname(real)), f"nvcc on the PATH ({nvcc})"
        behind = _nvcc_root_from_wrapper(real, run)
        if behind is not None:
            return behind, f"the nvcc that the script {nvcc} runs"
    return default_root, "the default location"


def _library_dir(root: str) -> Optional[str]:
    for sub in ("lib64", "lib", os.path.join("targets", "*", "lib")):
        for folder in sorted(glob.glob(os.path.join(root, sub))):
            if _has_cudart(folder):
                return folder
    return None


def find_toolkit(env: Mapping[str, str] = os.environ, which: Callable = shutil.which,
                 run: Callable = subprocess.run, default_root: str = DEFAULT_ROOT) -> Toolkit:
    """Locate the CUDA toolkit and check that it can compile and link the kernels.

    Raises:
        ToolkitError: one sentence naming the folder that was searched and what to set.
    """
    root, found_by = locate_root(env, which, run, default_root)
    where = f"{root} (from {found_by})"
    if not os.path.isdir(root):
        raise ToolkitError(f"irda_ext: no CUDA toolkit at {where}; {_OVERRIDE_HINT}, or IRDA_CPU_ONLY=1 "
                           f"to build the CPU kernels only")
    if not os.path.isfile(os.path.join(root, "bin", "nvcc")):
        raise ToolkitError(f"irda_ext: no bin/nvcc in the CUDA toolkit at {where}; {_OVERRIDE_HINT}, or "
                           f"IRDA_CPU_ONLY=1 to build the CPU kernels only")
    includes = [d for d in [os.path.join(root, "include")] + sorted(glob.glob(os.path.join(root, "targets", "*", "include")))
                if os.path.isfile(os.path.join(d, "cuda_runtime.h"))]
    if not includes:
        raise ToolkitError(f"irda_ext: no include/cuda_runtime.h in the CUDA toolkit at {where}; "
                           f"{_OVERRIDE_HINT}, or IRDA_CPU_ONLY=1 to build the CPU kernels only")
    library = _library_dir(root)
    if library is None:
        raise ToolkitError(f"irda_ext: no libcudart.so in {root}/lib64, {root}/lib or {root}/targets/*/lib "
                           f"(the CUDA toolkit from {found_by}); {_OVERRIDE_HINT}, or IRDA_CPU_ONLY=1 to "
                           f"build the CPU kernels only")
    return Toolkit(root=root, include_dirs=includes[:1], library_dir=library, found_by=found_by)


def wheel_include_dirs(search_paths: List[str]) -> List[str]:
    """Header folders of the CUDA libraries that come with torch's ``nvidia`` wheels
    (``site-packages/nvidia/cu13/include``, or one folder per library in older wheels).

    torch's CUDA headers include cuBLAS, cuSPARSE and cuSOLVER headers that a bare toolkit
    (nvcc and the runtime only) lacks; the wheels that torch itself runs on have them, so the
    user does not need to set ``CPATH``.
    """
    found = []
    for base in search_paths:
        for include in sorted(glob.glob(os.path.join(base, "*", "include"))):
            if glob.glob(os.path.join(include, "*.h")) and include not in found:
                found.append(include)
    return found
