"""Fine-tuning a keras-hub ViT with SAM: a frozen-backbone phase, then the
whole model.

`keras_hub.models.ViTBackbone` built from explicit config arguments (random
weights, no download) under `keras_hub.models.ViTImageClassifier`'s head,
wrapped in `SAMModel`. The usual two-phase fine-tuning: first the head
alone (`backbone.trainable = False`), then everything at a lower learning
rate. Each phase wraps the classifier in a new `SAMModel` (as a plain Keras
model is recompiled after `trainable` changes): the method's state is per
trainable variable. The data are the digits resized to 32x32 and repeated
over 3 channels, or random images with `--data random`.

SAM with a small rho is the default: tiny ViTs are sharp at initialisation,
and LookSAM's reuse weight alpha = 0.7 trains this ViT slowly or stalls it
(`--method looklayersam` wants `--alpha 0.3` or less). To fine-tune
pretrained weights instead (a download), build the backbone with
`keras_hub.models.ViTBackbone.from_preset("vit_base_patch16_224_imagenet")`
and feed 224x224 images scaled as its preset's preprocessor does.

keras-hub is an optional dependency: `pip install keras-hub`.

Usage:
    python examples/hub_finetune.py                     # SAM, rho 0.02
    python examples/hub_finetune.py --method looksam --alpha 0.3 --epochs 10
    KERAS_BACKEND=jax python examples/hub_finetune.py --data random
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import keras
import numpy as np

if __package__ in (None, ""):
    # Run as a script (`python examples/x.py`): import `keras_sam` from
    # this checkout, and `examples` with it.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from examples.data import load_digits, random_images  # noqa: E402
from keras_sam import PRESETS, SAMModel  # noqa: E402


def import_keras_hub():
    """`keras_hub`, or a `SystemExit` that says how to install it."""
    try:
        import keras_hub
    except ImportError as e:
        raise SystemExit(
            "This example needs keras-hub, an optional dependency of "
            "keras-sam: pip install keras-hub (or keras-sam[hub]). "
            f"Import failed with: {e}"
        ) from e
    return keras_hub


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=("digits", "random"), default="digits"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--mlp-dim", type=int, default=128)
    parser.add_argument("--method", choices=sorted(PRESETS), default="sam")
    parser.add_argument("--rho", type=float, default=0.02)
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="LookSAM's reuse weight (looksam, looklayersam)",
    )
    parser.add_argument(
        "--head-epochs",
        type=int,
        default=2,
        help="epochs with the backbone frozen (0: none)",
    )
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs of the whole model"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--head-learning-rate", type=float, default=1e-2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def images(args: argparse.Namespace):
    """`((x, y), (x_test, y_test))` with `(n, size, size, 3)` images."""
    if args.data == "random":
        return random_images(
            1024, args.image_size, 3, num_classes=10, seed=args.seed
        )
    (x, y), (x_test, y_test) = load_digits(args.seed)

    def resize(x: np.ndarray) -> np.ndarray:
        x = keras.ops.image.resize(x, (args.image_size, args.image_size))
        return np.repeat(keras.ops.convert_to_numpy(x), 3, axis=-1)

    return (resize(x), y), (resize(x_test), y_test)


def build_classifier(args: argparse.Namespace) -> keras.Model:
    """A `ViTImageClassifier` on a `ViTBackbone` built from a config."""
    keras_hub = import_keras_hub()
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(args.image_size, args.image_size, 3),
        patch_size=args.patch_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        mlp_dim=args.mlp_dim,
    )
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=10, preprocessor=None
    )


def fit_phase(
    classifier: keras.Model,
    args: argparse.Namespace,
    data,
    epochs: int,
    learning_rate: float,
) -> SAMModel:
    """Wraps `classifier` in a new `SAMModel` (its trainable variables as
    they are now) and trains it for `epochs` with AdamW and a cosine
    decay."""
    (x, y), (x_test, y_test) = data
    options = {} if args.alpha is None else {"alpha": args.alpha}
    sam = SAMModel(classifier, method=args.method, rho=args.rho, **options)
    steps = epochs * -(-len(x) // args.batch_size)
    sam.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps),
            weight_decay=args.weight_decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    sam.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=epochs,
        validation_data=(x_test, y_test),
        verbose=2,
    )
    return sam


def main(argv: list[str] | None = None) -> dict:
    """Fine-tunes in two phases and returns the test logs."""
    args = parse_args(argv)
    import_keras_hub()  # fail early, with the install command
    data = images(args)
    keras.utils.set_random_seed(args.seed)
    classifier = build_classifier(args)
    backbone = classifier.backbone
    print(
        f"keras-hub ViT ({backbone.count_params()} backbone parameters) on "
        f"{args.data} with {args.method} (rho {args.rho}), backend "
        f"{keras.backend.backend()}"
    )
    if args.head_epochs:
        print(f"Phase 1: the head alone, {args.head_epochs} epochs")
        backbone.trainable = False
        fit_phase(
            classifier, args, data, args.head_epochs, args.head_learning_rate
        )
        backbone.trainable = True
    print(f"Phase 2: the whole model, {args.epochs} epochs")
    sam = fit_phase(classifier, args, data, args.epochs, args.learning_rate)
    (_, _), (x_test, y_test) = data
    logs = sam.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print("final: " + ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))
    return logs


if __name__ == "__main__":
    main()
