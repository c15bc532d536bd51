"""A first look at keras-sam: a small ViT on scikit-learn's digits.

Trains the same model with the base optimizer and with several SAM methods,
and prints, per method, the test accuracy, the step time relative to the
base optimizer and the state the method keeps between steps; writes the
accuracy and loss curves to a PNG. No download: the digits ship with
scikit-learn. Honours `KERAS_BACKEND`.

Usage: `keras-sam demo [--methods sam,looksam] [--epochs 12]
[--model vit|mixer] [--plot keras_sam_demo.png]`
(or `python -m keras_sam.demo ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import keras
import numpy as np

from keras_sam import PRESETS, SAMModel
from keras_sam.models import mlp_mixer, vit
from keras_sam.optimizers import LAMB

BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the demo trains a method: its options and base optimizer."""

    options: dict
    optimizer: str = "adamw"


# Two epochs of plain steps before LookSAM's first ascent: its reuse term
# has norm alpha * ||g|| whatever rho, and from a random initialisation on
# batches of 64 it stalls training (see the FAQ).
_LOOK_DELAY = 2 * 23
# Per method at this scale: ASAM's radius is relative to the weights and
# SAM-ON's covers a few variables, so both are larger; Look-LayerSAM's is
# the paper's 1.0 with LAMB.
RECIPES = {
    "sam": Recipe({"rho": 0.05}),
    "samon": Recipe({"rho": 0.5}),
    "asam": Recipe({"rho": 0.1}),
    "fsam": Recipe({"rho": 0.05}),
    "looksam": Recipe({"rho": 0.05, "start_step": _LOOK_DELAY}),
    "nusam": Recipe({"rho": 0.05}),
    "looklayersam": Recipe({"rho": 1.0, "start_step": _LOOK_DELAY}, "lamb"),
}
DEFAULT_METHODS = tuple(RECIPES)


def _optimizer(name: str, steps: int) -> keras.optimizers.Optimizer:
    if name == "lamb":
        return LAMB(
            keras.optimizers.schedules.CosineDecay(2e-3, steps),
            weight_decay=0.01,
        )
    return keras.optimizers.AdamW(
        keras.optimizers.schedules.CosineDecay(2e-3, steps),
        weight_decay=0.01,
    )


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise SystemExit(
            f"The demo needs {module}: pip install 'keras-sam[demo]'"
        ) from e


def load_digits(seed: int = 0):
    """scikit-learn's 1797 8x8 digits, shuffled and split 80/20.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images shaped
        `(n, 8, 8, 1)`, float32 in [0, 1], and int32 labels.
    """
    _require("sklearn")
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = y.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def make_model(kind: str = "vit", seed: int = 0) -> keras.Model:
    """The demo's model on 8x8x1 digits: a 2-block ViT or MLP-Mixer on 2x2
    patches."""
    keras.utils.set_random_seed(seed)
    common = dict(image_size=8, patch_size=2, channels=1, num_classes=10)
    if kind == "mixer":
        return mlp_mixer(**common, dim=64, depth=2)
    return vit(**common, dim=64, depth=2, heads=4, mlp_dim=128)


class _EpochTimer(keras.callbacks.Callback):
    """The seconds of each epoch's training steps (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(
    method: str | None, recipe: Recipe, model_kind: str, epochs: int, data
) -> dict:
    """Trains the model with a method (`None`: the base optimizer alone);
    its test accuracy, curves and costs."""
    (x, y), (x_test, y_test) = data
    model = make_model(model_kind)
    trainer = model
    if method is not None:
        trainer = SAMModel(model, method=method, **recipe.options)
    steps_per_epoch = int(np.ceil(len(x) / BATCH_SIZE))
    trainer.compile(
        optimizer=_optimizer(recipe.optimizer, epochs * steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = _EpochTimer()
    history = trainer.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=(x_test, y_test),
        callbacks=[timer],
        verbose=1,
    )
    # The first epoch compiles the step.
    step_seconds = statistics.median(timer.seconds[1:]) / steps_per_epoch
    parameters = model.count_params()
    state = trainer.perturbation_state_size() if method else 0
    return {
        "accuracy": history.history["val_accuracy"][-1],
        "history": history.history,
        "step_seconds": step_seconds,
        "state": state,
        "parameters": parameters,
        "optimizer": recipe.optimizer,
    }


def plot(results: dict, path: str) -> None:
    """Test accuracy and training loss per epoch, one line per method."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (accuracy, loss) = pyplot.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        epochs = range(1, len(result["history"]["loss"]) + 1)
        accuracy.plot(epochs, result["history"]["val_accuracy"], label=name)
        loss.plot(epochs, result["history"]["loss"], label=name)
    accuracy.set(xlabel="epoch", ylabel="test accuracy", title="Accuracy")
    loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    loss.set_yscale("log")
    accuracy.legend()
    figure.suptitle(f"keras-sam demo ({keras.backend.backend()})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> dict:
    """Runs the demo; returns the results per configuration."""
    parser = argparse.ArgumentParser(
        prog="keras-sam demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated presets. Defaults to %(default)s.",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", choices=("vit", "mixer"), default="vit")
    parser.add_argument(
        "--plot",
        default="keras_sam_demo.png",
        help="the PNG to write. Defaults to %(default)s.",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in PRESETS]
    if unknown or not methods:
        parser.error(
            f"--methods: unknown methods {unknown}; choose from "
            f"{sorted(PRESETS)}"
        )
    if args.epochs < 2:
        parser.error(
            f"--epochs must be >= 2 (the first one compiles); received "
            f"{args.epochs}"
        )
    data = load_digits()
    print(
        f"keras-sam demo: {args.model} on digits, backend "
        f"{keras.backend.backend()}"
    )
    recipes = {m: RECIPES.get(m, Recipe({})) for m in methods}
    optimizers = sorted({r.optimizer for r in recipes.values()})
    runs = [(f"base_{o}", None, Recipe({}, o)) for o in optimizers]
    runs += [(m, m, r) for m, r in recipes.items()]
    results = {}
    for name, method, recipe in runs:
        print(f"\n--- {name}")
        results[name] = train(method, recipe, args.model, args.epochs, data)
    print(
        f"\n{'method':<14}{'optimizer':>10}{'test acc':>10}{'step/base':>11}"
        f"{'state':>10}{'state/params':>14}"
    )
    for name, r in results.items():
        base = results[f"base_{r['optimizer']}"]["step_seconds"]
        print(
            f"{name:<14}{r['optimizer']:>10}{r['accuracy']:>10.4f}"
            f"{r['step_seconds'] / base:>11.2f}{r['state']:>10d}"
            f"{r['state'] / r['parameters']:>14.2%}"
        )
    plot(results, args.plot)
    print(f"\nwrote {args.plot}")
    return results


if __name__ == "__main__":
    main()
