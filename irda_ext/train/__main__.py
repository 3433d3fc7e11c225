"""``python -m irda_ext.train``: the same program as ``irda-train``."""
import sys

from .cli import main

sys.exit(main())
