"""Step time of SAMModel relative to the base optimizer, on one backend.

For each method, the same MLP is trained with the base optimizer and with
`SAMModel(method=...)`; epochs of both are timed interleaved in this one
process and the script prints the median ratio (SAM epoch / base epoch).
Run it once per backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/step_time.py
    done
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import SAMModel  # noqa: E402


def mlp(width: int, depth: int, n_in: int, n_out: int) -> keras.Model:
    layers = [keras.Input((n_in,))]
    for _ in range(depth):
        layers += [
            keras.layers.Dense(width),
            keras.layers.LayerNormalization(),
            keras.layers.Activation("relu"),
        ]
    layers.append(keras.layers.Dense(n_out))
    return keras.Sequential(layers)


def compiled(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def epoch_seconds(model, x, y, batch_size) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sam,samon,fsam,looksam,samk")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    n_in, n_out = 784, 10
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch_size, n_in)).astype("float32")
    y = rng.integers(0, n_out, size=len(x))
    keras.utils.set_random_seed(0)
    base = compiled(mlp(args.width, args.depth, n_in, n_out))
    params = base.count_params()
    print(
        f"backend={keras.backend.backend()} machine={platform.machine()} "
        f"cpus={os.cpu_count()} model=MLP {args.depth}x(Dense {args.width}+LN) "
        f"({params / 1e6:.2f}M params) batch={args.batch_size} "
        f"steps/epoch={args.steps} repeats={args.repeats}"
    )
    print(f"{'method':<10}{'ratio (median)':>16}{'min':>8}{'max':>8}")
    for method in args.methods.split(","):
        keras.utils.set_random_seed(0)
        sam = compiled(
            SAMModel(mlp(args.width, args.depth, n_in, n_out), method=method)
        )
        for model in (base, sam):  # compile and warm up
            epoch_seconds(model, x, y, args.batch_size)
        ratios = []
        for _ in range(args.repeats):
            t_base = epoch_seconds(base, x, y, args.batch_size)
            t_sam = epoch_seconds(sam, x, y, args.batch_size)
            ratios.append(t_sam / t_base)
        print(
            f"{method:<10}{statistics.median(ratios):>16.2f}"
            f"{min(ratios):>8.2f}{max(ratios):>8.2f}"
        )


if __name__ == "__main__":
    main()
