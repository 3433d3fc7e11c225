"""The contract between the training driver (:mod:`irda_ext.train.driver`) and a training method.

A *method* is everything that distinguishes, say, IRDA from plain MSE: its loss, the
extra state it keeps (running feature statistics, a learned noise scale), its resampling
of tabular training data, its feature calibration, its optional pre-training stage. The
driver owns the data, the backbone, the regression head, the optimiser and the schedule,
and calls the hooks below in this order::

    method = cls(options, context)                  # options: cls.Options; context: RunContext
    x, y = method.prepare_training_data(x, y)       # tabular data sets only
    method.setup(model, head, feature_dim, bins, train_targets, device)
    method.pretrain(model, head, train_loader, device)   # skipped on --resume once done
    optimiser = Adam(backbone + head params at --lr, plus method.param_groups())
    for epoch in range(epochs):
        for x, y in train_loader:
            features = model(x)                                   # [n, D]
            features = method.transform_features(features, y, epoch, training=True)
            loss = method.loss(features, y, head)                 # applies the head once
        method.end_epoch(epoch, epochs)
    # evaluation: features = method.transform_features(features, None, epoch, training=False)
    checkpoint["method"] = method.state_dict()

Each method declares its settings once, as the dataclass ``Options`` whose fields are made
with :func:`option`: the CLI flags, their defaults and help text are generated from it
(:func:`add_method_arguments`), and a method built in Python takes the same dataclass.
What the driver knows and a method may need (the label scale, the number of epochs, the
output folder) comes as a :class:`RunContext`, never through the options.

Units: ``prepare_training_data`` sees labels in label units; every later hook sees *model
units*, ``(y - context.label_shift) / context.label_scale`` (``bins`` too), so options
given in label units are converted with ``context.label_scale``.

For dense targets (NYUD2 depth) the driver flattens the valid pixels, so ``features`` is
``[pixels, D]`` and ``y`` is ``[pixels]`` there as well: a method never sees image shapes.

New methods subclass :class:`Method`, override only what they change, and register with
``@register_method("name", aliases=(...))`` in a module imported by
``irda_ext/train/methods/__init__.py``. The CLI's ``--method`` choices are the registry's keys.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type

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
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__name__}.Options must be a dataclass, got {cls.Options!r}")
        for key in (name, *aliases):
            if key in METHODS and METHODS[key] is not cls:
                raise ValueError(f"method name {key!r} is already registered by {METHODS[key].__name__}")
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
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}") from None


# ----- options: declared once, CLI generated --------------------------------------------------------
def option(default: Any, help: str, *, type: Optional[Callable] = None, choices: Optional[Tuple] = None,
           metavar: Optional[str] = None):
    """A field of a method's ``Options`` dataclass and, from it, a CLI flag
    ``--field-name``. A ``bool`` defaulting to False becomes a switch (``store_true``);
    otherwise the flag parses with ``type`` (default: the type of ``default``)."""
    meta = {"help": help, "type": type, "choices": choices, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_kwargs(field: dataclasses.Field) -> dict:
    meta = field.metadata
    if "help" not in meta:
        raise TypeError(f"option {field.name!r} was not declared with option(...)")
    if field.default is False:
        return {"action": "store_true", "help": meta["help"]}
    kind = meta["type"] or (type(field.default) if field.default is not None else str)
    kwargs = {"type": kind, "default": field.default, "help": meta["help"]}
    if meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
    if meta["metavar"] is not None:
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def add_method_arguments(parser: argparse._ActionsContainer, classes: Iterable[Type["Method"]]) -> None:
    """The CLI flags of every option of ``classes``. Methods that share an option (the
    noise-scale options of the Balanced-MSE family, ISDA-R and IRDA) share one flag; two
    different declarations under one name are a programming error."""
    declared: Dict[str, Tuple[dict, str]] = {}
    for cls in classes:
        for field in dataclasses.fields(cls.Options):
            kwargs = _argparse_kwargs(field)
            if field.name in declared:
                if declared[field.name][0] != kwargs:
                    raise TypeError(f"option {flag_of(field.name)} is declared differently by "
                                    f"{declared[field.name][1]} and {cls.__name__}")
                continue
            declared[field.name] = (kwargs, cls.__name__)
            parser.add_argument(flag_of(field.name), dest=field.name, **kwargs)


def options_from_args(cls: Type["Method"], args: argparse.Namespace):
    """``cls.Options`` filled from parsed CLI arguments (fields missing there keep their default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls.Options) if hasattr(args, f.name)}
    return cls.Options(**values)


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


@dataclass(frozen=True)
class RunContext:
    """What the driver knows about the run and hands to the method. Built by hand (tests,
    your own loop), the defaults describe a run on unscaled labels that writes nothing."""

    label_scale: float = 1.0  # model units = (label - label_shift) / label_scale
    label_shift: float = 0.0
    label_bins: Any = None  # irda_ext.Bins in label units, when the method may hold data out by bin
    epochs: int = 1
    lr: float = 1e-3  # the network's learning rate
    seed: int = 0
    many_shot: Optional[int] = None  # the run's many-shot threshold, when given
    clamp_targets: bool = False  # True when the bins cover every label (only rounding steps out)
    out_dir: Optional[str] = None  # where a method may write records of its own; None: nowhere
    dataset: str = ""
    plot: bool = True


class Method:
    """Base class: plain MSE on the head's predictions, no extra state.

    Subclasses override the hooks they need; every default is the identity / no-op, so
    the vanilla method is this class unchanged."""

    name: str = "base"
    Options: type = NoOptions
    #: True for methods that resample raw inputs (SMOTER, SMOGN): tabular data only.
    needs_tabular_inputs: bool = False
    #: True for methods that need one target per input (an encoder pre-training, a
    #: held-out meta set): not the dense per-pixel targets of depth data.
    needs_per_sample_targets: bool = False

    def __init__(self, options=None, context: Optional[RunContext] = None):
        options = self.Options() if options is None else options
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}")
        if context is not None and not isinstance(context, RunContext):
            raise TypeError(f"context must be a RunContext, got {type(context).__name__}")
        for field in dataclasses.fields(options):
            value = getattr(options, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag_of(field.name)} must be a finite number, got {value}")
        self.options = options
        self.context = context if context is not None else RunContext()
        self.bins = None
        self.device = torch.device("cpu")

    # --- data ------------------------------------------------------------------------
    def prepare_training_data(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Resample the training set (tabular inputs ``x [N, F]``, targets ``y [N]``).
        Called once, before ``setup``; the returned targets define the label prior."""
        return x, y

    # --- lifecycle -------------------------------------------------------------------
    def setup(self, model: nn.Module, head: nn.Linear, feature_dim: int, bins, train_targets: torch.Tensor,
              device: torch.device) -> None:
        """Build the method's state once the backbone, the head, the label bins
        (:class:`irda_ext.Bins`, model units) and the final training targets are known."""
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
    def transform_features(self, features: torch.Tensor, targets: Optional[torch.Tensor], epoch: int,
                           training: bool) -> torch.Tensor:
        """Calibrate features before the head (FDS). ``targets`` is None at evaluation."""
        return features

    def loss(self, features: torch.Tensor, targets: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        """Scalar training loss of one mini-batch. The method applies ``head`` itself, once
        (IRDA's loss needs the head's weights, not only its predictions)."""
        return F.mse_loss(head(features).squeeze(-1), targets)

    def end_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called after the last training step of ``epoch`` (0-based)."""

    # --- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed for ``--resume`` to continue exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state but the checkpoint holds {sorted(state)}")


def check_at_least(options, **lows) -> None:
    """``ValueError`` naming the flag when an option is below its smallest valid value."""
    for name, low in lows.items():
        value = getattr(options, name)
        if value is not None and value < low:
            raise ValueError(f"{flag_of(name)} must be at least {low}, got {value}")


def check_positive(options, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise ValueError(f"{flag_of(name)} must be positive, got {value}")
