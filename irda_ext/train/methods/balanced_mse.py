"""Balanced MSE (Ren et al., CVPR 2022) as ``--method bmc | gai | bni``: the formulas and
their source are in :mod:`irda_ext.baselines.balanced_mse`; the noise scale is learned in
its own optimiser group with the options every noise-scale method shares
(:mod:`.noise_scale`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from irda_ext.baselines.balanced_mse import BalancedMSELoss, fit_label_gmm

from .base import Method, check_at_least, option, register_method
from .noise_scale import NoiseScaleOptions, initial_sigma, sigma_param_groups


@dataclass(frozen=True)
class BalancedMSEOptions(NoiseScaleOptions):
    gmm_components: int = option(8, "GAI: components of the label GMM (default 8, as Balanced MSE)")


class _BalancedMSE(Method):
    Options = BalancedMSEOptions
    kind = "bmc"

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        check_at_least(self.options, gmm_components=1)

    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        extra = {}
        if self.kind == "gai":
            extra["gmm"] = fit_label_gmm(train_targets, self.options.gmm_components, seed=int(self.context.seed))
        if self.kind == "bni":
            counts = bins.counts(train_targets.detach().cpu(), clamp=True).float()
            extra["bin_centers"], extra["bin_weights"] = bins.centers.float(), counts / counts.sum()
        # BMC on a last batch of one sample: the batch cross-entropy is exactly 0 there.
        self.criterion = BalancedMSELoss(self.kind, init_noise_sigma=initial_sigma(self.options, self.context),
                                         learn_sigma=not self.options.fixed_sigma, allow_single=True,
                                         **extra).to(self.device)

    def param_groups(self) -> List[dict]:
        return sigma_param_groups(self.criterion, self.options, self.name)

    def loss(self, features, targets, head):
        return self.criterion(head(features).squeeze(-1), targets)

    def state_dict(self):
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state):
        self.criterion.load_state_dict(state["criterion"])


@register_method("bmc")
class BMC(_BalancedMSE):
    """Balanced MSE, batch-based Monte Carlo (Ren et al., CVPR 2022)."""
    kind = "bmc"


@register_method("gai")
class GAI(_BalancedMSE):
    """Balanced MSE, GMM-based analytical integration (Ren et al., CVPR 2022)."""
    kind = "gai"


@register_method("bni")
class BNI(_BalancedMSE):
    """Balanced MSE, bin-based numerical integration (Ren et al., CVPR 2022)."""
    kind = "bni"
