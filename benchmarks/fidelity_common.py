"""What the sub-commands of benchmarks/fidelity.py share: the Markdown
tables and `mean ± std` cells they print, the digits data, the small ViT,
and `Trainer`, a model compiled once and re-initialised per seed."""

from __future__ import annotations

import argparse
import functools
import math
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
# Builds the optimizer from the command's arguments and the steps per epoch.
OptimizerFactory = Callable[[argparse.Namespace, int], keras.Optimizer]


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


def signed(values: Sequence[float]) -> str:
    """`mean ± std` in points, with a sign."""
    mean, std = mean_std(values)
    return f"{100 * mean:+.2f} ± {100 * std:.2f}"


def difference(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """`a - b` per seed (paired: both start a seed from the same weights
    and batch order)."""
    return [x - y for x, y in zip(a, b)]


def spread(ratios: Sequence[float]) -> str:
    """`median (min-max)` of step-time ratios."""
    return (
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
    )


def paired(a: Sequence[float], b: Sequence[float]) -> str:
    """`a - b` per seed (seeds share initial weights and batches), as
    `mean ± std` points, its t statistic (the mean over its standard
    error) and on how many seeds `a` is the higher."""
    differences = difference(a, b)
    mean, std = mean_std(differences)
    t = mean / (std / math.sqrt(len(differences))) if std else float("nan")
    higher = sum(d > 0 for d in differences)
    return f"{pm(differences)} pp (t {t:.1f}, higher on {higher}/{len(a)})"


def per_seed(results: dict[str, list[float]]) -> str:
    return "per-seed test accuracy %: " + "; ".join(
        f"{name}: " + ", ".join(f"{100 * a:.2f}" for a in values)
        for name, values in results.items()
    )


def bands(ax, curves: dict[str, dict[float, list[float]]], color: int = 0):
    """Draws on `ax` one line per curve (`{name: {x: accuracy per seed}}`),
    test accuracy in percent, with a band of ± one standard deviation over
    the seeds, in the colors `C{color}`, `C{color + 1}`, ..."""
    for i, (name, points) in enumerate(curves.items(), start=color):
        xs = sorted(points)
        means, stds = np.array([mean_std(points[x]) for x in xs]).T * 100
        stds = np.nan_to_num(stds)  # one seed: no band
        ax.plot(xs, means, marker="o", color=f"C{i}", label=name)
        ax.fill_between(xs, means - stds, means + stds, color=f"C{i}",
                        alpha=0.2)  # fmt: skip


def band_plot(
    curves: dict[str, dict[float, list[float]]],
    xlabel: str,
    title: str,
    path: str,
) -> None:
    """Draws test accuracy (%) against `x` on a log2 axis, one line per
    curve (`{name: {x: accuracy per seed}}`) with a band of ± one standard
    deviation over the seeds, to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bands(ax, curves)
    ax.set_xscale("log", base=2)
    ticks = sorted({x for points in curves.values() for x in points})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


# ---- Data and model --------------------------------------------------------


def digits(train_size: int | None = None) -> tuple:
    """The demo's digits (`keras_sam.demo.load_digits`: 8x8x1 images in
    [0, 1], a fixed 80/20 split, permutation seed 0): 1437 training and 360
    test images; the first `train_size` training images only, if given."""
    (x, y), test = load_digits(seed=0)
    return (x[:train_size], y[:train_size]), test


def small_vit(depth: int, dim: int = 64) -> keras.Model:
    return vit(
        image_size=8, patch_size=2, channels=1, num_classes=10, dim=dim,
        depth=depth, heads=4,
    )  # fmt: skip


def count(variables: Sequence) -> int:
    """The number of values in `variables`."""
    return sum(math.prod(v.shape) for v in variables)


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


def adamw(args: argparse.Namespace, steps_per_epoch: int) -> keras.Optimizer:
    """AdamW at `--lr`: constant, or a linear warmup over `--warmup` epochs
    then a cosine decay."""
    warmup = args.warmup * steps_per_epoch
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else args.lr,
        decay_steps=max(args.epochs * steps_per_epoch - warmup, 1),
        warmup_target=args.lr if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(
        learning_rate if warmup else args.lr,
        weight_decay=args.weight_decay,
        global_clipnorm=args.clipnorm or None,
    )


def trained(
    specs: Sequence[tuple],
    args: argparse.Namespace,
    data: tuple,
    keep: bool = False,
    build: Builder | None = None,
    optimizer: OptimizerFactory = adamw,
) -> tuple[dict[str, list[float]], list[Trainer]]:
    """Test accuracies per seed for each `(name, method, options)`, and
    the trainers if `keep` (else each is dropped once trained).

    The model is `build()` (defaults to the small ViT of `--depth` blocks),
    the optimizer `optimizer(args, steps_per_epoch)` (defaults to `adamw`);
    `args` gives the batch size, the epochs, the seeds and `run_eagerly`.
    """
    steps_per_epoch = math.ceil(len(data[0][0]) / args.batch_size)
    build = build or functools.partial(small_vit, args.depth)
    results, trainers = {}, []
    for name, method, options in specs:
        start = time.perf_counter()
        trainer = Trainer(
            name,
            build,
            optimizer(args, steps_per_epoch),
            args.batch_size,
            method,
            options,
            args.run_eagerly,
        )
        results[name] = trainer.accuracies(data, args.epochs, args.seeds)
        print(
            f"  {name}: compiled and trained {args.seeds} seed(s) in "
            f"{time.perf_counter() - start:.0f}s",
            flush=True,
        )
        if keep:
            trainers.append(trainer)
    return results, trainers


def training_setup(args: argparse.Namespace, train_size: int) -> str:
    """The setup line of the small ViT trained with `adamw`."""
    schedule = f"lr {args.lr}"
    if args.warmup:
        schedule += f" ({args.warmup} warmup epochs, cosine)"
    if args.clipnorm:
        schedule += f", global clipnorm {args.clipnorm}"
    return (
        f"digits 8x8 ({train_size} train / 360 test), ViT image 8 patch 2 "
        f"dim 64 depth {args.depth} heads 4, AdamW {schedule} weight decay "
        f"{args.weight_decay}, batch {args.batch_size}, {args.epochs} "
        f"epochs, seeds 0-{args.seeds - 1}"
    )


def epoch_ratios(
    trainers: Sequence[Trainer], x, y, repeats: int
) -> dict[str, list[float]]:
    """Step time: one epoch of each compiled model in turn (the first is
    the base optimizer), `repeats` times in this process, after a warm-up
    epoch each (the first epoch after an evaluation re-enters the training
    function); per trainer, each repeat's epoch time over the first
    trainer's of the same repeat."""
    for trainer in trainers:
        trainer.fit(x, y, 1, shuffle=False)
    ratios = {t.name: [] for t in trainers}
    for _ in range(repeats):
        seconds = [t.fit(x, y, 1, shuffle=False) for t in trainers]
        for trainer, s in zip(trainers, seconds):
            ratios[trainer.name].append(s / seconds[0])
    return ratios
