"""One rank of a multi-process run under `keras.distribution` (JAX).

`python multi_process_jax.py OUT_DIR` on every process, each with
`KERAS_BACKEND=jax`, `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
`KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID` and
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (the test imports its
tables on every backend, so JAX is imported only in `main`): after
`keras.distribution.initialize()`, every case of `CASES` trains over the
global devices, fed as `RUNS` says:

- "dataset": a `tf.data.Dataset` of the global batches; Keras rebatches it
  and keeps this process's part of every batch (`auto_shard_dataset`).
- "arrays": this process's part of every global batch as NumPy arrays, with
  `auto_shard_dataset = False`.

The processes also share out the cases' runs on one device
(`ONE_DEVICE`), each rank training every `process_count`-th. Rank r saves
`OUT_DIR/r.npz`: per case and feed the flat weights and the SAM state, and
its share of the one-device runs.
"""

from __future__ import annotations

import pathlib
import sys

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from keras_sam import SAMModel
from support.distributed import BATCH, STEPS, batches
from support.golden import CASES as GOLDEN
from support.helpers import compile_sgd, reference_mlp
from support.reference import init_params

# case -> (golden case or "plain", SAMModel options, distribution)
CASES = {
    "plain": ("plain", {}, "data_parallel"),
    "sam": ("sam", {}, "data_parallel"),
    "sam_per_replica": ("sam", {"ascent": "per_replica"}, "data_parallel"),
    "looksam": ("looksam", {}, "data_parallel"),
    "nusam_model_parallel": ("nusam", {}, "model_parallel"),
}
# The same trajectories on one device: each device's replica of
# `ascent="per_replica"` is one of 4 micro-batches.
ONE_DEVICE = {
    "plain": ("plain", {}),
    "sam": ("sam", {}),
    "sam_per_replica": ("sam", {"batch_splits": 4}),
    "looksam": ("looksam", {}),
    "nusam_model_parallel": ("nusam", {}),
}
# Every case is fed per-process arrays; the dataset, which Keras shards,
# feeds the cases where the shard each device gets matters: the replicas of
# `ascent="per_replica"`, and ModelParallel's batch axis across processes.
RUNS = [
    *((case, "arrays") for case in CASES),
    ("sam_per_replica", "dataset"),
    ("nusam_model_parallel", "dataset"),
]


def global_batches() -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels, `STEPS` global batches of `BATCH` in a row."""
    x, y = batches()
    return x.reshape(-1, x.shape[-1]), y.reshape(-1)


def process_part(array: np.ndarray, rank: int, processes: int) -> np.ndarray:
    """Process `rank`'s part of every global batch of `array`: rows
    `[rank * BATCH / processes, (rank + 1) * BATCH / processes)` of each,
    the rows its devices hold (`jax.devices()` lists each process's devices
    together, in process order)."""
    part = BATCH // processes
    batched = array.reshape(STEPS, BATCH, *array.shape[1:])
    rows = batched[:, rank * part : (rank + 1) * part]
    return rows.reshape(-1, *array.shape[1:])


def feed(name: str, rank: int, processes: int) -> dict:
    """`fit`'s data arguments for feed `name` (see the module docstring)."""
    x, y = global_batches()
    if name == "arrays":
        return dict(
            x=process_part(x, rank, processes),
            y=process_part(y, rank, processes),
            batch_size=BATCH // processes,
        )
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dict(x=dataset.batch(BATCH, drop_remainder=True))


def distribution(kind: str, auto_shard_dataset: bool):
    """`DataParallel` over the global devices, or `ModelParallel` on a
    (2, 2) "batch" x "model" mesh with the MLP's kernels split over "model"
    (each process one row of the mesh: the batch axis across processes)."""
    # Imported here: it sets KERAS_BACKEND, and the test imports this module.
    from support.distributed_jax import MLP_LAYOUTS, model_parallel

    devices = keras.distribution.list_devices()
    if kind == "data_parallel":
        return keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=auto_shard_dataset
        )
    result = model_parallel(devices, MLP_LAYOUTS)
    result.auto_shard_dataset = auto_shard_dataset
    return result


def fit(name: str, data: dict, **options) -> dict:
    """The flat weights and SAM state after one epoch of `data`; `name` is
    a golden case, or "plain" for the model without SAM."""
    model = reference_mlp(init_params())
    if name != "plain":
        model = SAMModel(model, **GOLDEN[name][0], **options)
    compile_sgd(model)
    model.fit(**data, shuffle=False, verbose=0)
    if name == "plain":
        return {"weights": _flat(model.get_weights())}
    state = model.sam_state
    out = {
        "weights": _flat(model.inner.get_weights()),
        "iterations": keras.ops.convert_to_numpy(state.iterations),
    }
    for field in ("g_v", "u"):
        if getattr(state, field):
            out[field] = _flat(getattr(state, field))
    return out


def _flat(values: list) -> np.ndarray:
    return np.concatenate(
        [keras.ops.convert_to_numpy(v).ravel() for v in values]
    )


def main(out_dir: str) -> None:
    import jax

    keras.distribution.initialize()
    assert jax.process_count() == 2 and jax.device_count() == 4
    rank, processes = jax.process_index(), jax.process_count()
    out = {}
    for case, feed_name in RUNS:
        name, options, kind = CASES[case]
        # Fresh layer names for the layout map; without the full garbage
        # collection (most of a second).
        keras.backend.clear_session(free_memory=False)
        data = feed(feed_name, rank, processes)
        with distribution(kind, feed_name == "dataset").scope():
            result = fit(name, data, **options)
        for key, value in result.items():
            out[f"{case}/{feed_name}/{key}"] = value
    shared = list(ONE_DEVICE.items())[rank::processes]
    for case, (name, options) in shared:
        data = dict(zip(("x", "y"), global_batches()), batch_size=BATCH)
        for key, value in fit(name, data, **options).items():
            out[f"{case}/one_device/{key}"] = value
    np.savez(pathlib.Path(out_dir) / f"{rank}.npz", **out)


if __name__ == "__main__":
    main(sys.argv[1])
