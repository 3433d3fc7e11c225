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
    assert crit.epochs_done == 20
    mae = (head(backbone(x)).squeeze(1) - y).abs().mean()
    trivial = (y - y.median()).abs().mean()  # predicting the median
    assert mae < 0.8 * trivial, (mae, trivial)


def test_readme_method_example_trains(tmp_path):
    """The README's own-method example registers, gets its flag, and trains through irda-train."""
    import json

    from irda_ext.train import main
    from irda_ext.train.methods import METHODS

    text = open(README).read()
    block = re.search(r"<!-- readme-method-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README lost its method example"
    exec(compile(block.group(1), "README.md", "exec"), {})
    try:
        main(["--method", "huber", "--huber-delta", "0.5", "--epochs", "1", "--no-progress", "--no-plot",
              "--threads", "1", "--out", str(tmp_path)])
        results = json.loads((tmp_path / "results.json").read_text())
        assert results["config"]["method"] == "huber" and results["config"]["huber_delta"] == 0.5
    finally:
        del METHODS["huber"]


def test_readme_performance_paragraph_is_generated_from_the_results():
    """No typed figure: the paragraph between the perf markers is what bench/readme_numbers.py
    writes from the committed bench/results/*.json."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import readme_numbers

    assert readme_numbers.main(["--check"]) == 0
