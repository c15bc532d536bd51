"""Trajectories under `tf.distribute.MirroredStrategy` on 2 logical CPUs.

`python distributed_tf.py OUT.npz` (in a fresh process: logical devices must
be configured before TensorFlow starts) trains every case of `CASES` on two
replicas with `ascent="global"` (and the cases of `PER_REPLICA_CASES` with
`"per_replica"`), all under one strategy between two plain models (and
`SPLIT_CASES` with each replica's batch split in two); the cases of
`XLA_CASES` on one device with XLA; then the models of `SEQUENCE`, each
under a new strategy, the ascents alternating. It saves the flat weights
after each run and, for the distributed runs, the largest difference
between the two replicas' copies of any variable (the SAM state included).
"""

from __future__ import annotations

import os
import pathlib
import sys

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import SAMModel  # noqa: E402
from support.distributed import (  # noqa: E402
    CASES,
    PER_REPLICA_CASES,
    SEQUENCE,
    SPLIT_CASES,
    XLA_CASES,
    sequence_ascent,
    train,
)
from support.helpers import reference_mlp, toy_classification  # noqa: E402
from support.processes import SavedResults  # noqa: E402
from support.reference import init_params  # noqa: E402


def spread(strategy, model) -> float:
    """The largest difference between two replicas' copies of a variable."""
    out = 0.0
    for v in model.variables:
        copies = [
            np.asarray(c) for c in strategy.experimental_local_results(v.value)
        ]
        out = max(out, *(float(np.max(np.abs(c - copies[0]))) for c in copies))
    return out


def skipping(loss_scaling: bool, keep=slice(None)) -> tuple:
    """`sam_skipped` and the flat weights after an epoch of 16-example
    steps over `x[keep]`, where `x`'s second batch has a NaN input."""
    x, y = toy_classification(64)
    x[17, 0] = np.nan
    sam = SAMModel(reference_mlp(init_params()))
    optimizer = keras.optimizers.SGD(0.1)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    sam.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = sam.fit(x[keep], y[keep], batch_size=16, shuffle=False, verbose=0)
    weights = np.concatenate([w.ravel() for w in sam.inner.get_weights()])
    return np.array(history.history["sam_skipped"]), weights


def mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def main(path: str) -> None:
    out = SavedResults(path)
    out["plain/single"] = train("plain")
    strategy = mirrored()
    with strategy.scope():  # several models under one strategy
        out["plain/first"] = train("plain")
    for name in CASES:
        # The distributed runs are checked against the NumPy reference (the
        # one-device trajectory, test_golden.py).
        per_replica = name in PER_REPLICA_CASES
        for ascent in ("global", "per_replica")[: 1 + per_replica]:
            with strategy.scope():
                weights, sam = train(name, ascent=ascent, return_model=True)
            out[f"{name}/{ascent}"] = weights
            out[f"{name}/{ascent}/spread"] = np.float64(spread(strategy, sam))
    # One device, compiled with XLA (what a TPU runs).
    for name in XLA_CASES:
        out[f"{name}/single"] = train(name, jit_compile=True)
    # Micro-batches on one device with XLA.
    out["sam/splits_xla"] = train("sam", jit_compile=True, batch_splits=4)
    with strategy.scope():
        for name in SPLIT_CASES:
            out[f"{name}/per_replica_splits"] = train(
                name, ascent="per_replica", batch_splits=2
            )
        try:
            train("sam", batch_splits=2)
            out["global_splits_error"] = np.str_("")
        except ValueError as e:
            out["global_splits_error"] = np.str_(str(e))
        out["plain/last"] = train("plain")
        for scaling in (True, False):
            skipped, weights = skipping(scaling)
            out[f"skipping/{scaling}/sam_skipped"] = skipped
            out[f"skipping/{scaling}/weights"] = weights
        without = np.r_[0:16, 32:64]  # the run without the bad batch
        out["skipping/without"] = skipping(False, without)[1]
    for i, name in enumerate(SEQUENCE):
        options = {} if name == "plain" else {"ascent": sequence_ascent(i)}
        with mirrored().scope():  # a new strategy per model
            out[f"sequence/{i}"] = train(name, **options)


if __name__ == "__main__":
    main(sys.argv[1])
