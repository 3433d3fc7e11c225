"""``irda-train``, the training harness around the library: the command line (:mod:`.cli`),
the driver loop (:mod:`.driver`, :mod:`.loop`), launching under ``torchrun``
(:mod:`.launch`), checkpoints (:mod:`.checkpoint`), reporting (:mod:`.report`), the
``--method`` adapters (:mod:`.methods`), the data sets (:mod:`.datasets`) and the backbones
(:mod:`.models`). The library (``irda_ext`` outside this package) never imports it.

Run ``irda-train --help`` (or ``python -m irda_ext.train --help``). With no arguments it
trains IRDA on the bundled UCI Abalone data and prints the test table.
"""
from .cli import build_parser, main
from .driver import run
from .units import model_units_bins, target_standardisation

__all__ = ["build_parser", "main", "model_units_bins", "run", "target_standardisation"]
