"""The bundled tabular data (abalone, bikeshare) and the generic CSV loader."""
import csv
import gzip

import numpy as np
import pytest
import torch

from irda_ext.train.datasets.tabular import DATA_DIR, load_abalone, load_bikeshare, load_table


def test_bundled_files_are_the_documented_ones():
    with gzip.open(f"{DATA_DIR}/abalone.csv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4177 and rows[0].keys() == {"sex", "length", "diameter", "height", "whole_weight",
                                                    "shucked_weight", "viscera_weight", "shell_weight", "rings"}
    with gzip.open(f"{DATA_DIR}/bikeshare.csv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8645
    # the leaking columns are gone
    assert "casual" not in rows[0] and "registered" not in rows[0] and "bikers" in rows[0]


def test_abalone_split_and_encoding():
    data = load_abalone(seed=0)
    assert data.bins.num_bins == 29 and data.bins.width == 1.0
    assert len(data.train) + len(data.val) + len(data.test) == 4177
    x, y = data.test.tensors
    # balanced: no bin holds more than the cap in test
    assert torch.bincount(data.bins.index(y.double())).max().item() <= 15
    # sex one-hot (3 columns) + 7 standardised numeric columns
    assert data.input_dim == 10
    xtr = data.train.tensors[0].numpy()
    assert np.allclose(xtr[:, 3:].mean(0), 0, atol=1e-5) and np.allclose(xtr[:, 3:].std(0), 1, atol=1e-3)
    assert set(np.unique(xtr[:, :3])) == {0.0, 1.0}
    assert np.array_equal(data.train_targets, data.train.tensors[1].double().numpy())


def test_bikeshare_loads_with_categoricals():
    data = load_bikeshare(seed=1)
    names = data.extra["feature_names"]
    assert "hr=17" in names and "mnth=Jan" in names and "temp" in names
    assert data.bins.num_bins == 100 and data.many > data.few >= 2


def test_csv_categorical_detection_and_unseen_category(tmp_path):
    path = tmp_path / "toy.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["colour", "size", "price"])
        for i in range(300):
            w.writerow([["red", "blue"][i % 2], f"{rng.normal():.3f}", f"{rng.exponential(10):.2f}"])
    data = load_table(str(path), "price", num_bins=10, seed=0)
    assert data.extra["feature_names"] == ["colour=blue", "colour=red", "size"]
    assert data.input_dim == 3 and data.label == "price"


def test_csv_errors_name_what_was_expected(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    with pytest.raises(ValueError, match="no target column 'price'"):
        load_table(str(path), "price")
    with pytest.raises(ValueError, match="target 'b' must be a number"):
        load_table(str(path), "b")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_table(str(tmp_path / "missing.csv"), "a")
