"""A ViT (patch 4) trained with SAM on CIFAR-10.

The ViT of `keras_sam.demo.models` on 32x32 colour images (64 patches of 4x4),
random horizontal flips and translations by up to 4 pixels (Keras image
preprocessing layers in a `tf.data` pipeline, which they support on every
backend), AdamW with a linear warmup and a cosine decay, and SAM with rho
0.05 (the `SAMModel` default). `main` downloads CIFAR-10 through
`keras.datasets.cifar10.load_data()` (163 MB, cached in `~/.keras/datasets`);
`train` takes arrays, so any data of that shape trains without a download.

Usage:
    python examples/cifar10_vit.py                       # SAM, 100 epochs
    python examples/cifar10_vit.py --method looksam --epochs 10 --limit 5000
    KERAS_BACKEND=jax python examples/cifar10_vit.py --method asam --rho 0.5
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import keras
import numpy as np

if __package__ in (None, ""):
    # Run as a script (`python examples/x.py`): import `keras_sam` from
    # this checkout.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_sam import PRESETS, SAMModel  # noqa: E402
from keras_sam.demo.models import vit  # noqa: E402


def prepare(images: np.ndarray, labels: np.ndarray):
    """CIFAR-10 arrays as `load_data()` returns them (uint8 images in
    [0, 255], labels of shape `(n, 1)`) to float32 images in [0, 1] and
    int32 labels of shape `(n,)`."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype("float32") / 255.0
    labels = np.asarray(labels).reshape(-1).astype("int32")
    return images.astype("float32"), labels


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augment: bool = True,
    seed: int = 0,
):
    """A `tf.data.Dataset` of shuffled training batches, with random
    horizontal flips and translations by up to 4 pixels (zero filled), the
    usual CIFAR augmentation, each image drawing its own.

    Args:
        x: images in [0, 1], `(n, size, size, 3)`.
        y: int labels, `(n,)`.
        batch_size: the batch size.
        augment: flip and translate. Defaults to `True`.
        seed: seeds the shuffle and the augmentation. Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`, one pass over `x`.
    """
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    if augment:
        shift = 4 / x.shape[1]
        flip = keras.layers.RandomFlip("horizontal", seed=seed)
        translate = keras.layers.RandomTranslation(
            shift, shift, fill_mode="constant", seed=seed
        )
        dataset = dataset.map(
            lambda images, labels: (
                translate(flip(images, training=True), training=True),
                labels,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def train(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    method: str = "sam",
    rho: float = 0.05,
    epochs: int = 100,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 5,
    dim: int = 192,
    depth: int = 6,
    heads: int = 3,
    patch_size: int = 4,
    augment: bool = True,
    seed: int = 0,
    verbose: int | str = 2,
) -> dict:
    """Trains a ViT with `SAMModel` on the given images; returns the test
    loss and accuracy.

    Args:
        x: training images, `(n, 32, 32, 3)`, uint8 in [0, 255] (as
            `keras.datasets.cifar10.load_data()` gives them) or float in
            [0, 1].
        y: training labels in [0, 10), shape `(n,)` or `(n, 1)`.
        x_test: test images, like `x`.
        y_test: test labels, like `y`.
        method: the SAM preset. Defaults to `"sam"`.
        rho: the perturbation radius. Defaults to `0.05`.
        epochs: passes over `x`. Defaults to `100`.
        batch_size: the batch size. Defaults to `128`.
        learning_rate: AdamW's peak learning rate. Defaults to `1e-3`.
        weight_decay: AdamW's decoupled weight decay. Defaults to `0.05`.
        warmup_epochs: epochs of linear warmup before the cosine decay
            (at most `epochs - 1`). Defaults to `5`.
        dim: the ViT width. Defaults to `192`.
        depth: the number of transformer blocks. Defaults to `6`.
        heads: attention heads. Defaults to `3`.
        patch_size: the patch side. Defaults to `4`.
        augment: random flips and translations. Defaults to `True`.
        seed: seeds the weights and the augmentation. Defaults to `0`.
        verbose: `fit`'s verbosity. Defaults to `2` (a line per epoch).

    Returns:
        `{"accuracy": ..., "loss": ...}` on the test images.
    """
    x, y = prepare(x, y)
    x_test, y_test = prepare(x_test, y_test)
    image_size = x.shape[1]
    keras.utils.set_random_seed(seed)
    classifier = vit(
        image_size, patch_size, 3, 10, dim=dim, depth=depth, heads=heads
    )
    steps_per_epoch = -(-len(x) // batch_size)
    warmup = min(warmup_epochs, epochs - 1) * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(epochs * steps_per_epoch - warmup, 1),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    sam = SAMModel(classifier, method=method, rho=rho)
    sam.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    sam.fit(
        batches(x, y, batch_size, augment=augment, seed=seed),
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself (this silences a warning)
        validation_data=(x_test, y_test),
        verbose=verbose,
    )
    return sam.evaluate(
        x_test, y_test, batch_size=256, verbose=0, return_dict=True
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(PRESETS), default="sam")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--dim", type=int, default=192, help="ViT width")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="train on the first N images only (quick runs)",
    )
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Loads CIFAR-10 (a download on first use), trains, returns the test
    logs."""
    args = parse_args(argv)
    (x, y), (x_test, y_test) = keras.datasets.cifar10.load_data()
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    print(
        f"ViT on CIFAR-10 ({len(x)} training images) with {args.method} "
        f"(rho {args.rho}), backend {keras.backend.backend()}"
    )
    logs = train(
        x,
        y,
        x_test,
        y_test,
        method=args.method,
        rho=args.rho,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        augment=not args.no_augment,
        seed=args.seed,
    )
    print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))
    return logs


if __name__ == "__main__":
    main()
