"""A first look at keras-sam: an MLP on scikit-learn's digits.

Trains the same model with the base optimizer and with several SAM methods
and prints, per method, the test accuracy, the last epoch's sharpness and the
step time relative to the base optimizer. No download: the digits ship with
scikit-learn. Honours `KERAS_BACKEND`.

Usage: `python -m keras_sam.demo [--methods sam,looksam] [--epochs 8]`
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from keras_sam import PRESETS, SAMModel

DEFAULT_METHODS = (
    "sam",
    "samon",
    "asam",
    "fsam",
    "looksam",
    "nusam",
    "looklayersam",
)


def load_digits(seed: int = 0):
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise SystemExit(
            "The demo needs scikit-learn: pip install 'keras-sam[test]'"
        ) from e
    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def make_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128),
            keras.layers.LayerNormalization(),
            keras.layers.Activation("gelu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10),
        ]
    )


def train(method: str | None, epochs: int, data) -> dict:
    (x, y), (x_test, y_test) = data
    model = make_model()
    trainer = model if method is None else SAMModel(model, method=method)
    trainer.compile(
        optimizer=keras.optimizers.AdamW(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    trainer.fit(x, y, batch_size=64, epochs=1, verbose=0)  # compile, warm up
    start = time.perf_counter()
    history = trainer.fit(x, y, batch_size=64, epochs=epochs - 1, verbose=2)
    seconds = time.perf_counter() - start
    steps = (epochs - 1) * int(np.ceil(len(x) / 64))
    test = trainer.evaluate(x_test, y_test, verbose=0, return_dict=True)
    return {
        "accuracy": test["accuracy"],
        "sharpness": history.history.get("sharpness", [float("nan")])[-1],
        "step_seconds": seconds / steps,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in PRESETS]
    if unknown:
        parser.error(
            f"unknown methods {unknown}; choose from {sorted(PRESETS)}"
        )
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first one warms up)")
    data = load_digits()
    print(f"keras-sam demo on digits, backend {keras.backend.backend()}")
    results = {}
    for method in [None, *methods]:
        print(f"\n--- {method or 'base optimizer (AdamW)'}")
        results[method or "base"] = train(method, args.epochs, data)
    base = results["base"]["step_seconds"]
    print(f"\n{'method':<14}{'test acc':>10}{'sharpness':>11}{'step/base':>11}")
    for name, r in results.items():
        print(
            f"{name:<14}{r['accuracy']:>10.4f}{r['sharpness']:>11.4f}"
            f"{r['step_seconds'] / base:>11.2f}"
        )


if __name__ == "__main__":
    main()
