"""Trajectories under `keras.distribution` on 4 host devices (JAX).

`python distributed_jax.py OUT.npz`, with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before JAX
starts), trains every case of `CASES` on one device and under
`DataParallel`; `sam` and `nusam` also under `ModelParallel` with both
kernels sharded over a 2 x 2 mesh; and saves the flat weights, and the error
that `ascent="per_replica"` raises under `DataParallel`.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from distributed import CASES, train  # noqa: E402

MODEL_PARALLEL_CASES = ("sam", "nusam")


def model_parallel(devices) -> keras.distribution.ModelParallel:
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    # The reference MLP's kernels: (6, 8) and (8, 3), each split in two.
    layouts[".*dense/kernel"] = (None, "model")
    layouts[".*dense_1/kernel"] = ("model", None)
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
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
