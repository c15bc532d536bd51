"""Trajectories under `keras.distribution` on 4 host devices (JAX).

`python distributed_jax.py OUT.npz`, with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before JAX
starts), trains every case of `CASES` under `DataParallel` (all under one
distribution, between two plain models, then the models of `SEQUENCE`, each
under a new one; the tests hold them to the NumPy reference, which is the
one-device trajectory); `sam` and `nusam` on one device and under
`ModelParallel` on a 2 x 2 mesh, for the MLP with both Dense kernels
sharded and for an attention model with its EinsumDense kernels sharded by
heads. The cases of `PER_REPLICA_CASES` also train with `ascent="per_replica"`
under `DataParallel` and with `batch_splits=4` on one device. It saves the
flat weights, and the error that `ascent="per_replica"` raises under
`ModelParallel`.
"""

from __future__ import annotations

import os
import pathlib
import sys

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import SAMModel  # noqa: E402
from support.distributed import (  # noqa: E402
    CASES,
    PER_REPLICA_CASES,
    SEQUENCE,
    train,
)
from support.helpers import compile_sgd  # noqa: E402
from support.processes import SavedResults  # noqa: E402

MODEL_PARALLEL_CASES = ("sam", "nusam")

# Kernels split over the "model" axis of a 2 x 2 mesh. The reference MLP's
# (6, 8) and (8, 3) kernels; the attention model's kernels by heads.
MLP_LAYOUTS = {
    ".*dense/kernel": (None, "model"),
    ".*dense_1/kernel": ("model", None),
}
ATTENTION_LAYOUTS = {
    ".*(query|key|value)/kernel": (None, "model", None),
    ".*attention_output/kernel": ("model", None, None),
}


def model_parallel(devices, layouts: dict) -> keras.distribution.ModelParallel:
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    for pattern, axes in layouts.items():
        layout_map[pattern] = axes
    return keras.distribution.ModelParallel(layout_map=layout_map)


def kernel_specs(model) -> np.ndarray:
    """The sharding of each kernel ("None" on one device)."""
    return np.array(
        [
            str(getattr(v.value.sharding, "spec", None))
            for v in model.inner.trainable_variables
            if v.name == "kernel"
        ]
    )


def train_attention(method: str, return_model: bool = False):
    """`train` for a MultiHeadAttention classifier (its EinsumDense kernels
    are nuSAM's matrices): the flat weights after 4 steps."""
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
    return (weights, sam) if return_model else weights


def main(path: str) -> None:
    devices = keras.distribution.list_devices()
    assert len(devices) == 4, devices
    out = SavedResults(path)
    out["plain/single"] = train("plain")
    for name in PER_REPLICA_CASES:
        out[f"{name}/splits"] = train(name, batch_splits=4)
    with keras.distribution.DataParallel(devices=devices).scope():
        out["plain/first"] = train("plain")  # several models, one scope
        for name in CASES:
            out[f"{name}/data_parallel"] = train(name)
        for name in PER_REPLICA_CASES:
            out[f"{name}/per_replica"] = train(name, ascent="per_replica")
        out["plain/last"] = train("plain")
    for i, name in enumerate(SEQUENCE):  # a new distribution per model
        with keras.distribution.DataParallel(devices=devices).scope():
            out[f"sequence/global/{i}"] = train(name)
    for prefix, run, layouts in (
        ("", train, MLP_LAYOUTS),
        ("attention_", train_attention, ATTENTION_LAYOUTS),
    ):
        for name in MODEL_PARALLEL_CASES:
            key = f"{prefix}{name}"
            out[f"{key}/single"] = run(name)
            # Fresh layer names for the layout map (this clears the
            # distribution too, so it comes before the scope).
            keras.backend.clear_session()
            with model_parallel(devices, layouts).scope():
                weights, sam = run(name, return_model=True)
            out[f"{key}/model_parallel"] = weights
            out[f"{key}/model_parallel/kernel_specs"] = kernel_specs(sam)
    with model_parallel(devices, MLP_LAYOUTS).scope():
        try:
            train("sam", ascent="per_replica")
            out["per_replica_error"] = np.str_("")
        except NotImplementedError as e:
            out["per_replica_error"] = np.str_(str(e))


if __name__ == "__main__":
    main(sys.argv[1])
