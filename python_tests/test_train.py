"""The irda-train driver: outputs, exact resume, method registry, CSV data, bad input."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from irda_ext import Bins
from irda_ext.methods import METHODS, Method, get_method, register_method
from irda_ext.train import build_parser, main, model_units_bins, run, target_standardisation

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
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["epoch"] == 1
    main(common + ["--out", str(resumed), "--resume"])
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert [h["val_mae"] for h in a["history"]] == [h["val_mae"] for h in b["history"]]
    sa = torch.load(straight / "checkpoint.pt", weights_only=False)
    sb = torch.load(resumed / "checkpoint.pt", weights_only=False)
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
    @register_method("test-l1-scaled")
    class ScaledL1(Method):
        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--l1-scale", type=float, default=2.0)

        def loss(self, features, pred, targets, head):
            return self.option("l1_scale") * (pred - targets).abs().mean()

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
    from irda_ext.methods.irda import DEFAULT_SIGMA_MODEL_UNITS

    bins = Bins(-1.0, 1.0, 0.125)
    head, targets = torch.nn.Linear(4, 1), torch.linspace(-0.9, 0.9, 50)
    for given, expected in ((None, DEFAULT_SIGMA_MODEL_UNITS), (8.0, 0.5)):
        args = build_parser().parse_args(["--method", "irda", "--clusters", "2"]
                                         + ([] if given is None else ["--noise-sigma", str(given)]))
        args.label_scale = 16.0  # the driver's standardisation scale
        method = get_method("irda")(args)
        method.setup(torch.nn.Identity(), head, 4, bins, targets, "cpu")
        assert method.criterion.noise.sigma.item() == pytest.approx(expected)
        assert [g["lr"] for g in method.param_groups()] == [1e-2]
