"""Trajectories under `keras.distribution` on 4 host devices (JAX).

`python distributed_jax.py OUT.npz`, with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before JAX
starts), trains every case of `CASES` on one device and under
`DataParallel`; `sam` and `nusam` also under `ModelParallel` on a 2 x 2
mesh, for the MLP with both Dense kernels sharded and for an attention model
with its EinsumDense kernels sharded by heads; and saves the flat weights, and
the error that `ascent="per_replica"` raises under `DataParallel`.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from distributed import CASES, train  # noqa: E402
from helpers import compile_sgd  # noqa: E402

from keras_sam import SAMModel  # noqa: E402

MODEL_PARALLEL_CASES = ("sam", "nusam")


def model_parallel(devices) -> keras.distribution.ModelParallel:
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    # The reference MLP's kernels: (6, 8) and (8, 3), each split in two.
    layouts[".*dense/kernel"] = (None, "model")
    layouts[".*dense_1/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(layout_map=layouts)


def train_attention(method: str) -> tuple[np.ndarray, list[str]]:
    """A MultiHeadAttention classifier (its EinsumDense kernels are nuSAM's
    matrices): the flat weights after 4 steps, and the kernels' shardings."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 8)).astype("float32")
    y = np.arange(64) % 3
    inputs = keras.Input((4, 8))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    sam = SAMModel(keras.Model(inputs, outputs), method=method, rho=0.1)
    compile_sgd(sam)
    sam.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    weights = np.concatenate([w.ravel() for w in sam.inner.get_weights()])
    specs = [
        str(getattr(v.value.sharding, "spec", None))
        for v in sam.inner.trainable_variables
        if v.name == "kernel" and len(v.shape) == 3
    ]
    return weights, specs


def attention_parallel(devices) -> keras.distribution.ModelParallel:
    """The attention heads split over the "model" axis of a 2 x 2 mesh."""
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*(query|key|value)/kernel"] = (None, "model", None)
    layouts[".*attention_output/kernel"] = ("model", None, None)
    return keras.distribution.ModelParallel(layout_map=layouts)


def main(path: str) -> None:
    devices = keras.distribution.list_devices()
    assert len(devices) == 4, devices
    out = {}
    for name in CASES:
        out[f"{name}/single"] = train(name)
    with keras.distribution.DataParallel(devices=devices).scope():
        for name in CASES:
            out[f"{name}/data_parallel"] = train(name)
        try:
            train("sam", ascent="per_replica")
            out["per_replica_error"] = np.str_("")
        except NotImplementedError as e:
            out["per_replica_error"] = np.str_(str(e))
    for name in MODEL_PARALLEL_CASES:
        keras.backend.clear_session()  # the layout map's layer names
        with model_parallel(devices).scope():
            weights, sam = train(name, return_model=True)
        out[f"{name}/model_parallel"] = weights
        out[f"{name}/model_parallel/kernel_specs"] = np.array(
            [
                str(v.value.sharding.spec)
                for v in sam.inner.trainable_variables
                if v.name == "kernel"
            ]
        )
    for name in MODEL_PARALLEL_CASES:
        out[f"attention_{name}/single"], _ = train_attention(name)
        keras.backend.clear_session()  # (clears the distribution too)
        with attention_parallel(devices).scope():
            weights, specs = train_attention(name)
        out[f"attention_{name}/model_parallel"] = weights
        out[f"attention_{name}/model_parallel/kernel_specs"] = np.array(specs)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
