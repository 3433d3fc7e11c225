"""TUAB on a tiny fixture of preprocessed EEG windows (.npy per recording + tuab.csv)."""
import json
import os

import numpy as np
import pytest

from irda_ext.train.datasets import load_dataset
from irda_ext.train import main


def make_tuab(root, channels=4, samples=200):
    rng = np.random.default_rng(0)
    ages = [30, 30, 30, 31, 31, 31, 55, 55, 55, 70, 70, 70]
    lines = ["recording,age,split"]
    for i, age in enumerate(ages):
        np.save(os.path.join(root, f"rec{i:02d}.npy"), rng.normal(size=(3, channels, samples)).astype(np.float32))
        lines.append(f"rec{i:02d},{age},train")
    for i, age in enumerate([30, 60]):
        np.save(os.path.join(root, f"test{i}.npy"), rng.normal(size=(channels, samples)).astype(np.float32))
        lines.append(f"test{i},{age},test")
    (open(os.path.join(root, "tuab.csv"), "w")).write("\n".join(lines) + "\n")


def test_loader_windows_and_recording_level_validation(tmp_path):
    make_tuab(str(tmp_path))
    data = load_dataset("tuab", data_dir=str(tmp_path), seed=0)
    rec = data.extra["recordings"]
    # one recording per 3-recording age bin is held out whole for validation
    assert rec == {"train": 8, "val": 4, "test": 2}
    assert (len(data.train), len(data.val), len(data.test)) == (24, 12, 2)
    window, age = data.train[0]
    assert window.shape == (4, 200) and data.input_dim == 4
    assert age.item() in (30.0, 31.0, 55.0, 70.0)


def test_loader_errors(tmp_path):
    make_tuab(str(tmp_path))
    os.remove(tmp_path / "rec03.npy")
    with pytest.raises(FileNotFoundError, match=r"rec03\.npy.*recording,age,split"):
        load_dataset("tuab", data_dir=str(tmp_path))
    np.save(tmp_path / "rec03.npy", np.zeros((2, 5, 200), dtype=np.float32))
    with pytest.raises(ValueError, match="same channels"):
        load_dataset("tuab", data_dir=str(tmp_path))


def test_tuab_trains_one_epoch(tmp_path):
    make_tuab(str(tmp_path))
    out = tmp_path / "run"
    main(["--dataset", "tuab", "--data-dir", str(tmp_path), "--method", "irda", "--clusters", "2", "--epochs", "1",
          "--batch-size", "8", "--out", str(out), "--no-progress", "--no-plot", "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    assert results["backbone"] == "resnet1d" and results["test"]["all"]["count"] == 2
