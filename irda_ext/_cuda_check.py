"""Refuses a compiled library whose CUDA release differs from torch's.

The CUDA kernels are compiled against one CUDA release; the library then links
that release's runtime and torch's CUDA libraries. With a torch built for another
release it fails to load with an obscure missing-symbol or missing-library
message, or loads and misbehaves. ``csrc/cuda/build_info.cu`` embeds the release
as the marker ``irda_ext_build_cuda_version=MAJOR.MINOR;``, which is read here from
the library's bytes, without loading it, so the check can run before
``import irda_ext._C``.
"""
from __future__ import annotations

import importlib.util
import mmap
import re
from typing import Optional

import torch

_MARKER = re.compile(rb"irda_ext_build_cuda_version=(\d+)\.(\d+);")


class CudaVersionMismatchError(ImportError):
    """The extension's CUDA release is not the one the installed torch was built with."""


def library_path() -> Optional[str]:
    """Path of the compiled ``irda_ext._C`` library, or None when there is none."""
    spec = importlib.util.find_spec("irda_ext._C")
    return None if spec is None else spec.origin


def build_cuda_version(path: str) -> Optional[str]:
    """``"MAJOR.MINOR"`` of the CUDA release the library at ``path`` was compiled with,
    or None for a CPU-only build."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        found = _MARKER.search(data)
        return None if found is None else f"{int(found.group(1))}.{int(found.group(2))}"


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_cuda_version(path: Optional[str] = None) -> Optional[str]:
    """Raise ``CudaVersionMismatchError`` if the library was built with CUDA kernels for a
    CUDA release (major.minor) other than ``torch.version.cuda``.

    Args:
        path: the library to check; by default the installed ``irda_ext._C``.

    Returns:
        The library's CUDA release, or None for a CPU-only build (nothing to check).
    """
    path = library_path() if path is None else path
    if path is None:
        return None
    built = build_cuda_version(path)
    if built is None:
        return None
    torch_cuda = torch.version.cuda
    rebuild = (
        "Rebuild irda_ext against the installed torch (pip install --no-build-isolation "
        "--force-reinstall . with CUDA_HOME pointing at the matching toolkit), or install the "
        "torch build for this CUDA release."
    )
    if torch_cuda is None:
        raise CudaVersionMismatchError(
            f"irda_ext was built with CUDA {built} kernels ({path}), but the installed torch "
            f"{torch.__version__} is a CPU-only build. {rebuild}"
        )
    if _major_minor(torch_cuda) != built:
        raise CudaVersionMismatchError(
            f"irda_ext was built with CUDA {built} ({path}), but the installed torch "
            f"{torch.__version__} was built with CUDA {torch_cuda}. {rebuild}"
        )
    return built
