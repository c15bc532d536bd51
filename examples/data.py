"""Small data sets shared by the examples: scikit-learn's digits (shipped
in the scikit-learn wheel, no download) and random images for smoke runs.

`load_digits` has the signature and output of `keras_sam.demo.load_digits`
(being rewritten at the time of writing); the two will be merged.
"""

from __future__ import annotations

import numpy as np


def load_digits(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's 1797 handwritten digits, shuffled and split.

    Args:
        seed: the seed of the shuffle. Defaults to `0`.
        test_fraction: the share of the images held out for testing.
            Defaults to `0.2`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: images of shape
        `(n, 8, 8, 1)`, float32 in [0, 1], and int32 labels in [0, 10).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise SystemExit(
            "The digits come with scikit-learn: pip install scikit-learn"
        ) from e
    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = y.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(round((1.0 - test_fraction) * len(x)))
    return (x[:split], y[:split]), (x[split:], y[split:])


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
