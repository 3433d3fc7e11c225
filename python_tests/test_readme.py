"""The README's IRDALoss example runs as written."""
import os
import re

import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_example_runs():
    text = open(README).read()
    block = re.search(r"<!-- readme-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README lost its example block"
    torch.manual_seed(0)
    scope = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    crit, head, backbone, x, y = (scope[k] for k in ("criterion", "head", "backbone", "x", "y"))
    assert crit.epochs_done == 10
    mae = (head(backbone(x)).squeeze(1) - y).abs().mean()
    trivial = (y - y.median()).abs().mean()  # predicting the median
    assert mae < 0.8 * trivial, (mae, trivial)
