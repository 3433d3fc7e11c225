"""The baselines of DIR (Yang et al., ICML 2021) and their combinations as ``--method``
values: a base loss, optionally weighted by LDS, optionally behind the FDS calibration
layer, optionally on a SMOTER/SMOGN-resampled tabular training set. The formulas and their
sources are in :mod:`irda_ext.baselines` (``losses``, ``lds``, ``fds``, ``smoter``); this
module only wires them into the driver's hooks.

The base loss is DIR's default, L1 (``train.py``: ``--loss l1``, ``weighted_l1_loss`` in
``loss.py``), from which the paper's VANILLA, LDS, FDS and combination rows come; each method
has its MSE variant under the explicit name ``<method>-mse``.

==================  =========================================================
method              what runs
==================  =========================================================
focal-r             Focal-R loss (beta 0.2, gamma 1), L1-based by definition
lds                 L1 weighted by LDS (gaussian, ks 5, sigma 2, sqrt-inverse)
fds                 FDS calibration layer (momentum 0.9, clamp [0.1, 10]) + L1
lds+fds             both
focal-r+lds+fds     Focal-R weighted by LDS, with FDS
smoter / smogn      the tabular training set resampled once, then L1
smogn+lds+fds       SMOGN resampling, LDS weights of the resampled targets, FDS
<method>-mse        the same with MSE as the base loss
==================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from irda_ext.baselines.fds import FDS
from irda_ext.baselines.lds import lds_bin_weights
from irda_ext.baselines.losses import focal_r_loss, weighted_l1_loss, weighted_mse_loss
from irda_ext.baselines.smoter import smogn, smoter
from irda_ext.wfds import KERNELS

from .base import Method, option, register_method


@dataclass(frozen=True)
class DIRFamilyOptions:
    focal_beta: float = option(0.2, "Focal-R: beta in label units (default 0.2)")
    focal_gamma: float = option(1.0, "Focal-R: gamma (default 1)")
    lds_kernel: str = option("gaussian", "LDS/FDS kernel window (default gaussian)", choices=KERNELS)
    lds_ks: int = option(5, "LDS/FDS kernel size in bins (default 5)")
    lds_sigma: float = option(2.0, "LDS/FDS kernel sigma in bins (default 2)")
    lds_reweight: str = option("sqrt_inv", "LDS: smooth sqrt counts (default) or clipped counts",
                               choices=("sqrt_inv", "inverse"))
    fds_momentum: float = option(0.9, "FDS momentum (default 0.9)")
    fds_start_smooth: int = option(1, "FDS: first epoch whose features are calibrated (default 1)")
    smogn_k: int = option(5, "SMOTER/SMOGN neighbours (default 5)")
    smogn_pert: float = option(0.02, "SMOGN Gaussian noise fraction of the standard deviation (default 0.02)")
    smogn_threshold: float = option(0.5, "SMOTER/SMOGN relevance threshold for rare targets (default 0.5)")


class _Composite(Method):
    """A loss (MSE or Focal-R), optionally LDS-weighted, optionally behind FDS, optionally
    on a SMOTER/SMOGN-resampled training set."""

    Options = DIRFamilyOptions
    resample: Optional[str] = None  # None | "smoter" | "smogn"
    base_loss = staticmethod(weighted_l1_loss)  # DIR's default; the -mse variants: weighted_mse_loss
    focal: bool = False
    use_lds: bool = False
    use_fds: bool = False

    def prepare_training_data(self, x, y):
        o, seed = self.options, int(self.context.seed)
        if self.resample == "smoter":
            return smoter(x, y, k=o.smogn_k, rel_thres=o.smogn_threshold, seed=seed)
        if self.resample == "smogn":
            return smogn(x, y, k=o.smogn_k, pert=o.smogn_pert, rel_thres=o.smogn_threshold, seed=seed)
        return x, y

    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        o = self.options
        kernel = dict(kernel=o.lds_kernel, kernel_size=o.lds_ks, sigma=o.lds_sigma)
        self.bin_weights = None
        if self.use_lds:
            targets = train_targets.detach().cpu()
            per_bin = lds_bin_weights(bins.counts(targets, clamp=True), reweight=o.lds_reweight, **kernel)
            # normalised so that the training samples' weights average 1 (as the reference)
            idx = bins.index(targets, clamp=True)
            per_bin = per_bin * (idx.numel() / per_bin[idx].sum())
            self.bin_weights = per_bin.float().to(self.device)
        self.fds = None
        if self.use_fds:
            self.fds = FDS(bins.num_bins, int(feature_dim), momentum=o.fds_momentum, start_smooth=o.fds_start_smooth,
                           **kernel).to(self.device)
        self.focal_beta = o.focal_beta * float(self.context.label_scale)

    def transform_features(self, features, targets, epoch, training):
        if self.fds is None:
            return features
        self.fds.train(training)
        if not training:
            return features
        return self.fds(features, self.bins.index(targets.detach(), clamp=True).to(features.device), epoch)

    def loss(self, features, targets, head):
        pred = head(features).squeeze(-1)
        weight = None
        if self.bin_weights is not None:
            weight = self.bin_weights[self.bins.index(targets.detach(), clamp=True).to(self.bin_weights.device)]
            weight = weight.to(pred.dtype)
        if self.focal:
            return focal_r_loss(pred, targets, weight, beta=self.focal_beta, gamma=self.options.focal_gamma)
        return self.base_loss(pred, targets, weight)

    def end_epoch(self, epoch, num_epochs):
        if self.fds is not None:
            self.fds.end_epoch(epoch)

    def state_dict(self):
        return {"fds": self.fds.state_dict()} if self.fds is not None else {}

    def load_state_dict(self, state):
        if self.fds is not None:
            self.fds.load_state_dict(state["fds"])
        elif state:
            super().load_state_dict(state)


@register_method("focal-r")
class FocalR(_Composite):
    """Focal-R (Yang et al., ICML 2021): ``|e|·(2·sigmoid(β|e|) − 1)^γ``."""
    focal = True


@register_method("lds")
class LDS(_Composite):
    """L1 re-weighted by label distribution smoothing (Yang et al., ICML 2021)."""
    use_lds = True


@register_method("fds")
class FDSMethod(_Composite):
    """L1 behind the feature distribution smoothing layer (Yang et al., ICML 2021)."""
    use_fds = True


@register_method("lds+fds")
class LDSFDS(_Composite):
    """LDS weights and FDS calibration together."""
    use_lds = use_fds = True


@register_method("focal-r+lds+fds")
class FocalRLDSFDS(_Composite):
    """The paper's FOCAL-R + LDS + FDS row."""
    focal = use_lds = use_fds = True


@register_method("smoter")
class SMOTER(_Composite):
    """SMOTER resampling of the tabular training set (Torgo et al., 2013), then L1."""
    needs_tabular_inputs = True
    resample = "smoter"


@register_method("smogn")
class SMOGN(_Composite):
    """SMOGN resampling of the tabular training set (Branco et al., 2017), then L1."""
    needs_tabular_inputs = True
    resample = "smogn"


@register_method("smogn+lds+fds")
class SMOGNLDSFDS(_Composite):
    """The paper's SMOGN + LDS + FDS row (LDS weights of the resampled targets)."""
    needs_tabular_inputs = True
    resample = "smogn"
    use_lds = use_fds = True


def _mse_variant(cls):
    """``cls`` with MSE as the base loss, registered as ``<name>-mse``."""
    variant = type(f"{cls.__name__}MSE", (cls,), {
        "base_loss": staticmethod(weighted_mse_loss),
        "__doc__": f"{cls.__doc__.split(chr(10))[0].replace('L1', 'MSE')} (the MSE variant of ``{cls.name}``)",
        "__module__": __name__,
    })
    return register_method(f"{cls.name}-mse")(variant)


for _cls in (LDS, FDSMethod, LDSFDS, SMOTER, SMOGN, SMOGNLDSFDS):
    globals()[f"{_cls.__name__}MSE"] = _mse_variant(_cls)
