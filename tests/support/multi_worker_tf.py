"""One worker of a `tf.distribute.MultiWorkerMirroredStrategy` run.

`python multi_worker_tf.py OUT_DIR`, with `TF_CONFIG` naming a cluster of
workers on localhost and this one's index (`test_multi_worker_tf.py` starts
two, each one CPU replica), trains every run of `RUNS` through `fit` on a
`tf.data.Dataset` of the global batches, then evaluates and predicts with
the `sam` run, which also backs up to the `backup_dir` that both workers
share (`backups`). Then, outside the strategy, it trains its share of
`SINGLE` on one device (each worker half of them). Last, it keeps the
errors of `errors()`. It saves `OUT_DIR/worker<i>.npz`: the flat weights
and all variables of each run (the SAM state included), its part of the
first global batch, the results of `evaluate` and `predict`, the files of
the backups, and the errors.
"""

from __future__ import annotations

import json
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

# Before any other TensorFlow operation: it configures the collectives.
STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import SAMModel  # noqa: E402
from support.distributed import BATCH, CASES, batches  # noqa: E402
from support.helpers import compile_sgd, reference_mlp  # noqa: E402
from support.reference import init_params  # noqa: E402

# Runs under the strategy: (preset of `CASES`, SAMModel options).
RUNS = {
    "sam": ("sam", {}),
    "sam_per_replica": ("sam", {"ascent": "per_replica"}),
    "looksam": ("looksam", {}),
    "nusam": ("nusam", {}),
}
# Their one-device runs: the per-replica ascent of 2 replicas is 2
# micro-batches (m-sharpness, m = BATCH / 2).
SINGLE = {
    "sam": ("sam", {}),
    "sam_per_replica": ("sam", {"batch_splits": 2}),
    "looksam": ("looksam", {}),
    "nusam": ("nusam", {}),
}


def dataset(with_labels: bool = True) -> tf.data.Dataset:
    """The global batches, in order."""
    x, y = batches()
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    data = (x, y) if with_labels else x
    return tf.data.Dataset.from_tensor_slices(data).batch(BATCH)


def train(case: str, callbacks=(), **options) -> SAMModel:
    sam = SAMModel(reference_mlp(init_params()), **CASES[case][0], **options)
    compile_sgd(sam)
    sam.fit(dataset(), shuffle=False, verbose=0, callbacks=list(callbacks))
    return sam


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def results(key: str, sam: SAMModel, evaluate: bool = False) -> dict:
    """The run's flat weights and all its variables (`sam.variables`: the
    weights and the SAM state); with `evaluate`, the loss that `evaluate`
    gives and the logits that `predict` gives on the same batches."""
    out = {
        f"{key}/weights": flat(sam.inner.get_weights()),
        f"{key}/variables": flat(v.numpy() for v in sam.variables),
    }
    if evaluate:
        logs = sam.evaluate(dataset(), verbose=0, return_dict=True)
        out[f"{key}/evaluate"] = np.float64(logs["loss"])
        out[f"{key}/predict"] = sam.predict(dataset(False), verbose=0)
    return out


def error(run) -> np.str_:
    """What `run()` raises, as "Type: message" ("" if nothing)."""
    try:
        run()
    except Exception as e:  # the tests read which
        return np.str_(f"{type(e).__name__}: {e}")
    return np.str_("")


def errors() -> dict:
    """What `fit` raises for a plain Keras model under the strategy, and
    `fit` and `evaluate` for a SAMModel with `steps_per_execution=2`."""
    with STRATEGY.scope():
        plain = reference_mlp(init_params())
        compile_sgd(plain)
        sam = SAMModel(reference_mlp(init_params()))
        compile_sgd(sam, steps_per_execution=2)
    return {
        "plain/fit_error": error(
            lambda: plain.fit(dataset(), shuffle=False, verbose=0)
        ),
        "steps_per_execution/fit_error": error(
            lambda: sam.fit(dataset(), shuffle=False, verbose=0)
        ),
        "steps_per_execution/evaluate_error": error(
            lambda: sam.evaluate(dataset(), verbose=0)
        ),
    }


def backup(directory: pathlib.Path) -> keras.callbacks.BackupAndRestore:
    """The callback of the `sam` run, given the `backup_dir` both workers
    share, its files kept (`delete_checkpoint=False`). Backups change
    nothing in the run: its other results are what they are without."""
    return keras.callbacks.BackupAndRestore(directory, delete_checkpoint=False)


def backups(directory: pathlib.Path, index: int) -> dict:
    """Where this worker's `BackupAndRestore` (`backup`) wrote: the files
    in its subdirectory, and any file in the shared directory itself."""
    own = sorted(f.name for f in (directory / f"worker_{index}").iterdir())
    shared = sorted(f.name for f in directory.iterdir() if f.is_file())
    return {"backups/own": np.array(own), "backups/shared": np.array(shared)}


def main(out_dir: str) -> None:
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    first = next(iter(STRATEGY.experimental_distribute_dataset(dataset())))
    out = {"shard": STRATEGY.experimental_local_results(first[0])[0].numpy()}
    directory = pathlib.Path(out_dir) / "backups"
    for key, (case, options) in RUNS.items():
        callbacks = [backup(directory)] if key == "sam" else []
        with STRATEGY.scope():
            out |= results(key, train(case, callbacks, **options), key == "sam")
    for key in list(SINGLE)[index::2]:
        case, options = SINGLE[key]
        out |= results(f"{key}/single", train(case, **options), key == "sam")
    out |= backups(directory, index)
    out |= errors()
    np.savez(pathlib.Path(out_dir) / f"worker{index}.npz", **out)


if __name__ == "__main__":
    main(sys.argv[1])
