"""Meta-IRDA (paper 3.5.2, SPEC 7): per-bin augmentation statistics learned by a meta-network
on a balanced held-out meta set through a one-step look-ahead of the regression head."""
from .history import GateHistory
from .lookahead import lookahead_irda_loss, meta_objective, virtual_step
from .meta_net import GATE_NAMES, INPUT_NAMES, BinInputs, MetaNet, region_density, remse_bin_logits
from .meta_set import balanced_meta_indices, split_meta_set

__all__ = ["GATE_NAMES", "INPUT_NAMES", "BinInputs", "GateHistory", "MetaNet", "balanced_meta_indices",
           "lookahead_irda_loss", "meta_objective", "region_density", "remse_bin_logits", "split_meta_set",
           "virtual_step"]
