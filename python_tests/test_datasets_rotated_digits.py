"""Rotated digits: real scikit-learn digit images, long-tailed synthetic angle labels."""
import numpy as np
import pytest
import torch
from scipy.ndimage import rotate

from irda_ext.train.datasets.rotated_digits import load_rotated_digits, long_tailed_angles, rotated_digit_images


def test_angles_are_long_tailed_and_in_range():
    theta = long_tailed_angles(20000, np.random.default_rng(0))
    assert theta.min() >= 0 and theta.max() < 90
    hist = np.histogram(theta, bins=9, range=(0, 90))[0]
    assert all(hist[i] > hist[i + 1] for i in range(8))  # monotone decreasing
    assert hist[0] > 50 * hist[-1]


def test_images_are_the_rotated_digits():
    from sklearn.datasets import load_digits

    images, angles = rotated_digit_images(copies=1, data_seed=0)
    assert images.shape == (1797, 1, 12, 12) and angles.shape == (1797,)
    first = np.pad(load_digits().images[0] / 16.0, 2)
    expected = np.clip(rotate(first, angles[0], reshape=False, order=1), 0, 1)
    assert np.allclose(images[0, 0], expected, atol=1e-6)


def test_split_is_balanced_and_labelled_synthetic():
    data = load_rotated_digits(seed=0, copies=1)
    assert "synthetic label" in data.note
    y = data.test.tensors[1].double()
    assert torch.bincount(data.bins.index(y)).max().item() <= 15
    with pytest.raises(ValueError, match="copies"):
        load_rotated_digits(copies=0)
