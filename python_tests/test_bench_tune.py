"""bench/tune.py end to end on a tiny budget: the search reads validation only, the chosen
configurations run on test through bench/dir_table.py, the report and the README paragraph
are written from the results, and a second invocation reuses every finished run."""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tune():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("tune", os.path.join(ROOT, "bench", "tune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configurations_start_with_the_defaults_and_are_reproducible():
    tune = load_tune()
    first = tune.configurations("irda", 4)
    assert first[0] == {} and len(first) == 4 and first == tune.configurations("irda", 4)
    assert tune.configurations("vanilla", 6) == [{}]  # nothing to tune: its whole grid
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 4


def test_tiny_run_never_reads_test_before_choosing(tmp_path, monkeypatch):
    tune = load_tune()
    monkeypatch.setitem(tune.SPACES, "irda", {"--alpha": (0.25, 1.0)})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin (bench/tune.py writes this paragraph) -->\nold\n"
                      "<!-- results:end -->\ntail\n")
    argv = ["--datasets", "abalone", "--methods", "vanilla", "irda", "--budget", "2", "--seeds", "0", "--epochs",
            "1", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--readme", str(readme)]
    assert tune.main(argv) == 0
    search = tmp_path / "runs" / "search" / "abalone"
    for results in search.glob("*/*/results.json"):
        assert "test" not in json.loads(results.read_text())
    assert len(list(search.glob("*/*/results.json"))) == 3  # vanilla 1 + irda 2
    report = (tmp_path / "results" / "tuning" / "abalone.md").read_text()
    assert "val MAE all" in report and report.count("**yes**") == 2 and "test" not in report.split("\n", 3)[3]
    table = (tmp_path / "results" / "dir_table_abalone.md").read_text()
    assert "| irda (`--method irda" in table and "| vanilla (`--method vanilla" in table
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text
    assert "**abalone**: IRDA all MAE" in text and "IRDA's configuration with the best validation MAE" in text
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("results.json")}
    assert tune.main(argv) == 0  # everything finished: nothing retrained
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("results.json")} == mtimes
