"""The baselines of the paper's tables, each usable on its own (SPEC 9).

============================  ==============================================  ======================
idea                          module                                          form
============================  ==============================================  ======================
MSE, L1, Focal-R              :mod:`irda_ext.baselines.losses`                loss functions
LDS                           :mod:`irda_ext.baselines.lds`                   per-sample weights
FDS                           :mod:`irda_ext.baselines.fds`                   calibration layer
BMC, GAI, BNI (Balanced MSE)  :mod:`irda_ext.baselines.balanced_mse`          losses + module
ISDA-R, RISDA-R               :mod:`irda_ext.baselines.isda`                  losses + modules
RankSim                       :mod:`irda_ext.baselines.ranksim`               regulariser
SMOTER, SMOGN                 :mod:`irda_ext.baselines.smoter`                data transforms
SupCR / Rank-N-Contrast       :mod:`irda_ext.baselines.rnc`                   contrastive loss
============================  ==============================================  ======================

Their kernel window over bins (LDS, FDS) is W-FDS's: :func:`irda_ext.wfds.kernel_window`
(names :data:`irda_ext.wfds.KERNELS`) and :func:`irda_ext.wfds.kernel_smoothing_matrix`.

The training-loop adapters (``irda-train --method ...``) live in the harness,
:mod:`irda_ext.train.methods`; nothing here imports it.
"""
from .balanced_mse import BalancedMSELoss, bmc_loss, bni_loss, fit_label_gmm, gai_loss
from .fds import FDS
from .isda import ISDARLoss, RISDARLoss, isda_r_loss, risda_r_loss, risda_tail_weight
from .lds import lds_bin_weights, lds_weights
from .losses import FocalRLoss, focal_r_loss, weighted_l1_loss, weighted_mse_loss
from .ranksim import RankSim, blackbox_rank, rank_normalised, ranksim_loss
from .rnc import rnc_loss
from .smoter import relevance, relevance_control_points, smogn, smoter

__all__ = [
    "BalancedMSELoss", "bmc_loss", "bni_loss", "fit_label_gmm", "gai_loss",
    "FDS",
    "ISDARLoss", "RISDARLoss", "isda_r_loss", "risda_r_loss", "risda_tail_weight",
    "lds_bin_weights", "lds_weights",
    "FocalRLoss", "focal_r_loss", "weighted_l1_loss", "weighted_mse_loss",
    "RankSim", "blackbox_rank", "rank_normalised", "ranksim_loss",
    "rnc_loss",
    "relevance", "relevance_control_points", "smogn", "smoter",
]
