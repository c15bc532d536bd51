"""Large-batch Look-LayerSAM with LAMB, on a TPU when there is one.

The LookSAM paper (Liu et al. 2022, Sec. 5 and Table 11) trains ViT-B/16 on
ImageNet at batch sizes of 4k to 64k on TPU v3 pods with Look-LayerSAM (rho
1.0, k 5, alpha 0.7) and LAMB (weight decay 0.1, gradient clipping 1.0), a
peak learning rate scaled linearly with the batch, a linear warmup and a
linear decay. This script applies that recipe to the example ViT on
scikit-learn's digits (no download), so it runs anywhere:

- TensorFlow: under `tf.distribute.TPUStrategy` when `TPUClusterResolver`
  finds a TPU (on a TPU VM, or with `--tpu NAME`); otherwise under the
  default strategy, with a message.
- JAX: under `keras.distribution.DataParallel` over every device JAX sees
  (the TPU cores on a TPU VM). On a pod, run it on every host with
  `--multi-host`: each process feeds its own part of every global batch
  (NumPy arrays, no TensorFlow needed), and trains as one process would.
- torch: one device.

Usage:
    KERAS_BACKEND=tensorflow python examples/tpu_train.py --steps 20
    KERAS_BACKEND=jax python examples/tpu_train.py --steps 20
    # on every host of a TPU pod slice:
    KERAS_BACKEND=jax python examples/tpu_train.py --multi-host --steps 20
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

from examples.schedules import (  # noqa: E402
    add_schedule_arguments,
    warmup_linear_decay,
)
from keras_sam import SAMModel  # noqa: E402
from keras_sam.demo.models import vit  # noqa: E402
from keras_sam.optimizers import LAMB  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--batch-size", type=int, default=256, help="global batch"
    )
    add_schedule_arguments(parser, base_batch=4096)
    parser.add_argument("--dim", type=int, default=64, help="ViT width")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--method", default="looklayersam")
    parser.add_argument("--rho", type=float, default=1.0)
    # Table 11's Look-LayerSAM: eq. 7's scale and Alg. 1's reuse.
    parser.add_argument("--layer-scale", default="eq7")
    parser.add_argument("--reuse-scale", default="gradient")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--clipnorm", type=float, default=1.0)
    parser.add_argument(
        "--ascent", choices=("global", "per_replica"), default="global"
    )
    parser.add_argument(
        "--batch-splits",
        type=int,
        default=1,
        help="micro-batches per replica's batch (m-sharpness)",
    )
    parser.add_argument("--tpu", default=None, help="TPU name (TensorFlow)")
    parser.add_argument(
        "--multi-host",
        action="store_true",
        help="JAX, run on every host of a pod: call "
        "keras.distribution.initialize() first",
    )
    return parser.parse_args(argv)


def tensorflow_strategy(tpu: str | None):
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu)
    except ValueError:
        print(
            "No TPU found (TPUClusterResolver): training with the default "
            f"strategy on {tf.config.list_logical_devices()[0].name}."
        )
        return tf.distribute.get_strategy()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    print(f"TPUStrategy with {strategy.num_replicas_in_sync} replicas.")
    return strategy


def jax_distribution(args):
    if args.multi_host:
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    if args.batch_size % len(devices):
        raise SystemExit(
            f"--batch-size {args.batch_size} must divide evenly over the "
            f"{len(devices)} devices of DataParallel."
        )
    print(f"keras.distribution.DataParallel over {len(devices)} devices.")
    # Each process feeds its own part of every batch (`process_part`).
    return keras.distribution.DataParallel(
        devices=devices, auto_shard_dataset=False
    )


def process_part(array: np.ndarray, batch_size: int) -> np.ndarray:
    """This process's part of every global batch of `array` (all of it in
    one process): process p of n takes the p-th of n equal, contiguous
    slices of each batch, so that together they feed the batches one
    process would."""
    import jax

    part = batch_size // jax.process_count()
    start = jax.process_index() * part
    batches = array.reshape(-1, batch_size, *array.shape[1:])
    return batches[:, start : start + part].reshape(-1, *array.shape[1:])


def digits(batch_size: int, steps: int):
    """Digits as 8x8x1 images, repeated to fill `steps` global batches and
    shuffled with a fixed seed: the same batches on every process."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    order = np.resize(
        np.random.default_rng(0).permutation(len(x)), steps * batch_size
    )
    return x[order], y[order]


def build(args) -> SAMModel:
    keras.utils.set_random_seed(0)
    model = vit(8, 2, 1, 10, dim=args.dim, depth=args.depth, heads=args.heads)
    sam = SAMModel(
        model,
        method=args.method,
        rho=args.rho,
        k=args.k,
        alpha=args.alpha,
        layer_scale=args.layer_scale,
        reuse_scale=args.reuse_scale,
        ascent=args.ascent,
        batch_splits=args.batch_splits,
    )
    sam.compile(
        optimizer=LAMB(
            warmup_linear_decay(args, args.steps),
            weight_decay=args.weight_decay,
            global_clipnorm=args.clipnorm,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return sam


def main(argv=None) -> dict:
    args = parse_args(argv)
    backend = keras.backend.backend()
    if args.multi_host and backend != "jax":
        raise SystemExit(
            f"--multi-host is for the JAX backend, and KERAS_BACKEND is "
            f"{backend!r}."
        )
    x, y = digits(args.batch_size, args.steps)
    batch_size = args.batch_size
    if backend == "tensorflow":
        with tensorflow_strategy(args.tpu).scope():
            sam = build(args)
    elif backend == "jax":
        keras.distribution.set_distribution(jax_distribution(args))
        x, y = process_part(x, batch_size), process_part(y, batch_size)
        batch_size = len(x) // args.steps  # this process's part of a batch
        sam = build(args)
    else:
        print(f"{backend}: one device.")
        sam = build(args)
    # `digits` shuffled already: `fit` keeps its batches (and every process
    # its part of each).
    history = sam.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=2
    )
    logs = {name: values[-1] for name, values in history.history.items()}
    print("final:", ", ".join(f"{k}={v:.6f}" for k, v in logs.items()))
    return logs


if __name__ == "__main__":
    main()
