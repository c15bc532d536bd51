"""What the sub-commands of benchmarks/fidelity.py share: the Markdown
tables and `mean ± std` cells they print, the digits data, the small ViT,
and `Trainer`, a model compiled once and re-initialised per seed."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import SAMModel  # noqa: E402
from keras_sam.demo.models import vit  # noqa: E402
from keras_sam.demo.noisy_digits import load_digits  # noqa: E402

Builder = Callable[[], keras.Model]


# ---- Printing --------------------------------------------------------------


def header(claim: str) -> None:
    print(
        f"== {claim}: backend={keras.backend.backend()} "
        f"keras={keras.__version__} machine={platform.machine()} "
        f"cpus={os.cpu_count()}"
    )


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Prints a Markdown table (pastes straight into docs/fidelity.md)."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), std


def pm(values: Sequence[float]) -> str:
    """`mean ± std` in percent (points)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def per_seed(results: dict[str, list[float]]) -> str:
    return "per-seed test accuracy %: " + "; ".join(
        f"{name}: " + ", ".join(f"{100 * a:.2f}" for a in values)
        for name, values in results.items()
    )


# ---- Data and model --------------------------------------------------------


def digits(train_size: int | None = None) -> tuple:
    """The demo's digits (`keras_sam.demo.load_digits`: 8x8x1 images in
    [0, 1], a fixed 80/20 split, permutation seed 0): 1437 training and 360
    test images; the first `train_size` training images only, if given."""
    (x, y), test = load_digits(seed=0)
    return (x[:train_size], y[:train_size]), test


def small_vit(depth: int) -> keras.Model:
    return vit(
        image_size=8, patch_size=2, channels=1, num_classes=10, dim=64,
        depth=depth, heads=4,
    )  # fmt: skip


# ---- Training --------------------------------------------------------------


class Trainer:
    """A compiled model that is re-initialised per seed, so that each
    method compiles once whatever the number of seeds.

    `reset(seed)` gives the wrapped model the initial weights that `build()`
    draws after `keras.utils.set_random_seed(seed)` (they differ between
    backends: each has its own random generator) and every other variable
    (optimizer slots and step counter, SAM state) its value from before the
    first step: the start of a freshly built model.

    Args:
        name: The row's name in the tables.
        build: Builds the model to train (called once per seed).
        optimizer: The base optimizer (its learning rate schedule counts
            the steps from the reset).
        batch_size: The training batch size.
        method: A `SAMModel` method, or `None` for the base optimizer
            alone. Defaults to `None`.
        options: `SAMModel` options. Defaults to none.
        run_eagerly: No compiled step (quicker for a few steps: the
            tests). Defaults to `False`.
    """

    def __init__(
        self,
        name: str,
        build: Builder,
        optimizer: keras.optimizers.Optimizer,
        batch_size: int,
        method: str | None = None,
        options: dict | None = None,
        run_eagerly: bool = False,
    ):
        self.name = name
        self.build = build
        self.batch_size = batch_size
        keras.utils.set_random_seed(0)
        self.inner = build()
        self.model = (
            self.inner
            if method is None
            else SAMModel(self.inner, method=method, **(options or {}))
        )
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            run_eagerly=run_eagerly,
        )
        self.model.optimizer.build(self.model.trainable_variables)
        self.initial = [
            (v, keras.ops.convert_to_numpy(v.value))
            for v in self.model.variables + self.model.optimizer.variables
        ]
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        for variable, value in self.initial:
            variable.assign(value)
        keras.utils.set_random_seed(seed)
        self.inner.set_weights(self.build().get_weights())
        self.rng = np.random.default_rng(seed)

    def fit(self, x, y, epochs: int, shuffle: bool = True) -> float:
        """Trains, each epoch in an order drawn from the seed's generator
        (the same batches on every backend); returns the seconds taken."""
        start = time.perf_counter()
        for _ in range(epochs):
            order = self.rng.permutation(len(x)) if shuffle else slice(None)
            self.model.fit(
                x[order],
                y[order],
                batch_size=self.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
        return time.perf_counter() - start

    def accuracy(self, x, y) -> float:
        logs = self.model.evaluate(
            x, y, batch_size=360, verbose=0, return_dict=True
        )
        return float(logs["accuracy"])

    def accuracies(self, data: tuple, epochs: int, seeds: int) -> list[float]:
        """Test accuracy after `epochs` epochs, for each seed."""
        (x, y), (x_test, y_test) = data
        accuracies = []
        for seed in range(seeds):
            self.reset(seed)
            self.fit(x, y, epochs)
            accuracies.append(self.accuracy(x_test, y_test))
        return accuracies
