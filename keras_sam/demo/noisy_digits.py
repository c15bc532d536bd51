"""What SAM is for, in a few minutes: label noise on scikit-learn's digits.

A fraction of the training labels (30% by default) is replaced by wrong
ones. The base optimizer memorises them and its test accuracy falls; SAM's
methods fit the clean labels and generalise better (Foret et al. 2021, Table
4). The demo trains the same small ViT with the base optimizer (AdamW) and
with several methods, each with nothing but its `method` (Look-LayerSAM with
`keras_sam.optimizers.LAMB`, against LAMB alone), and prints, per method, the
final test accuracy on clean labels (mean +- std over `--seeds`), the step
time relative to its base optimizer and the state it keeps between steps; it
plots the test accuracy per epoch. No download: the digits ship with
scikit-learn. Honours `KERAS_BACKEND`; a seed fixes the label noise, the
initial weights and the batch order with NumPy, so it is the same run on
every backend (up to floating-point rounding, which training amplifies).

Usage: `keras-sam demo [--methods sam,looksam] [--epochs 30] [--noise 0.3]
[--seeds 1] [--model vit|mixer] [--plot keras_sam_demo.png]`
(or `python -m keras_sam.demo ...`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import keras
import numpy as np

from keras_sam import PRESETS, SAMModel
from keras_sam.demo import cli
from keras_sam.demo.models import mlp_mixer, vit
from keras_sam.optimizers import LAMB

BATCH_SIZE = 64
DEFAULT_METHODS = ("sam", "samon", "fsam", "nusam", "looksam", "looklayersam")
# The methods trained with LAMB (against a LAMB base): Look-LayerSAM is its
# paper's large-batch recipe. LayerSAM alone is compared with AdamW, as the
# other methods are.
LAMB_METHODS = ("looklayersam",)


@dataclasses.dataclass(frozen=True)
class Data:
    """Training images and (noisy) labels, test images and clean labels."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_clean: np.ndarray  # the training labels before the noise


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


def with_label_noise(
    labels: np.ndarray, fraction: float, classes: int = 10, seed: int = 0
) -> np.ndarray:
    """Symmetric label noise: `fraction` of the labels, chosen at random,
    replaced by a different class drawn uniformly."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    chosen = rng.choice(len(labels), int(round(fraction * len(labels))), False)
    shift = rng.integers(1, classes, size=len(chosen))
    noisy[chosen] = (labels[chosen] + shift) % classes
    return noisy


def noisy_digits(noise: float, seed: int = 0) -> Data:
    """The digits with `noise` of the training labels wrong (the split is
    fixed; the noise depends on `seed`)."""
    (x, y), (x_test, y_test) = load_digits()
    return Data(x, with_label_noise(y, noise, seed=seed), x_test, y_test, y)


def make_model(kind: str = "vit", seed: int = 0) -> keras.Model:
    """The demo's model on 8x8x1 digits: a 2-block ViT or MLP-Mixer on 2x2
    patches, its initial weights drawn by `portable_initialization`."""
    keras.utils.set_random_seed(seed)
    common = dict(image_size=8, patch_size=2, channels=1, num_classes=10)
    if kind == "mixer":
        model = mlp_mixer(**common, dim=64, depth=2)
    else:
        model = vit(**common, dim=64, depth=2, heads=4, mlp_dim=128)
    portable_initialization(model, seed)
    return model


def portable_initialization(model: keras.Model, seed: int) -> None:
    """Redraws the demo model's random initial weights with NumPy, so that a
    seed is the same run on every backend (each backend's own generator
    draws different numbers from the same laws).

    The laws are those Keras draws for the demo's layers: constants (zeros,
    ones) are kept; `position` embeddings are normal with std 0.02; every
    other weight is Glorot-uniform with Keras' fans (`_glorot_fans`).
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if np.all(value == value.flat[0]):
            continue
        if variable.name == "position":
            drawn = rng.normal(0.0, 0.02, value.shape)
        else:
            limit = np.sqrt(6.0 / sum(_glorot_fans(variable.path, value.shape)))
            drawn = rng.uniform(-limit, limit, value.shape)
        variable.assign(drawn.astype(value.dtype))


def _glorot_fans(path: str, shape: tuple) -> tuple[int, int]:
    """`(fan_in, fan_out)` as Keras counts them: the contracted and the
    output axes of a `MultiHeadAttention` projection (an `EinsumDense`
    kernel: `(dim, heads, head_dim)`, or `(heads, head_dim, dim)` for the
    output); for any other kernel, its last two axes, each times the
    product of the others (a convolution's receptive field)."""
    if len(shape) == 3 and "attention" in path:
        split = 2 if "attention_output" in path else 1
        return int(np.prod(shape[:split])), int(np.prod(shape[split:]))
    if len(shape) < 2:
        raise ValueError(f"No Glorot fans for the {shape} weight {path!r}.")
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class Batches(keras.utils.PyDataset):
    """`(x, y)` in batches, in an order NumPy draws anew at each epoch from
    `seed` (`fit(shuffle=True)` would draw it with the backend's generator,
    which differs between backends)."""

    def __init__(self, x, y, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        chosen = self._order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        return self.x[chosen], self.y[chosen]

    def on_epoch_begin(self) -> None:
        self._order = self._rng.permutation(len(self.x))


def base_optimizer(name: str, steps: int) -> keras.optimizers.Optimizer:
    """AdamW or LAMB, cosine decay from 2e-3 over `steps`, weight decay
    0.01."""
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    if name == "lamb":
        return LAMB(schedule, weight_decay=0.01)
    return keras.optimizers.AdamW(schedule, weight_decay=0.01)


class _EpochTimer(keras.callbacks.Callback):
    """The seconds of each epoch's training steps (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        # JAX dispatches the steps asynchronously: wait for the last one.
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        self.seconds.append(time.perf_counter() - self._start)


def train(
    data: Data,
    method: str | None = None,
    options: dict | None = None,
    optimizer: str = "adamw",
    epochs: int = 30,
    seed: int = 0,
    model_kind: str = "vit",
    verbose: int | str = "auto",
    model: keras.Model | None = None,
) -> dict:
    """Trains the demo's model with `method` and `options` (`method=None`:
    the base optimizer alone).

    `model` trains another (newly built, uncompiled) classifier of
    `data` instead of `make_model(model_kind, seed)`: the benchmarks' panel
    of tasks trains each of its models this way.

    Returns:
        The final test accuracy (clean labels), the training accuracy on the
        noisy labels and on the clean ones, the history (with
        `val_accuracy` per epoch), the median seconds per step after the
        first epoch, the persistent state, the parameter count and the
        trained model (`model`: the compiled `keras.Model`, or the
        `SAMModel`).
    """
    if model is None:
        model = make_model(model_kind, seed)
    trainer = model
    if method is not None:
        trainer = SAMModel(model, method=method, **(options or {}))
    steps_per_epoch = int(np.ceil(len(data.x) / BATCH_SIZE))
    trainer.compile(
        optimizer=base_optimizer(optimizer, epochs * steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = _EpochTimer()
    history = trainer.fit(
        Batches(data.x, data.y, BATCH_SIZE, seed),
        epochs=epochs,
        shuffle=False,  # Batches draws the order; Keras would shuffle it.
        validation_data=(data.x_test, data.y_test),
        callbacks=[timer],
        verbose=verbose,
    )
    predicted = np.argmax(model.predict(data.x, verbose=0), axis=-1)
    # The first epoch compiles the step.
    step_seconds = statistics.median(timer.seconds[1:]) / steps_per_epoch
    return {
        "accuracy": history.history["val_accuracy"][-1],
        "train_noisy": float(np.mean(predicted == data.y)),
        "train_clean": float(np.mean(predicted == data.y_clean)),
        "history": history.history,
        "step_seconds": step_seconds,
        "state": trainer.perturbation_state_size() if method else 0,
        "parameters": model.count_params(),
        "optimizer": optimizer,
        "model": trainer,
    }


def mean_std(values) -> str:
    """`mean ± std` (the sample std; just the value for one)."""
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def plot(curves: dict, path: str, title: str) -> None:
    """Test accuracy per epoch, one line per run (mean over seeds)."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        style = "--" if name.startswith("base") else "-"
        axis.plot(range(1, len(curve) + 1), curve, style, label=name)
    axis.set(xlabel="epoch", ylabel="test accuracy (clean labels)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _arguments(argv):
    parser = cli.command_parser("keras-sam demo", __doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated presets (their base optimizers run too)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="training epochs (>= 2: the first one compiles)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.3,
        help="the fraction of wrong training labels; 0 for clean data",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per method, seeds 0 to N-1 (mean +- std in the table)",
    )
    parser.add_argument(
        "--model",
        choices=("vit", "mixer"),
        default="vit",
        help="the example ViT or an MLP-Mixer",
    )
    parser.add_argument(
        "--plot", default="keras_sam_demo.png", help="the PNG to write"
    )
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in PRESETS]
    if unknown or not args.methods:
        parser.error(
            f"--methods: unknown methods {unknown}; choose from "
            f"{sorted(PRESETS)}"
        )
    if args.epochs < 2:
        parser.error(
            f"--epochs must be >= 2 (the first one compiles); received "
            f"{args.epochs}"
        )
    if not 0.0 <= args.noise < 0.9:
        parser.error(f"--noise must be in [0, 0.9); received {args.noise}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1; received {args.seeds}")
    return args


def _table(runs: dict) -> None:
    print(
        f"\n{'method':<14}{'optimizer':>10}{'test acc':>18}"
        f"{'train acc':>11}{'step/base':>11}{'state':>10}{'state/params':>14}"
    )
    for name, results in runs.items():
        r = results[0]
        base = runs[f"base_{r['optimizer']}"]
        ratio = statistics.median(
            a["step_seconds"] / b["step_seconds"] for a, b in zip(results, base)
        )
        print(
            f"{name:<14}{r['optimizer']:>10}"
            f"{mean_std(x['accuracy'] for x in results):>18}"
            f"{statistics.mean(x['train_noisy'] for x in results):>11.3f}"
            f"{ratio:>11.2f}{r['state']:>10d}"
            f"{r['state'] / r['parameters']:>14.2%}"
        )


def main(argv: list[str] | None = None) -> dict:
    """Runs the demo; returns the results per run and seed."""
    args = _arguments(argv)
    print(
        f"keras-sam demo: {args.model} on digits with {args.noise:.0%} of the "
        f"training labels wrong, backend {keras.backend.backend()}, "
        f"{args.epochs} epochs, {args.seeds} seed(s)"
    )
    optimizers = {
        m: "lamb" if m in LAMB_METHODS else "adamw" for m in args.methods
    }
    plan = [(f"base_{o}", None, o) for o in sorted(set(optimizers.values()))]
    plan += [(m, m, o) for m, o in optimizers.items()]
    runs = {name: [] for name, _, _ in plan}
    for seed in range(args.seeds):
        data = noisy_digits(args.noise, seed)
        for name, method, optimizer in plan:
            print(f"\n--- {name}, seed {seed}")
            result = train(
                data,
                method,
                optimizer=optimizer,
                epochs=args.epochs,
                seed=seed,
                model_kind=args.model,
            )
            del result["model"]  # each keeps its compiled step
            runs[name].append(result)
    _table(runs)
    curves = {
        name: np.mean([r["history"]["val_accuracy"] for r in results], axis=0)
        for name, results in runs.items()
    }
    plot(
        curves,
        args.plot,
        f"{args.model} on digits, {args.noise:.0%} label noise "
        f"({keras.backend.backend()})",
    )
    print(f"\nwrote {args.plot}")
    return runs


if __name__ == "__main__":
    main()
