"""irda_ext: implicit data augmentation for deep imbalanced regression (IRDA).

Public API (SPEC sections in brackets):
    Bins [1], bin_moments, BinStats [2], wfds_weights, wfds_smooth [3],
    isotropic_adjustment [4], irda_surrogate [6], IRDALoss, NoiseScale [9].
"""
from ._ops import OP_NAMES, ops  # noqa: F401  (loads the kernels)
from .bin_stats import BinStats, bin_moments
from .binning import Bins
from .isotropic import adjusted_quadratic, isotropic_adjustment, isotropic_covariance
from .loss import IRDALoss
from .noise_scale import NoiseScale
from .surrogate import irda_surrogate
from .wfds import kernel_window, wfds_smooth, wfds_weights

__version__ = "0.1.0"

__all__ = [
    "Bins",
    "BinStats",
    "bin_moments",
    "wfds_weights",
    "wfds_smooth",
    "kernel_window",
    "isotropic_adjustment",
    "isotropic_covariance",
    "adjusted_quadratic",
    "irda_surrogate",
    "IRDALoss",
    "NoiseScale",
]
