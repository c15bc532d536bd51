"""Small data sets shared by the examples: scikit-learn's digits (the
demo's: shipped in the scikit-learn wheel, no download) and random images
for smoke runs."""

from __future__ import annotations

import numpy as np

from keras_sam.demo.noisy_digits import load_digits

__all__ = ["load_digits", "random_images"]


def random_images(
    n: int,
    image_size: int = 8,
    channels: int = 1,
    num_classes: int = 10,
    seed: int = 0,
    test_fraction: float = 0.2,
):
    """Uniform random images and labels (nothing to learn: for smoke runs).

    Args:
        n: the number of images, train and test together.
        image_size: their height and width. Defaults to `8`.
        channels: their channels. Defaults to `1`.
        num_classes: labels are drawn from `[0, num_classes)`. Defaults to
            `10`.
        seed: the NumPy seed. Defaults to `0`.
        test_fraction: the share held out for testing. Defaults to `0.2`.

    Returns:
        `((x_train, y_train), (x_test, y_test))` as `load_digits` returns
        them, with images of shape `(n, image_size, image_size, channels)`.
    """
    rng = np.random.default_rng(seed)
    x = rng.random((n, image_size, image_size, channels), dtype="float32")
    y = rng.integers(0, num_classes, n).astype("int32")
    split = int(round((1.0 - test_fraction) * n))
    return (x[:split], y[:split]), (x[split:], y[split:])
