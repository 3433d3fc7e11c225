"""AgeDB-DIR / IMDB-WIKI-DIR and SkyFinder loaders on tiny fixtures in their real on-disk
formats (JPEG files and the CSV layout of the DIR repository), plus one training epoch."""
import csv
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402

from irda_ext.train.datasets import load_dataset  # noqa: E402
from irda_ext.train import main  # noqa: E402


def write_image_csv(root, csv_name, label_column, rows, header_order):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, csv_name), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header_order)
        writer.writeheader()
        for i, (label, split) in enumerate(rows):
            rel = f"images/{i:03d}.jpg"
            pixels = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, rel), quality=90)
            writer.writerow({label_column: label, "path": rel, "split": split})


def face_rows():
    ages = [20, 21, 21, 22, 22, 22, 30, 30, 45, 60, 61, 70]
    return [(a, "train") for a in ages] + [(25, "val"), (40, "val"), (25, "test"), (61, "test"), (70, "test")]


@pytest.mark.parametrize("name,csv_name", [("agedb", "agedb.csv"), ("imdb-wiki", "imdb_wiki.csv")])
def test_face_loader_reads_the_dir_layout(tmp_path, name, csv_name):
    write_image_csv(str(tmp_path), csv_name, "age", face_rows(), ["age", "path", "split"])
    data = load_dataset(name, data_dir=str(tmp_path), image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 2, 3)
    # integer ages: one bin per year from 0, centred on the ages (SPEC 1)
    assert data.bins.width == 1.0 and data.bins.low == -0.5 and data.bins.num_bins == 71
    assert data.bins.centers[61] == 61.0
    assert (data.many, data.few) == (100, 20)
    image, age = data.test[1]
    assert image.shape == (3, 32, 32) and age.item() == 61.0
    assert -1.0 <= image.min() and image.max() <= 1.0


def test_face_loader_errors_name_file_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"agedb\.csv.*age,path,split"):
        load_dataset("agedb", data_dir=str(tmp_path))
    (tmp_path / "agedb.csv").write_text("age,file,split\n3,a.jpg,train\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['path'\]"):
        load_dataset("agedb", data_dir=str(tmp_path))
    (tmp_path / "agedb.csv").write_text("age,path,split\n3,a.jpg,train\n4,b.jpg,val\n5,c.jpg,test\n")
    with pytest.raises(FileNotFoundError, match=r"a\.jpg.*--data-dir"):
        load_dataset("agedb", data_dir=str(tmp_path))


def test_agedb_trains_one_epoch(tmp_path):
    write_image_csv(str(tmp_path), "agedb.csv", "age", face_rows(), ["age", "path", "split"])
    out = tmp_path / "run"
    main(["--dataset", "agedb", "--data-dir", str(tmp_path), "--image-size", "32", "--backbone", "resnet18",
          "--method", "irda", "--clusters", "2", "--epochs", "1", "--batch-size", "6", "--out", str(out),
          "--no-progress", "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["all"]["count"] == 3 and results["test"]["all"]["mae"] > 0
    assert results["dataset"]["shot_thresholds"] == {"many": 100, "few": 20}


def test_skyfinder_reads_its_layout_and_trains(tmp_path):
    temps = [-3.5, 0.2, 1.0, 5.5, 5.9, 12.0, 18.3, 18.9, 25.0, 31.2]
    rows = [(t, "train") for t in temps] + [(4.0, "val"), (20.0, "val"), (-1.0, "test"), (30.0, "test")]
    write_image_csv(str(tmp_path), "skyfinder.csv", "temperature", rows, ["path", "temperature", "split"])
    data = load_dataset("skyfinder", data_dir=str(tmp_path), image_size=32)
    assert data.bins.width == 1.0 and data.bins.low == -4.0
    assert data.bins.index(torch.tensor([31.2], dtype=torch.float64)).item() == data.bins.num_bins - 1
    out = tmp_path / "run"
    main(["--dataset", "skyfinder", "--data-dir", str(tmp_path), "--image-size", "32", "--backbone", "resnet18",
          "--method", "vanilla", "--epochs", "1", "--batch-size", "5", "--out", str(out), "--no-progress",
          "--no-plot", "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["all"]["count"] == 2


def test_skyfinder_bad_split_is_an_error(tmp_path):
    write_image_csv(str(tmp_path), "skyfinder.csv", "temperature", [(1.0, "train"), (2.0, "holdout")],
                    ["path", "temperature", "split"])
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("skyfinder", data_dir=str(tmp_path))
