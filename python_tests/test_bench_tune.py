"""bench/tune.py end to end on a tiny budget: the search reads validation only, the chosen
configurations run on test through bench/dir_table.py, the report and the README paragraph
are written from the results, and a second invocation reuses every finished run."""
import json

from testing import load_bench


def load_tune():
    return load_bench("tune")


def test_configurations_start_with_the_defaults_and_are_reproducible():
    tune = load_tune()
    first = tune.configurations("irda", 4)
    assert first[0] == (0, tune.SEARCHED_DEFAULTS["irda"]) and len(first) == 4
    assert first == tune.configurations("irda", 4)
    assert tune.configurations("vanilla", 6) == [(0, {})]  # nothing to tune: its whole grid
    assert tune.configurations("lds", 6)[0] == (0, {})
    assert len({json.dumps(c, sort_keys=True) for _, c in first}) == 4


def test_a_draw_that_repeats_the_defaults_is_skipped_and_the_others_keep_their_folders():
    tune = load_tune()
    from irda_ext.train import build_parser

    defaults = vars(build_parser().parse_args(["--method", "lds"]))
    repeat = {"--lds-sigma": defaults["lds_sigma"], "--lds-ks": defaults["lds_ks"]}
    shuffled = [c for c in tune.grid(tune.SPACES["lds"]) if c]
    tune.random.Random("lds").shuffle(shuffled)
    at = shuffled.index(repeat) + 1  # its place in the seeded shuffle (0 is the defaults)
    assert at < len(shuffled)  # a draw follows it
    chosen = tune.configurations("lds", at + 1)
    assert len(chosen) == at + 1 and repeat not in [c for _, c in chosen]
    assert [i for i, _ in chosen] == list(range(at)) + [at + 1]
    assert all(c == shuffled[i - 1] for i, c in chosen[1:])
    # A noise sigma given as the default share of the scale is the defaults too.
    assert {"{sigma}": 0.25} not in [c for _, c in tune.configurations("bmc", 6)[1:]]
    assert len(tune.configurations("bmc", 6)) == 3  # the defaults and the two other shares


def test_a_finished_run_filed_under_another_configuration_is_refused(tmp_path):
    tune = load_tune()
    import pytest

    path = tmp_path / "results.json"
    argv = ["--dataset", "abalone", "--seed", "0", "--epochs", "1", "--method", "lds", "--lds-sigma", "3.0"]
    stored = {"method": "lds", "dataset": "abalone", "epochs": 1, "seed": 0, "lds_sigma": 1.0, "out": "elsewhere"}
    path.write_text(json.dumps({"config": stored}))
    with pytest.raises(SystemExit, match="stored lds_sigma=1.0"):
        tune.dir_table.check_same_run(str(path), argv)
    stored["lds_sigma"] = 3.0  # the same run, written from another tree: accepted
    path.write_text(json.dumps({"config": stored}))
    tune.dir_table.check_same_run(str(path), argv + ["--out", "here", "--threads", "2"])
    stored["lds_ks"] = 9  # an option left at its default is not compared (defaults may change)
    path.write_text(json.dumps({"config": stored}))
    tune.dir_table.check_same_run(str(path), argv)


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
    assert text.startswith("intro\n") and text.endswith("tail\n") and "\nold\n" not in text
    assert max(len(line) for line in text.splitlines()) <= 100  # wrapped like the rest of the README
    text = " ".join(text.split())
    assert "**abalone**: IRDA all MAE" in text and "IRDA's configuration with the best validation MAE" in text
    assert "better than vanilla (" in text or "worse than vanilla (" in text
    assert "The paper's claim that IRDA beats every baseline holds here on" in text
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("results.json")}
    assert tune.main(argv) == 0  # everything finished: nothing retrained
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("results.json")} == mtimes
