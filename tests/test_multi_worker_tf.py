"""`SAMModel` under `tf.distribute.MultiWorkerMirroredStrategy`: two worker
processes on localhost, one CPU replica each (`multi_worker_tf.py`, run
once for every test here). Both workers hold the same weights and SAM
state, which follow the NumPy reference and one process; `evaluate` and
`predict` give what one process gives; a plain Keras model still fails.
"""

import json

import numpy as np
import pytest
from conftest import BACKEND
from support.distributed import batches, reference
from support.golden import CASES
from support.helpers import LR
from support.processes import SUPPORT, free_ports, run_ranks
from support.reference import Reference, init_params, loss_and_grad

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND != "tensorflow",
        reason="MultiWorkerMirroredStrategy is TensorFlow's (tf.distribute)",
    ),
]

# The runs of `multi_worker_tf.py`: (preset, replicas of the reference:
# `None` for the global ascent).
RUNS = {
    "sam": ("sam", None),
    "sam_per_replica": ("sam", 2),
    "looksam": ("looksam", None),
    "nusam": ("nusam", None),
}


def _tf_config(ports: list, index: int) -> str:
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    task = {"type": "worker", "index": index}
    return json.dumps({"cluster": cluster, "task": task})


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> list:
    """What each of the two workers saved."""
    out = tmp_path_factory.mktemp("multi_worker")
    ports = free_ports(2)
    run_ranks(
        [SUPPORT / "multi_worker_tf.py", out],
        lambda rank: {"TF_CONFIG": _tf_config(ports, rank)},
        backend="tensorflow",
    )
    return [dict(np.load(out / f"worker{rank}.npz")) for rank in range(2)]


def _one_process(workers: list, key: str) -> np.ndarray:
    """A one-process result (each worker trained half of them)."""
    (value,) = [w[key] for w in workers if key in w]
    return value


@pytest.mark.parametrize("run", list(RUNS))
def test_workers_hold_identical_weights_and_state(workers, run):
    for what in ("weights", "variables"):
        np.testing.assert_array_equal(
            workers[0][f"{run}/{what}"], workers[1][f"{run}/{what}"]
        )


@pytest.mark.parametrize("run", list(RUNS))
def test_trains_as_the_reference_and_one_process(workers, run):
    """The global ascent as one device; `ascent="per_replica"` as the
    per-replica reference with each worker's half of the batch a replica
    (and one process with `batch_splits=2`)."""
    case, replicas = RUNS[run]
    expected = reference(case, replicas=replicas)
    weights = workers[0][f"{run}/weights"]
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        weights, _one_process(workers, f"{run}/single/weights"), atol=1e-6
    )
    if replicas is not None:  # the test tells the two ascents apart
        assert np.max(np.abs(expected - reference(case))) > 1e-3


def test_each_worker_takes_a_contiguous_half_of_each_global_batch(workers):
    """How the strategy shards the `tf.data.Dataset` of global batches that
    Keras distributes (what `step_per_replica`'s shards assume)."""
    x, _ = batches()
    half = x.shape[1] // 2
    for rank, worker in enumerate(workers):
        np.testing.assert_array_equal(
            worker["shard"], x[0, rank * half : (rank + 1) * half]
        )


def test_evaluate_and_predict_give_what_one_process_gives(workers):
    x, y = batches()
    single_loss = _one_process(workers, "sam/single/evaluate")
    ref = Reference(CASES["sam"][1], init_params(), LR)
    params = ref.flat.unflatten(reference("sam"))
    numpy_loss, _ = loss_and_grad(params, x.reshape(-1, 6), y.reshape(-1))
    single_logits = _one_process(workers, "sam/single/predict")
    assert single_logits.shape == (x.shape[0] * x.shape[1], 3)
    for worker in workers:
        np.testing.assert_allclose(worker["sam/evaluate"], single_loss, 1e-6)
        np.testing.assert_allclose(worker["sam/evaluate"], numpy_loss, 1e-6)
        np.testing.assert_allclose(
            worker["sam/predict"], single_logits, atol=1e-6
        )


def test_plain_keras_model_still_fails(workers):
    """Keras 3.15's TensorFlow trainer cannot `fit` any model under
    MultiWorkerMirroredStrategy on several workers: it builds the model
    from `strategy.reduce("MEAN", batch)` of the distributed first batch,
    which this strategy cannot do (keras-team/keras#20585, open). keras-sam
    works around it for SAMModel alone. When this test fails, Keras has
    fixed it: the workaround (`keras_internals.first_local_batch`) and the
    docs' note can go."""
    for worker in workers:
        error = str(worker["plain/fit_error"])
        assert error.startswith("ValueError: Attempt to convert a value")
        assert "PerReplica" in error and "with an unsupported type" in error


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_steps_per_execution_is_a_clear_error(workers, method):
    """Keras' loop of several steps fails under this strategy for any
    model ("You must feed a value for placeholder tensor ...")."""
    for worker in workers:
        error = str(worker[f"steps_per_execution/{method}_error"])
        assert error.startswith("ValueError: steps_per_execution=2 ")
        assert "MultiWorkerMirroredStrategy on several workers" in error
        assert "Compile with steps_per_execution=1" in error


def test_workers_sharing_a_backup_dir_back_up_to_their_own(workers):
    """One `backup_dir` given to both workers' `BackupAndRestore`: each
    writes its own subdirectory (one HDF5 file cannot be written by two
    processes)."""
    for worker in workers:
        assert list(worker["backups/own"]) == [
            "latest.weights.h5",
            "training_metadata.json",
        ]
        assert len(worker["backups/shared"]) == 0
