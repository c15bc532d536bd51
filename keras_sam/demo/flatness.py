"""Is SAM's model flatter than AdamW's? The label-noise run, measured.

Trains the demo's model on the digits with 30% of the training labels wrong,
with AdamW and with SAM, exactly as `keras-sam demo` trains them, then
measures both at the end of training on the first `--examples` training
examples and their (noisy) labels, the loss they were trained on, with
`keras_sam.analysis`: the top Hessian eigenvalue (power iteration), the
Hessian trace (Hutchinson) and the m-sharpness (worst case, l2, radius
`--radius`, batches of `--m`). It prints them and writes a PNG: the loss on
the line from AdamW's weights to SAM's, and the loss on a plane around each
model along two filter-normalised random directions (Li et al. 2018).
Honours `KERAS_BACKEND`.

Usage: `keras-sam flatness [--method sam] [--epochs 30] [--noise 0.3]
[--model vit|mixer] [--examples 512] [--m 128] [--radius 0.05] [--steps 5]
[--iterations 20] [--samples 10] [--points 11] [--seed 0]
[--plot keras_sam_flatness.png]`.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_sam import PRESETS, analysis
from keras_sam.demo import cli, noisy_digits

NAMES = ("AdamW", "SAM")


def measure(model, x, y, args) -> dict:
    """The flatness measures of one trained model on `(x, y)`."""
    loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    eigen = analysis.top_eigenvalues(
        model, x, y, iterations=args.iterations, seed=args.seed
    )
    trace = analysis.hessian_trace(
        model, x, y, samples=args.samples, seed=args.seed
    )
    sharpness = analysis.sharpness(
        model, x, y, m=args.m, radius=args.radius, steps=args.steps
    )
    plane = analysis.landscape_2d(
        model, x, y, points=args.points, seed=args.seed
    )
    return {
        "loss": loss,
        "top_eigenvalue": float(eigen.values[0]),
        "trace": trace,
        "sharpness": sharpness,
        "plane": plane,
    }


def _table(runs: dict, measures: dict, args) -> None:
    rows = [
        ("test accuracy", lambda r, m: f"{r['accuracy']:.3f}"),
        (
            "train accuracy (noisy labels)",
            lambda r, m: f"{r['train_noisy']:.3f}",
        ),
        ("train loss (noisy labels)", lambda r, m: f"{m['loss']:.3f}"),
        ("top Hessian eigenvalue", lambda r, m: f"{m['top_eigenvalue']:.2f}"),
        (
            "Hessian trace",
            lambda r, m: f"{m['trace'].estimate:.1f} ± {m['trace'].stderr:.1f}",
        ),
        (
            f"m-sharpness (m={args.m}, rho={args.radius})",
            lambda r, m: (
                f"{m['sharpness'].mean:.4f} ± {m['sharpness'].stderr:.4f}"
            ),
        ),
    ]
    print(f"\n{'':<34}" + "".join(f"{name:>20}" for name in NAMES))
    for label, cell in rows:
        cells = (cell(runs[n], measures[n]) for n in NAMES)
        print(f"{label:<34}" + "".join(f"{c:>20}" for c in cells))
    flatter = [
        label
        for label, key in (
            ("top eigenvalue", "top_eigenvalue"),
            ("trace", "trace"),
            ("m-sharpness", "sharpness"),
        )
        if _number(measures["SAM"][key]) < _number(measures["AdamW"][key])
    ]
    print(f"\nSAM's model is flatter by: {', '.join(flatter) or 'nothing'}")


def _number(value) -> float:
    return getattr(value, "estimate", getattr(value, "mean", value))


def plot(line, measures: dict, path: str, title: str) -> None:
    """The interpolation and a contour plot around each model (shared
    levels), side by side."""
    noisy_digits._require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 3, figsize=(13, 4))
    analysis.plot_line(
        line,
        ax=axes[0],
        xlabel="a: (1 - a) w_AdamW + a w_SAM",
        title="AdamW (a=0) to SAM (a=1)",
    )
    losses = np.concatenate([measures[n]["plane"].losses for n in NAMES])
    levels = np.linspace(losses.min(), np.median(losses), 15)
    for ax, name in zip(axes[1:], NAMES):
        analysis.plot_contour(
            measures[name]["plane"], ax=ax, levels=levels, title=name
        )
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def _arguments(argv):
    parser = cli.command_parser("keras-sam flatness", __doc__.splitlines()[0])
    add = parser.add_argument
    add("--method", default="sam", help="the SAM preset against AdamW")
    add("--epochs", type=int, default=30, help="training epochs (>= 2)")
    add(
        "--noise",
        type=float,
        default=0.3,
        help="the fraction of wrong training labels",
    )
    add(
        "--model",
        choices=("vit", "mixer"),
        default="vit",
        help="the example ViT or an MLP-Mixer",
    )
    add("--examples", type=int, default=512, help="training examples measured")
    add("--m", type=int, default=128, help="the m of m-sharpness")
    add("--radius", type=float, default=0.05, help="the m-sharpness radius")
    add("--steps", type=int, default=5, help="m-sharpness ascent steps")
    add("--iterations", type=int, default=20, help="power iterations")
    add("--samples", type=int, default=10, help="Hutchinson samples")
    add("--points", type=int, default=11, help="landscape points per axis")
    add(
        "--seed",
        type=int,
        default=0,
        help="the seed of the label noise, weights and batch order",
    )
    add("--plot", default="keras_sam_flatness.png", help="the PNG to write")
    args = parser.parse_args(argv)
    if args.method not in PRESETS:
        parser.error(
            f"--method: unknown method {args.method!r}; choose from "
            f"{sorted(PRESETS)}"
        )
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2; received {args.epochs}")
    if not 0.0 <= args.noise < 0.9:
        parser.error(f"--noise must be in [0, 0.9); received {args.noise}")
    if args.m < 1 or args.examples < args.m or args.examples % args.m:
        parser.error(
            f"--examples must be a multiple of --m >= 1; received "
            f"--examples {args.examples} and --m {args.m}"
        )
    for name in ("steps", "iterations", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.points < 2:
        parser.error(f"--points must be >= 2; received {args.points}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Runs the comparison; returns the measures of both models."""
    args = _arguments(argv)
    print(
        f"keras-sam flatness: {args.model} on digits with {args.noise:.0%} "
        f"of the training labels wrong, AdamW vs {args.method}, backend "
        f"{keras.backend.backend()}, {args.epochs} epochs"
    )
    data = noisy_digits.noisy_digits(args.noise, args.seed)
    if args.examples > len(data.x):
        raise SystemExit(
            f"--examples must be at most {len(data.x)}, the training set; "
            f"received {args.examples}"
        )
    runs = {}
    for name, method in zip(NAMES, (None, args.method)):
        print(f"\n--- training {name}")
        start = time.perf_counter()
        runs[name] = noisy_digits.train(
            data,
            method,
            epochs=args.epochs,
            seed=args.seed,
            model_kind=args.model,
            verbose=2,
        )
        print(f"trained in {time.perf_counter() - start:.0f} s")
    x, y = data.x[: args.examples], data.y[: args.examples]
    measures = {}
    for name in NAMES:
        print(f"measuring {name} on {args.examples} training examples", end="")
        start = time.perf_counter()
        measures[name] = measure(runs[name]["model"], x, y, args)
        print(f": {time.perf_counter() - start:.0f} s")
    line = analysis.interpolation(
        runs["AdamW"]["model"], runs["SAM"]["model"], x, y, points=21
    )
    _table(runs, measures, args)
    title = (
        f"{args.model} on digits, {args.noise:.0%} label noise, training "
        f"loss on {args.examples} examples ({keras.backend.backend()})"
    )
    plot(line, measures, args.plot, title)
    print(f"\nwrote {args.plot}")
    return {"runs": runs, "measures": measures, "interpolation": line}


if __name__ == "__main__":
    main()
