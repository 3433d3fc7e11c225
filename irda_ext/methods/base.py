"""The contract between the training driver (``irda_ext.train``) and a training method.

A *method* is everything that distinguishes, say, IRDA from plain MSE: its loss, the
extra state it keeps (running feature statistics, a learned noise scale), its resampling
of tabular training data, its feature calibration, its optional pre-training stage. The
driver owns the data, the backbone, the regression head, the optimiser and the schedule,
and calls the hooks below in this order::

    cls.add_arguments(parser)                       # once, when the CLI is built
    method = cls(args)                              # args: the parsed argparse.Namespace
    x, y = method.prepare_training_data(x, y)       # tabular data sets only
    method.setup(model, head, feature_dim, bins, train_targets, device)
    method.pretrain(model, head, train_loader, device)   # skipped on --resume once done
    optimiser = Adam(backbone + head params at --lr, plus method.param_groups())
    for epoch in range(epochs):
        for x, y in train_loader:
            features = model(x)                                   # [n, D]
            features = method.transform_features(features, y, epoch, training=True)
            pred = head(features).squeeze(-1)                     # [n]
            loss = method.loss(features, pred, y, head)
        method.end_epoch(epoch, epochs)
    # evaluation: features = method.transform_features(features, None, epoch, training=False)
    checkpoint["method"] = method.state_dict()

Units: ``prepare_training_data`` sees labels in label units; every later hook sees
*model units*, ``(y - shift) / scale`` with the driver's standardisation (``bins`` too, and
``args.label_scale`` holds ``scale``, so options given in label units can be converted).

For dense targets (NYUD2 depth) the driver flattens the valid pixels, so ``features`` is
``[pixels, D]`` and ``y`` is ``[pixels]`` there as well: a method never sees image shapes.

New methods subclass :class:`Method`, override only what they change, and register with
``@register_method("name", aliases=(...))`` in a module imported by
``irda_ext/methods/__init__.py``. The CLI's ``--method`` choices are the registry's keys.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

METHODS: Dict[str, Type["Method"]] = {}


def register_method(name: str, aliases: Iterable[str] = ()) -> Callable[[Type["Method"]], Type["Method"]]:
    """Class decorator adding a :class:`Method` subclass to :data:`METHODS` under
    ``name`` and each alias. Registering a taken name is an error, so two modules cannot
    silently shadow each other."""

    def decorate(cls: Type["Method"]) -> Type["Method"]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
        for key in (name, *aliases):
            if key in METHODS and METHODS[key] is not cls:
                raise ValueError(
                    f"method name {key!r} is already registered by {METHODS[key].__name__}"
                )
            METHODS[key] = cls
        cls.name = name
        return cls

    return decorate


def get_method(name: str) -> Type["Method"]:
    """The registered class for ``name`` (an alias works too)."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, got {type(name).__name__}")
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}"
        ) from None


def add_argument_once(parser: argparse._ActionsContainer, *flags: str, **kwargs) -> None:
    """``parser.add_argument`` that does nothing when the flag already exists.

    Methods share some options (``--alpha`` is IRDA's and ISDA-R's augmentation
    strength); the first method to declare a flag owns its default and help text, the
    others reuse it. Flags specific to one method should carry its prefix
    (``--focal-beta``) so that defaults never collide."""
    container = parser
    # argument groups share the option table of their parser
    existing = getattr(container, "_option_string_actions", {})
    if any(flag in existing for flag in flags):
        return
    container.add_argument(*flags, **kwargs)


class Method:
    """Base class: plain MSE on the head's predictions, no extra state.

    Subclasses override the hooks they need; every default is the identity / no-op, so
    the vanilla method is this class unchanged."""

    name: str = "base"
    #: True for methods that resample raw inputs (SMOTER, SMOGN): tabular data only.
    needs_tabular_inputs: bool = False
    #: True for methods that need one target per input (an encoder pre-training, a
    #: held-out meta set): not the dense per-pixel targets of depth data.
    needs_per_sample_targets: bool = False

    def __init__(self, args: Optional[argparse.Namespace] = None):
        self.args = args if args is not None else argparse.Namespace()
        self.bins = None
        self.device = torch.device("cpu")

    # --- CLI -------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse._ActionsContainer) -> None:
        """Declare method-specific CLI options (use :func:`add_argument_once`)."""

    def option(self, name: str, default=None):
        """An option from the parsed CLI namespace, or ``default`` when the method is
        built programmatically without it."""
        return getattr(self.args, name, default)

    # --- data ------------------------------------------------------------------------
    def prepare_training_data(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Resample the training set (tabular inputs ``x [N, F]``, targets ``y [N]``).
        Called once, before ``setup``; the returned targets define the label prior."""
        return x, y

    # --- lifecycle -------------------------------------------------------------------
    def setup(
        self,
        model: nn.Module,
        head: nn.Linear,
        feature_dim: int,
        bins,
        train_targets: torch.Tensor,
        device: torch.device,
    ) -> None:
        """Build the method's state once the backbone, the head, the label bins
        (:class:`irda_ext.Bins`) and the final training targets are known."""
        self.bins = bins
        self.device = torch.device(device)

    def pretrain(self, model: nn.Module, head: nn.Linear, train_loader, device: torch.device) -> None:
        """Optional first stage of two-stage methods (SupCR's contrastive encoder
        training). The driver records in the checkpoint that it ran and does not run it
        again on ``--resume``."""

    def param_groups(self) -> List[dict]:
        """Extra optimiser parameter groups (``{"params": [...], "lr": ...}``) for the
        method's own learnable tensors, e.g. Balanced-MSE's noise scale."""
        return []

    # --- per step --------------------------------------------------------------------
    def transform_features(
        self, features: torch.Tensor, targets: Optional[torch.Tensor], epoch: int, training: bool
    ) -> torch.Tensor:
        """Calibrate features before the head (FDS). ``targets`` is None at evaluation."""
        return features

    def loss(self, features: torch.Tensor, pred: torch.Tensor, targets: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        """Scalar training loss of one mini-batch; ``pred = head(features).squeeze(-1)``."""
        return F.mse_loss(pred, targets)

    def end_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called after the last training step of ``epoch`` (0-based)."""

    # --- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed for ``--resume`` to continue exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(
                f"method {self.name!r} keeps no state but the checkpoint holds {sorted(state)}"
            )


def add_sigma_arguments(parser: argparse._ActionsContainer) -> None:
    """The options of every method with a learned Balanced-MSE noise scale sigma (IRDA,
    Meta-IRDA, BMC/GAI/BNI, ISDA-R/RISDA-R), registered once whichever comes first."""
    add_argument_once(parser, "--noise-sigma", type=float, default=None,
                      help="initial noise scale sigma in label units (default: a quarter of the label scale, "
                           "about std / 4, for irda and meta-irda; one bin width for bmc, gai, bni, isda-r, "
                           "risda-r)")
    add_argument_once(parser, "--fixed-sigma", action="store_true", help="keep sigma fixed instead of learning it")
    add_argument_once(parser, "--sigma-lr", type=float, default=1e-2,
                      help="learning rate of the learned noise scale (default 1e-2, as Balanced-MSE)")
    add_argument_once(parser, "--no-ramp", action="store_true",
                      help="use alpha and beta from the first epoch instead of ramping them from 0")
