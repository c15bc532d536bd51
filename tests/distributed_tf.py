"""Trajectories under `tf.distribute.MirroredStrategy` on 2 logical CPUs.

`python distributed_tf.py OUT.npz` (in a fresh process: logical devices must
be configured before TensorFlow starts) trains every case of `CASES` on one
device, and on two replicas with `ascent="global"` and `"per_replica"`; it
saves the flat weights after each run and, for the distributed runs, the
largest difference between the two replicas' copies of any variable (the
SAM state included).
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import numpy as np  # noqa: E402
from distributed import CASES, train  # noqa: E402


def spread(strategy, model) -> float:
    """The largest difference between two replicas' copies of a variable."""
    out = 0.0
    for v in model.variables:
        copies = [
            np.asarray(c) for c in strategy.experimental_local_results(v.value)
        ]
        out = max(out, *(float(np.max(np.abs(c - copies[0]))) for c in copies))
    return out


def main(path: str) -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name in CASES:
        out[f"{name}/single"] = train(name)
        for ascent in ("global", "per_replica"):
            with strategy.scope():
                weights, sam = train(name, ascent=ascent, return_model=True)
            out[f"{name}/{ascent}"] = weights
            out[f"{name}/{ascent}/spread"] = np.float64(spread(strategy, sam))
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
