"""Distributed training (docs/distributed.md): the presets that cover every
option (`CASES`) on several devices equal one device (the NumPy reference)
with `ascent="global"`, and the NumPy per-replica reference with
`ascent="per_replica"` (one preset per branch of the per-replica step,
`PER_REPLICA_CASES`); replicas never drift apart.

Devices are set up before the backend starts, so each backend's runs go in a
subprocess of their own (`distributed_tf.py`, `distributed_jax.py`); each
runs in the `make test` session of its own backend, once.
"""

import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND
from support.distributed import (
    CASES,
    PER_REPLICA_CASES,
    SEQUENCE,
    SPLIT_CASES,
    XLA_CASES,
    reference,
    sequence_ascent,
)
from support.processes import (
    SUPPORT,
    TIMEOUT_SCALE,
    Results,
    environment,
    run_script,
)

pytestmark = pytest.mark.slow


def _run(script: str, tmp_path_factory, xla_flags: str = "") -> Results:
    """The results of `script`: each test fails alone if the script did not
    reach its result (a crash, or the time limit on a slow machine)."""
    out = tmp_path_factory.mktemp("distributed") / "out.npz"
    timeout = 1200 * TIMEOUT_SCALE
    return run_script(SUPPORT / script, out, timeout, xla_flags=xla_flags)


# ---- TensorFlow: MirroredStrategy on 2 logical CPUs ------------------------

tf_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's"
)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    return _run("distributed_tf.py", tmp_path_factory)


@tf_only
@pytest.mark.parametrize("case", list(CASES))
def test_mirrored_global_ascent_equals_one_device(mirrored, case):
    """The one-device trajectory is the NumPy reference's (test_golden.py
    holds every case to it on this backend), at its tolerance: WSAM's
    decoupled term multiplies the rounding of g_s - g by gamma / (1 -
    gamma) = 32 (1.3e-6 seen on 0.08)."""
    np.testing.assert_allclose(
        mirrored[f"{case}/global"], reference(case), rtol=1e-5, atol=1e-6
    )


@tf_only
@pytest.mark.parametrize("case", PER_REPLICA_CASES)
def test_mirrored_per_replica_ascent_matches_reference(mirrored, case):
    expected = reference(case, replicas=2)
    np.testing.assert_allclose(
        mirrored[f"{case}/per_replica"], expected, rtol=1e-5, atol=1e-6
    )
    # Not the global trajectory: the test tells the two apart.
    assert np.max(np.abs(expected - reference(case))) > 1e-3


@tf_only
@pytest.mark.parametrize(
    "case, ascent",
    [(case, "global") for case in CASES]
    + [(case, "per_replica") for case in PER_REPLICA_CASES],
)
def test_replicas_hold_identical_weights_and_state(mirrored, case, ascent):
    assert mirrored[f"{case}/{ascent}/spread"] == 0.0


def _expected(name: str, runs: dict, replicas: int | None = None):
    """What model `name` trains to on one device (the reference for SAM)."""
    if name == "plain":
        return runs["plain/single"]
    return reference(name, replicas=replicas)


@tf_only
def test_mirrored_models_in_sequence_each_with_a_new_strategy(mirrored):
    """A notebook or a sweep: plain Keras models and SAMModels of several
    presets, with both ascents, trained one after the other in one process,
    each under a new MirroredStrategy (TensorFlow numbers every strategy's
    collectives alike; a SAMModel's strategy takes keys of its own). Each
    equals its run on one device (its per-replica reference with
    `"per_replica"`)."""
    for i, name in enumerate(SEQUENCE):
        per_replica = sequence_ascent(i) == "per_replica"
        np.testing.assert_allclose(
            mirrored[f"sequence/{i}"],
            _expected(name, mirrored, 2 if per_replica else None),
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"model {i} ({name}, {sequence_ascent(i)})",
        )


@tf_only
def test_plain_models_under_the_strategy_of_sam_models(mirrored):
    """Plain Keras models before and after every SAMModel of the suite under
    one strategy train as on one device."""
    for key in ("plain/first", "plain/last"):
        np.testing.assert_allclose(
            mirrored[key], mirrored["plain/single"], atol=1e-6
        )


@tf_only
@pytest.mark.parametrize("case", SPLIT_CASES)
def test_mirrored_per_replica_micro_batches_match_reference(mirrored, case):
    """Two replicas, each batch split in two (`batch_splits=2`): the
    per-shard reference with four shards, as JAX's four devices and one
    device with `batch_splits=4` give it."""
    np.testing.assert_allclose(
        mirrored[f"{case}/per_replica_splits"],
        reference(case, replicas=4),
        rtol=1e-5,
        atol=1e-6,
    )


@tf_only
def test_micro_batches_compile_with_xla(mirrored):
    np.testing.assert_allclose(
        mirrored["sam/splits_xla"],
        reference("sam", replicas=4),
        rtol=1e-5,
        atol=1e-6,
    )


@tf_only
def test_mirrored_global_ascent_with_micro_batches_is_a_clear_error(mirrored):
    message = str(mirrored["global_splits_error"])
    assert "batch_splits=2" in message and "2 replicas" in message
    assert "ascent='per_replica'" in message


@tf_only
@pytest.mark.parametrize("loss_scaling", [True, False])
def test_a_skipped_step_changes_nothing_and_counts_once(mirrored, loss_scaling):
    """A batch with a NaN input on one replica: both replicas skip the step
    together (the optimizer's update runs in the cross-replica context, as
    Keras' `LossScaleOptimizer` runs it), it counts once, not once per
    replica, and the run ends where the run without that batch ends."""
    key = f"skipping/{loss_scaling}"
    np.testing.assert_array_equal(mirrored[f"{key}/sam_skipped"], [1.0])
    np.testing.assert_allclose(
        mirrored[f"{key}/weights"], mirrored["skipping/without"], atol=1e-6
    )


@tf_only
@pytest.mark.parametrize("case", XLA_CASES)
def test_jit_compile_on_one_device(mirrored, case):
    """XLA, what a TPU runs: each kind of step compiles and follows the
    reference (the one-device runs of `distributed_tf.py`; `XLA_CASES` says
    which cases and why those)."""
    np.testing.assert_allclose(
        mirrored[f"{case}/single"], reference(case), rtol=1e-5, atol=1e-6
    )


# ---- JAX: keras.distribution on 4 host devices -----------------------------

jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="keras.distribution runs on JAX only"
)


@pytest.fixture(scope="module")
def distributed_jax(tmp_path_factory):
    return _run(
        "distributed_jax.py",
        tmp_path_factory,
        xla_flags="--xla_force_host_platform_device_count=4",
    )


@jax_only
@pytest.mark.parametrize("case", list(CASES))
def test_data_parallel_equals_one_device(distributed_jax, case):
    """The one-device trajectory is the NumPy reference's (test_golden.py
    holds every case to it on this backend)."""
    np.testing.assert_allclose(
        distributed_jax[f"{case}/data_parallel"],
        reference(case),
        rtol=1e-5,
        atol=1e-6,
    )


@jax_only
def test_data_parallel_models_in_sequence(distributed_jax):
    """Plain Keras models and SAMModels one after the other in one process,
    each under a new `DataParallel` distribution, and plain models under the
    distribution of every SAMModel of the suite: each as on one device."""
    for i, name in enumerate(SEQUENCE):
        np.testing.assert_allclose(
            distributed_jax[f"sequence/global/{i}"],
            _expected(name, distributed_jax),
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"model {i} ({name})",
        )
    for key in ("plain/first", "plain/last"):
        np.testing.assert_allclose(
            distributed_jax[key], distributed_jax["plain/single"], atol=1e-6
        )


@jax_only
@pytest.mark.parametrize("case", ["sam", "nusam"])
def test_model_parallel_with_sharded_kernels_equals_one_device(
    distributed_jax, case
):
    specs = list(distributed_jax[f"{case}/model_parallel/kernel_specs"])
    assert specs == ["P(None, 'model')", "P('model', None)"]
    np.testing.assert_allclose(
        distributed_jax[f"{case}/model_parallel"],
        distributed_jax[f"{case}/single"],
        atol=1e-6,
    )


@jax_only
@pytest.mark.parametrize("case", ["sam", "nusam"])
def test_model_parallel_with_attention_heads_sharded_equals_one_device(
    distributed_jax, case
):
    """nuSAM's power iteration on EinsumDense kernels split by heads."""
    specs = list(
        distributed_jax[f"attention_{case}/model_parallel/kernel_specs"]
    )
    assert specs == ["P(None, 'model', None)"] * 3 + [
        "P('model', None, None)",
        "P(None, None)",  # the classifier's Dense kernel, replicated
    ]
    np.testing.assert_allclose(
        distributed_jax[f"attention_{case}/model_parallel"],
        distributed_jax[f"attention_{case}/single"],
        atol=1e-6,
    )


@jax_only
@pytest.mark.parametrize("case", PER_REPLICA_CASES)
def test_data_parallel_per_replica_ascent_equals_micro_batches(
    distributed_jax, case
):
    """`ascent="per_replica"` on 4 devices, each device's shard a replica
    computed where it lives, equals `batch_splits=4` on one device, and
    both the per-shard reference (m-sharpness, m = 16 / 4)."""
    np.testing.assert_allclose(
        distributed_jax[f"{case}/per_replica"],
        distributed_jax[f"{case}/splits"],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        distributed_jax[f"{case}/splits"],
        reference(case, replicas=4),
        rtol=1e-5,
        atol=1e-6,
    )


@jax_only
def test_per_replica_ascent_under_model_parallel_is_a_clear_error(
    distributed_jax,
):
    message = str(distributed_jax["per_replica_error"])
    assert message.startswith("ascent='per_replica' on the JAX backend")
    assert "received ModelParallel" in message
    assert "Use ascent='global'" in message


# ---- PyTorch: one device ---------------------------------------------------


TORCH_PROCESS = """
import sys
import keras
import torch
from support.helpers import compile_sgd, toy_classification

from keras_sam import SAMModel

torch.distributed.init_process_group(
    "gloo", init_method=sys.argv[1], rank=int(sys.argv[2]), world_size=2
)
sam = SAMModel(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]))
compile_sgd(sam)
try:
    sam.fit(*toy_classification(8), verbose=0)
except NotImplementedError as e:
    print(e)
"""


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is PyTorch's")
def test_torch_process_group_is_a_clear_error(tmp_path):
    env = environment(backend="torch")
    init = f"file://{tmp_path / 'rendezvous'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TORCH_PROCESS, init, str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert stdout.startswith(
            "SAMModel on the torch backend trains on one device"
        ), stdout + stderr[-3000:]
        assert "the 2 processes" in stdout


# ---- examples/tpu_train.py -------------------------------------------------


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="TensorFlow's run; JAX's, on 4 devices and on 2 processes, is "
    "test_multi_process_jax.py's",
)
def test_tpu_example_runs_without_a_tpu(capsys):
    from examples import tpu_train

    tpu_train.main(
        [
            *("--steps", "3", "--batch-size", "32"),
            *("--dim", "16", "--depth", "1", "--heads", "2"),
        ]
    )
    stdout = capsys.readouterr().out
    assert (
        "No TPU found (TPUClusterResolver): training with the default "
        "strategy" in stdout
    )
    assert "final: accuracy=" in stdout
