"""Meta-IRDA in the training loop: IRDA whose per-bin mean-shift gate, covariance gate and
isotropic weight ``v_b`` come from a meta-network trained on a balanced held-out meta set
(paper 3.5.2, SPEC 7; see :mod:`irda_ext.meta`)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from irda_ext.meta import BinInputs, GateHistory, MetaNet, balanced_meta_indices, meta_objective, split_meta_set

from .base import check_at_least, check_positive, option, register_method
from .irda import IRDA, IRDAOptions

GATES_JSON = "meta_irda_gates.json"
VB_PLOT = "meta_irda_vb.png"


@dataclass(frozen=True)
class MetaIRDAOptions(IRDAOptions):
    meta_lr: float = option(1e-3, "meta-irda: Adam learning rate of the meta-network (default 1e-3)")
    meta_interval: int = option(1, "meta-irda: one meta step every this many training steps (default 1)")
    meta_per_bin: int = option(10, "meta-irda: held-out meta samples per bin, at most half of a bin (default 10)")
    meta_batch_size: int = option(256, "meta-irda: meta batch size, also the cap on the look-ahead batch "
                                       "(default 256)")
    meta_step_lr: Optional[float] = option(None, "meta-irda: learning rate of the virtual SGD step of the head "
                                                 "(default --lr)", type=float)


@register_method("meta-irda")
class MetaIRDA(IRDA):
    """IRDA with meta-learned augmentation statistics.

    Every ``--meta-interval`` training steps: the meta-network maps the per-bin inputs
    ``[N_b/N_max, rho_b, U_b, Lbar_b]`` to gates; the head takes a virtual SGD step
    (``--meta-step-lr``, default ``--lr``) on the IRDA loss of (at most
    ``--meta-batch-size`` samples of) the batch with those gates; the MSE of the virtual
    head on a meta batch of ``--meta-batch-size`` samples is backpropagated (second
    order) into the meta-network, which Adam updates at ``--meta-lr``. The real step then
    uses the updated gates, detached, in the fused IRDA loss.

    The meta set (at most ``--meta-per-bin`` samples per bin, never more than half a bin)
    is held out of the training data in :meth:`prepare_training_data` when the run's label
    bins are known (``context.label_bins``, label units; the driver always gives them);
    without them (or for non-tabular data) it is drawn from the training set at
    :meth:`pretrain` and is not disjoint from it (a warning says so). Meta features come
    from the backbone in eval mode without gradient: only the meta-network learns from the
    meta set.

    Every epoch end records ``v_b``, the mean gate and the covariance gate of every bin in
    ``meta_irda_gates.json`` in ``context.out_dir``; the last epoch also plots ``v_b`` of
    the head bin and of the tail bin over training (``meta_irda_vb.png``, paper Fig. 7).
    """

    needs_per_sample_targets = True

    Options = MetaIRDAOptions

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        check_at_least(self.options, meta_interval=1, meta_batch_size=1, meta_per_bin=0)
        check_positive(self.options, "meta_lr", "meta_step_lr")
        self.meta_x: Optional[torch.Tensor] = None  # inputs of the meta set
        self.meta_y: Optional[torch.Tensor] = None  # its targets, label units
        self.meta_held_out = False
        self._pool = None  # (x, y) of the training set when the meta set could not be held out
        self.label_mean = float(self.context.label_shift)  # model units are (y - shift) / scale
        self.scale = float(self.context.label_scale)
        self.steps = 0
        self.generator = torch.Generator().manual_seed(int(self.context.seed) + 7919)

    # --- the meta set ------------------------------------------------------------------
    def prepare_training_data(self, x, y):
        x, y = super().prepare_training_data(x, y)
        bins = self.context.label_bins
        if bins is None:
            self._pool = (x, y)
        else:
            x, y, self.meta_x, self.meta_y = split_meta_set(x, y, bins, self.options.meta_per_bin,
                                                            seed=int(self.context.seed))
            self.meta_held_out = True
        return x, y

    def _draw_from_training(self, x) -> None:
        """Fallback meta set: balanced indices of the training set itself (not held out)."""
        warnings.warn("meta-irda: the run gave no label bins before training (context.label_bins), so the meta "
                      "set is drawn from the training set and is NOT held out of it", stacklevel=3)
        idx = balanced_meta_indices(self.bins.index(self.train_targets, clamp=True), self.bins.num_bins,
                                    self.options.meta_per_bin, seed=int(self.context.seed))
        self.meta_x = x[idx]
        self.meta_y = self.train_targets[idx].double() * self.scale + self.label_mean

    def pretrain(self, model, head, train_loader, device) -> None:
        super().pretrain(model, head, train_loader, device)
        if self.meta_x is not None:
            return
        if self._pool is not None:
            self._draw_from_training(self._pool[0])
            return
        dataset = train_loader.dataset
        if hasattr(dataset, "tensors"):
            self._draw_from_training(dataset.tensors[0])
        elif len(dataset[0]) == 2:
            self._draw_from_training(_LazyRows(dataset))
        else:
            raise ValueError(f"meta-irda draws its meta set from (input, target) pairs; the training set gives "
                             f"items of {len(dataset[0])} parts (dense targets such as depth maps are not supported)")

    # --- lifecycle -------------------------------------------------------------------
    def setup(self, model, head, feature_dim, bins, train_targets, device) -> None:
        super().setup(model, head, feature_dim, bins, train_targets, device)
        self.model = model
        self.train_targets = train_targets.detach().cpu()
        counts = bins.counts(self.train_targets, clamp=True)
        self.inputs = BinInputs(counts, device=self.device)
        self.meta_net = MetaNet().to(self.device)
        self.meta_optimizer = torch.optim.Adam(self.meta_net.parameters(), lr=self.options.meta_lr)
        centers = bins.centers * self.scale + self.label_mean  # label units for the record
        self.gate_history = GateHistory(centers.tolist(), counts.tolist())

    def gates(self):
        """The current per-bin gates (detached), from the current per-bin inputs."""
        with torch.no_grad():
            return self.meta_net(self.inputs.inputs(self.device))

    # --- per step --------------------------------------------------------------------
    def loss(self, features, targets, head) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.steps += 1
            sample = self._subsample(targets.shape[0], 4 * self.options.meta_batch_size)
            bin_index = self.bins.index(targets.detach()[sample], clamp=True)
            with torch.no_grad():  # the meta inputs read the current predictions of the sampled rows
                pred = head(features.detach()[sample]).squeeze(-1)
            self.inputs.observe(pred, targets[sample], bin_index, self.criterion)
            if self.meta_y is None:
                if self._pool is None:  # a resumed run that skipped pretrain()
                    raise RuntimeError("meta-irda: no meta set; the driver must hold it out before training "
                                       "(see MetaIRDA.prepare_training_data)")
                self._draw_from_training(self._pool[0])
            if self.meta_y.numel() and self.steps % self.options.meta_interval == 0:
                self.meta_step(features.detach(), targets.detach(), head)
        return self.criterion(features, targets, head, **self.gates())

    def _subsample(self, n: int, cap: int) -> torch.Tensor:
        if n <= cap:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)[:cap]

    def meta_step(self, features: torch.Tensor, targets: torch.Tensor, head) -> torch.Tensor:
        """One look-ahead meta update of the meta-network; returns the meta loss (detached)."""
        size = self.options.meta_batch_size
        keep = self._subsample(targets.shape[0], size).to(targets.device)
        pick = torch.randint(self.meta_y.numel(), (min(size, self.meta_y.numel()),), generator=self.generator)
        x_meta = self.meta_x[pick].to(self.device)
        y_meta = ((self.meta_y[pick].double() - self.label_mean) / self.scale).float().to(self.device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            z_meta = self.model(x_meta)
        self.model.train(was_training)
        step_lr = self.options.meta_step_lr
        step_lr = float(self.context.lr if step_lr is None else step_lr)
        meta_loss = meta_objective(self.criterion, self.meta_net, self.inputs.inputs(self.device), features[keep],
                                   targets[keep], head.weight, head.bias, z_meta, y_meta, step_lr)
        self.meta_optimizer.zero_grad(set_to_none=True)
        meta_loss.backward()
        self.meta_optimizer.step()
        return meta_loss.detach()

    def end_epoch(self, epoch: int, num_epochs: int) -> None:
        super().end_epoch(epoch, num_epochs)
        self.gate_history.record(epoch + 1, self.gates())
        out = self.context.out_dir
        if out is None:  # built outside the driver: nowhere to write
            return
        os.makedirs(out, exist_ok=True)
        self.gate_history.write_json(os.path.join(out, GATES_JSON))
        if epoch + 1 == num_epochs and self.context.plot:
            self.gate_history.plot(os.path.join(out, VB_PLOT), title=f"meta-irda: learned v_b "
                                   f"({self.context.dataset or 'data'}, seed {self.context.seed})")

    # --- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(meta_net=self.meta_net.state_dict(), meta_optimizer=self.meta_optimizer.state_dict(),
                     inputs=self.inputs.state_dict(), gate_history=self.gate_history.to_dict(), steps=self.steps,
                     generator=self.generator.get_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.meta_net.load_state_dict(state["meta_net"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.inputs.load_state_dict(state["inputs"])
        self.gate_history.load(state["gate_history"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])


class _LazyRows:
    """``rows[idx]`` of a map-style data set of ``(input, target)`` pairs: the stacked inputs."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, idx):
        return torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in idx])
