"""NYUD2-DIR on a tiny fixture in the DIR repository's format: header-less rgb,depth CSVs,
8-bit training / 16-bit test depth PNGs, test_balanced_mask.npy; one training epoch."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402

from irda_ext.train.datasets import load_dataset  # noqa: E402
from irda_ext.train.datasets.nyud2 import load_depth_png  # noqa: E402
from irda_ext.train import build_parser, main, run  # noqa: E402


def make_nyud2(root, n_train=6, n_test=2):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "nyu2_train", "room_0001"), exist_ok=True)
    os.makedirs(os.path.join(root, "nyu2_test"), exist_ok=True)
    lines = []
    for i in range(n_train):
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        depth8 = rng.integers(18, 255, (48, 64), dtype=np.uint8)  # 0.7 .. 10 m at /255*10
        Image.fromarray(rgb).save(os.path.join(root, "nyu2_train", "room_0001", f"{i}.jpg"))
        Image.fromarray(depth8).save(os.path.join(root, "nyu2_train", "room_0001", f"{i}.png"))
        lines.append(f"data/nyu2_train/room_0001/{i}.jpg,data/nyu2_train/room_0001/{i}.png")
    (open(os.path.join(root, "nyu2_train.csv"), "w")).write("\n".join(lines) + "\n")
    lines = []
    for i in range(n_test):
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        depth16 = rng.integers(700, 9000, (48, 64)).astype(np.uint16)  # millimetres
        Image.fromarray(rgb).save(os.path.join(root, "nyu2_test", f"{i:05d}_colors.png"))
        Image.fromarray(depth16).save(os.path.join(root, "nyu2_test", f"{i:05d}_depth.png"))
        lines.append(f"data/nyu2_test/{i:05d}_colors.png,data/nyu2_test/{i:05d}_depth.png")
    (open(os.path.join(root, "nyu2_test.csv"), "w")).write("\n".join(lines) + "\n")
    mask = np.zeros((n_test, 228, 304), dtype=bool)
    mask[:, ::7, ::5] = True
    np.save(os.path.join(root, "test_balanced_mask.npy"), mask)
    return mask


def test_depth_png_units(tmp_path):
    Image.fromarray(np.array([[255, 51]], dtype=np.uint8)).save(tmp_path / "train.png")
    Image.fromarray(np.array([[1500, 700]], dtype=np.uint16)).save(tmp_path / "test.png")
    assert np.allclose(load_depth_png(str(tmp_path / "train.png")), [[10.0, 2.0]])
    assert np.allclose(load_depth_png(str(tmp_path / "test.png")), [[1.5, 0.7]])


def test_loader_reads_the_dir_layout(tmp_path):
    mask = make_nyud2(str(tmp_path))
    data = load_dataset("nyud2", data_dir=str(tmp_path), stat_images=10)
    assert (len(data.train), len(data.val), len(data.test)) == (5, 1, 2)
    assert data.bins.width == pytest.approx(0.1) and data.bins.num_bins == 100
    image, depth, valid = data.test[0]
    assert image.shape == (3, 228, 304) and depth.shape == (228, 304)
    assert valid.sum().item() == mask[0].sum()  # the balanced mask selects the test pixels
    assert 0.7 <= depth[valid].min().item() and depth[valid].max().item() <= 9.0
    assert data.many > data.few


def test_loader_errors_name_the_file(tmp_path):
    make_nyud2(str(tmp_path))
    np.save(tmp_path / "test_balanced_mask.npy", np.ones((2, 10, 10), dtype=bool))
    with pytest.raises(ValueError, match=r"test_balanced_mask\.npy.*\(2, 228, 304\)"):
        load_dataset("nyud2", data_dir=str(tmp_path))
    os.remove(tmp_path / "nyu2_test.csv")
    with pytest.raises(FileNotFoundError, match=r"nyu2_test\.csv.*rgb_path,depth_path"):
        load_dataset("nyud2", data_dir=str(tmp_path))


def test_nyud2_trains_one_epoch_with_irda_and_reports_delta1(tmp_path):
    make_nyud2(str(tmp_path))
    out = tmp_path / "run"
    main(["--dataset", "nyud2", "--data-dir", str(tmp_path), "--backbone", "resnet18-depth", "--method", "irda",
          "--clusters", "2", "--epochs", "1", "--batch-size", "3", "--out", str(out), "--no-progress", "--no-plot",
          "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    test = results["test"]["all"]
    assert test["count"] == int(np.load(tmp_path / "test_balanced_mask.npy").sum())
    assert 0.0 <= test["delta1"] <= 1.0 and test["rmse"] > 0


@pytest.mark.parametrize("method", ["meta-irda", "supcr"])
def test_methods_needing_one_target_per_input_refuse_depth(tmp_path, method):
    make_nyud2(str(tmp_path))
    with pytest.raises(ValueError, match="one target per input"):
        run(build_parser().parse_args(["--dataset", "nyud2", "--data-dir", str(tmp_path), "--method", method,
                                       "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]))
