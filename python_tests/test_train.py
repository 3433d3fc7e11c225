"""The irda-train driver: outputs, exact resume, method registry, CSV data, bad input."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from irda_ext import Bins
from dataclasses import dataclass

from irda_ext.train.methods import METHODS, Method, RunContext, get_method, option, options_from_args, register_method
from irda_ext.train import build_parser, main, model_units_bins, run, target_standardisation
from irda_ext.train.checkpoint import read_checked

FAST = ["--no-progress", "--threads", "1", "--batch-size", "512"]


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--dataset", "rotated-digits", "--method", "irda", "--resume", "--mode", "--clusters",
                 "results.json"):
        assert word in text


def test_abalone_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    main(["--method", "vanilla", "--epochs", "2", "--out", str(out)] + FAST)
    printed = capsys.readouterr().out
    assert "Many" in printed and "Med." in printed and "VANILLA" in printed
    results = json.loads((out / "results.json").read_text())
    for split in ("val", "test"):
        for group in ("all", "many", "medium", "few"):
            assert set(results[split][group]) == {"mae", "mse", "rmse", "gm", "count"}
    assert results["test"]["all"]["count"] == sum(results["test"][g]["count"] for g in ("many", "medium", "few"))
    assert results["config"]["method"] == "vanilla" and results["timing"]["train_seconds"] > 0
    assert results["dataset"]["shot_thresholds"]["many"] > results["dataset"]["shot_thresholds"]["few"]
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "per_bin_mae.png", "results.json", "table.txt"]
    assert (out / "per_bin_mae.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_exactly(tmp_path):
    common = ["--method", "irda", "--epochs", "3", "--no-plot"] + FAST
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(common + ["--out", str(straight)])
    main(common + ["--out", str(resumed), "--stop-after", "1"])
    assert not (resumed / "results.json").exists()
    assert read_checked(str(resumed / "checkpoint.pt"), "cpu")["epoch"] == 1
    main(common + ["--out", str(resumed), "--resume"])
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert [h["val_mae"] for h in a["history"]] == [h["val_mae"] for h in b["history"]]
    sa = read_checked(str(straight / "checkpoint.pt"), "cpu")
    sb = read_checked(str(resumed / "checkpoint.pt"), "cpu")
    for key, value in sa["method"]["criterion"].items():
        if torch.is_tensor(value):
            assert torch.equal(value, sb["method"]["criterion"][key]), key


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    main(["--method", "vanilla", "--epochs", "2", "--stop-after", "1", "--out", str(out)] + FAST)
    with pytest.raises(SystemExit):
        main(["--method", "vanilla", "--epochs", "2", "--seed", "5", "--resume", "--out", str(out)] + FAST)
    assert "--seed 0" in capsys.readouterr().err


def test_bikeshare_integer_labels_on_bin_edges_train_with_irda(tmp_path):
    # bikeshare's bin edges (1 + 6.5 k) fall on integer counts: the model-unit bins must agree
    main(["--dataset", "bikeshare", "--method", "irda", "--epochs", "1", "--no-plot", "--out", str(tmp_path)] + FAST)
    assert json.loads((tmp_path / "results.json").read_text())["test"]["all"]["count"] == 1059


def test_target_standardisation_preserves_bins():
    bins = Bins(0.0, 102.0, 1.0)
    ages = np.arange(0, 102, dtype=np.float64).repeat(3)
    shift, scale = target_standardisation(ages, bins)
    assert np.log2(scale) == round(np.log2(scale)) and shift % 1.0 == 0.0
    mapped = model_units_bins(bins, shift, scale)
    y32 = torch.tensor(ages, dtype=torch.float32)
    assert torch.equal(mapped.index((y32 - shift) / scale), bins.index(torch.tensor(ages)))


def test_csv_dataset_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "houses.csv"
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["area", "district", "price"])
        for _ in range(400):
            area, district = rng.exponential(50), rng.choice(["north", "south", "east"])
            w.writerow([f"{area:.2f}", district, f"{3 * area + (20 if district == 'north' else 0):.1f}"])
    out = tmp_path / "run"
    main(["--dataset", "csv", "--csv", str(path), "--target", "price", "--num-bins", "20", "--method", "vanilla",
          "--epochs", "2", "--out", str(out), "--no-plot"] + FAST)
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["bins"]["num_bins"] == 20 and results["test"]["all"]["count"] > 0


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--dataset", "csv", "--out", str(tmp_path)])
    assert "--csv PATH and --target COLUMN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--epochs", "0", "--out", str(tmp_path)])
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "agedb", "--out", str(tmp_path)])
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown method"):
        get_method("no-such-method")


def test_registered_methods_become_cli_choices(tmp_path):
    @dataclass(frozen=True)
    class ScaledL1Options:
        l1_scale: float = option(2.0, "weight of the L1 loss")

    @register_method("test-l1-scaled")
    class ScaledL1(Method):
        Options = ScaledL1Options

        def loss(self, features, targets, head):
            return self.options.l1_scale * (head(features).squeeze(-1) - targets).abs().mean()

    try:
        args = build_parser().parse_args(["--method", "test-l1-scaled", "--l1-scale", "3", "--epochs", "1",
                                          "--out", str(tmp_path), "--no-plot"] + FAST)
        assert args.l1_scale == 3.0
        results = run(args)
        assert results["config"]["method"] == "test-l1-scaled"
        with pytest.raises(ValueError, match="already registered"):
            register_method("vanilla")(ScaledL1)
    finally:
        del METHODS["test-l1-scaled"]


def test_irda_noise_sigma_is_converted_to_model_units():
    from irda_ext.train.methods.noise_scale import DEFAULT_SIGMA_MODEL_UNITS

    bins = Bins(-1.0, 1.0, 0.125)
    head, targets = torch.nn.Linear(4, 1), torch.linspace(-0.9, 0.9, 50)
    for given, expected in ((None, DEFAULT_SIGMA_MODEL_UNITS), (8.0, 0.5)):
        args = build_parser().parse_args(["--method", "irda", "--clusters", "2"]
                                         + ([] if given is None else ["--noise-sigma", str(given)]))
        cls = get_method("irda")
        method = cls(options_from_args(cls, args), RunContext(label_scale=16.0))  # the driver's scale
        method.setup(torch.nn.Identity(), head, 4, bins, targets, "cpu")
        assert method.criterion.noise.sigma.item() == pytest.approx(expected)
        assert [g["lr"] for g in method.param_groups()] == [1e-2]


@pytest.mark.parametrize("method_name", ["irda", "meta-irda"])
def test_irda_stats_flag_reaches_the_statistics(method_name):
    bins = Bins(-1.0, 1.0, 0.125)
    head, targets = torch.nn.Linear(4, 1), torch.linspace(-0.9, 0.9, 50)
    cls = get_method(method_name)
    for flags, estimator, momentum in (([], "epoch", 0.9), (["--irda-stats", "batch"], "batch", 0.9),
                                       (["--irda-stats", "cumulative"], "cumulative", None),
                                       (["--irda-stats", "epoch", "--irda-momentum", "0.5"], "epoch", 0.5)):
        args = build_parser().parse_args(["--method", method_name, "--clusters", "1"] + flags)
        method = cls(options_from_args(cls, args), RunContext(label_scale=1.0))
        method.setup(torch.nn.Identity(), head, 4, bins, targets, "cpu")
        assert (method.criterion.stats.estimator, method.criterion.stats.momentum) == (estimator, momentum)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--method", method_name, "--irda-stats", "weekly"])


def test_method_flags_come_from_their_options():
    """Every field of every method's Options is a flag whose parsed default is the field's
    default, and options_from_args rebuilds the dataclass from the parsed arguments."""
    import dataclasses

    parser = build_parser()
    args = parser.parse_args([])
    for cls in set(METHODS.values()):
        for field in dataclasses.fields(cls.Options):
            assert getattr(args, field.name) == field.default, (cls.__name__, field.name)
        assert options_from_args(cls, args) == cls.Options()
    args = parser.parse_args(["--method", "lds", "--lds-ks", "7", "--focal-gamma", "2"])
    options = options_from_args(get_method("lds"), args)
    assert (options.lds_ks, options.focal_gamma) == (7, 2.0)


def test_one_flag_declared_two_ways_is_refused():
    import argparse

    from irda_ext.train.methods import add_method_arguments

    @dataclass(frozen=True)
    class A:
        width: int = option(1, "one help")

    @dataclass(frozen=True)
    class B:
        width: int = option(2, "another default")

    class MA(Method):
        Options = A

    class MB(Method):
        Options = B

    with pytest.raises(TypeError, match="--width is declared differently by MA and MB"):
        add_method_arguments(argparse.ArgumentParser(), [MA, MB])
    with pytest.raises(TypeError, match="takes A, got B"):
        MA(B())


def test_dataset_options_follow_the_loaders_signature(tmp_path, capsys):
    from irda_ext.train.datasets import loader_options

    assert loader_options("abalone", {"cap": 10, "num_bins": None}, seed=3) == {"cap": 10, "seed": 3}
    with pytest.raises(ValueError, match="--num-bins does not apply to --dataset abalone"):
        loader_options("abalone", {"num_bins": 50}, seed=0)
    with pytest.raises(ValueError, match="--dataset tuab needs --data-dir DIR"):
        loader_options("tuab", {}, seed=0)
    with pytest.raises(SystemExit):
        main(["--dataset", "abalone", "--data-dir", str(tmp_path), "--out", str(tmp_path)])
    assert "--data-dir does not apply to --dataset abalone" in capsys.readouterr().err


def test_old_checkpoints_are_refused_with_a_sentence(tmp_path, capsys):
    out = tmp_path / "run"
    main(["--method", "vanilla", "--epochs", "2", "--stop-after", "1", "--out", str(out)] + FAST)
    state = read_checked(str(out / "checkpoint.pt"), "cpu")
    del state["format"]  # as written before the format was recorded: a plain torch.save
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(SystemExit):
        main(["--method", "vanilla", "--epochs", "2", "--resume", "--out", str(out)] + FAST)
    assert "written by an earlier irda-train (checkpoint format 1" in capsys.readouterr().err


def test_the_head_is_applied_once_per_step(tmp_path, monkeypatch):
    """The driver hands features to the method, which applies the head itself, once: one
    call of the 1-output head per training batch (evaluation runs without gradient)."""
    calls = []
    forward = torch.nn.Linear.forward

    def counted(self, x):
        if self.out_features == 1 and torch.is_grad_enabled():
            calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counted)
    run(build_parser().parse_args(["--method", "irda", "--epochs", "1", "--out", str(tmp_path), "--no-plot"] + FAST))
    batches = -(-json.loads((tmp_path / "results.json").read_text())["dataset"]["train"] // 512)
    assert len(calls) == batches, calls
