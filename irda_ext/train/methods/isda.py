"""ISDA-R and RISDA-R, the IRDA paper's eq. 27 and 28 (ISDA, Wang et al. 2019; RISDA, Chen
et al. 2022) on the Balanced-MSE bin logits, as ``--method isda-r | risda-r``. The formulas
are in :mod:`irda_ext.baselines.isda`; the strengths ramp linearly from 0 over the run's
epochs as ISDA's do (unless ``--no-ramp``), and the noise scale follows :mod:`.noise_scale`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from irda_ext.baselines.isda import ISDARLoss, RISDARLoss
from irda_ext.dir_protocol import scaled_shot_thresholds

from .base import Method, option, register_method
from .noise_scale import NoiseScaleOptions, RampOptions, initial_sigma, sigma_param_groups


@dataclass(frozen=True)
class ISDAOptions(NoiseScaleOptions, RampOptions):
    isda_beta: float = option(0.5, "ISDA-R/RISDA-R covariance strength beta (default 0.5, ISDA's lambda0)")
    risda_alpha: float = option(0.5, "RISDA-R mean-shift strength alpha (default 0.5)")
    risda_gamma: float = option(0.5, "RISDA-R tail strength gamma (default 0.5)")
    isda_no_prior: bool = option(False, "ISDA-R/RISDA-R: leave out the training prior of the BMSE logits "
                                        "(eq. 27/28 as printed)")
    risda_tail_count: Optional[int] = option(None, "RISDA-R: bins with at most this many training samples are "
                                                   "tail (default: the data set's many-shot threshold)", type=int)


class _ISDAFamily(Method):
    Options = ISDAOptions

    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        self._epoch, self._num_epochs = 0, max(1, int(self.context.epochs))

    def _ramp(self) -> float:
        return 1.0 if self.options.no_ramp else self._epoch / max(1, self._num_epochs)

    def param_groups(self) -> List[dict]:
        return sigma_param_groups(self.criterion, self.options, self.name)

    def end_epoch(self, epoch, num_epochs):
        self._epoch, self._num_epochs = epoch + 1, num_epochs

    def state_dict(self):
        return {"criterion": self.criterion.state_dict(), "epoch": self._epoch, "num_epochs": self._num_epochs}

    def load_state_dict(self, state):
        self.criterion.load_state_dict(state["criterion"])
        self._epoch, self._num_epochs = int(state["epoch"]), int(state["num_epochs"])


@register_method("isda-r")
class ISDAR(_ISDAFamily):
    """ISDA-R, IRDA paper eq. 27 (ISDA, Wang et al. 2019, on the Balanced-MSE bin logits)."""

    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        o = self.options
        counts = None if o.isda_no_prior else bins.counts(train_targets.detach().cpu(), clamp=True)
        self.criterion = ISDARLoss(bins, int(feature_dim), beta=o.isda_beta,
                                   noise_sigma=initial_sigma(o, self.context), learn_sigma=not o.fixed_sigma,
                                   train_counts=counts).to(self.device)

    def loss(self, features, targets, head):
        pred = head(features).squeeze(-1)
        return self.criterion(features, pred, targets, head, beta=self.criterion.beta * self._ramp())


@register_method("risda-r")
class RISDAR(_ISDAFamily):
    """RISDA-R, IRDA paper eq. 28 (RISDA, Chen et al. 2022), gamma = 0.5."""

    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        o = self.options
        targets = train_targets.detach().cpu()
        tail = o.risda_tail_count
        if tail is None:
            tail = self.context.many_shot  # the run's many-shot threshold, when given
        if tail is None:
            tail = scaled_shot_thresholds(targets, bins)[0]
        self.criterion = RISDARLoss(bins, int(feature_dim), bins.counts(targets, clamp=True), alpha=o.risda_alpha,
                                    beta=o.isda_beta, gamma=o.risda_gamma, tail_max_count=int(tail),
                                    noise_sigma=initial_sigma(o, self.context), learn_sigma=not o.fixed_sigma,
                                    prior=not o.isda_no_prior).to(self.device)

    def loss(self, features, targets, head):
        pred, r = head(features).squeeze(-1), self._ramp()
        return self.criterion(features, pred, targets, head, alpha=self.criterion.alpha * r,
                              beta=self.criterion.beta * r)

    def end_epoch(self, epoch, num_epochs):
        super().end_epoch(epoch, num_epochs)
        self.criterion.end_epoch()
