"""Multi-process JAX (docs/distributed.md): 2 processes with 2 host devices
each, joined by `keras.distribution.initialize()`, train over the 4 global
devices as one process does, fed a `tf.data` dataset of the global batches
or each process's own part of them as NumPy arrays.

`multi_process_jax.py` trains every case in one 2-process run; the tests
read what each rank saved. `examples/tpu_train.py --multi-host` runs on 2
processes without TensorFlow.
"""

import os

import numpy as np
import pytest
from conftest import BACKEND
from support.distributed import STEPS, batches
from support.golden import CASES as GOLDEN
from support.helpers import LR
from support.multi_process_jax import CASES, RUNS
from support.processes import ROOT, SUPPORT, TESTS, jax_cluster, run_ranks
from support.reference import Config, Reference, init_params, step_per_replica

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND != "jax", reason="keras.distribution runs on JAX only"
    ),
]

TWO_DEVICES = "--xla_force_host_platform_device_count=2"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 ranks saved."""
    out = tmp_path_factory.mktemp("multi_process")
    run_ranks(
        [SUPPORT / "multi_process_jax.py", out],
        jax_cluster(2),
        backend="jax",
        xla_flags=TWO_DEVICES,
    )
    return [dict(np.load(out / f"{rank}.npz")) for rank in range(2)]


@pytest.fixture(scope="module")
def one_device(ranks) -> dict:
    """The cases' runs on one device (each rank trained some)."""
    return {k: v for r in ranks for k, v in r.items() if "/one_device/" in k}


def _trained(case: str) -> Reference:
    """The NumPy reference after the case's steps: plain SGD for "plain";
    with `ascent="per_replica"`, each of the 4 devices a replica (4 equal,
    contiguous shards of every global batch, in device order)."""
    name, options, _ = CASES[case]
    config = Config() if name == "plain" else GOLDEN[name][1]
    ref = Reference(config, init_params(), LR)
    x, y = batches()
    for step in range(STEPS):
        if name == "plain":
            ref.apply(ref.grad(ref.theta, x[step], y[step], None)[1])
        elif options.get("ascent") == "per_replica":
            step_per_replica(ref, x[step], y[step], replicas=4)
        else:
            ref.step(x[step], y[step])
    return ref


@pytest.fixture(scope="module")
def expected() -> dict:
    return {case: _trained(case) for case in CASES}


@pytest.mark.parametrize("case, feed", RUNS)
def test_both_processes_hold_identical_weights_and_state(ranks, case, feed):
    keys = [k for k in ranks[0] if k.startswith(f"{case}/{feed}/")]
    assert keys
    for key in keys:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], key)


@pytest.mark.parametrize("case, feed", RUNS)
def test_weights_match_reference(ranks, expected, case, feed):
    for rank in ranks:
        np.testing.assert_allclose(
            rank[f"{case}/{feed}/weights"],
            expected[case].theta,
            rtol=1e-5,
            atol=1e-6,
        )


def test_per_replica_ascent_is_not_the_global_trajectory(expected):
    """The test tells the two trajectories apart."""
    per_replica, whole = expected["sam_per_replica"], expected["sam"]
    assert np.max(np.abs(per_replica.theta - whole.theta)) > 1e-3


@pytest.mark.parametrize("case, feed", RUNS)
def test_equals_one_device(ranks, one_device, case, feed):
    """Weights and state as on one device (`ascent="per_replica"` there:
    `batch_splits=4`)."""
    names = [k.split("/")[-1] for k in one_device if k.startswith(f"{case}/")]
    assert "weights" in names
    for name in names:
        np.testing.assert_allclose(
            ranks[0][f"{case}/{feed}/{name}"],
            one_device[f"{case}/one_device/{name}"],
            atol=1e-6,
            err_msg=name,
        )


def test_looksam_g_v_matches_reference(ranks, expected):
    """LookSAM's state across steps: its stored g_v."""
    np.testing.assert_allclose(
        ranks[0]["looksam/arrays/g_v"],
        expected["looksam"].g_v,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("feed", ["arrays", "dataset"])
def test_nusam_u_matches_reference(ranks, expected, feed):
    """nuSAM's fan-in vectors, advanced on the sharded kernels."""
    u = expected["nusam_model_parallel"].u
    np.testing.assert_allclose(
        ranks[0][f"nusam_model_parallel/{feed}/u"],
        np.concatenate([u["w1"], u["w2"]]),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("case, feed", [r for r in RUNS if r[0] != "plain"])
def test_every_step_counted_once(ranks, case, feed):
    assert ranks[0][f"{case}/{feed}/iterations"] == STEPS


# ---- examples/tpu_train.py --multi-host -------------------------------------

EXAMPLE = [
    ROOT / "examples" / "tpu_train.py",
    *("--steps", "3", "--batch-size", "32"),
    *("--dim", "16", "--depth", "1", "--heads", "2"),
]


def _final_loss(stdout: str) -> float:
    """The loss of the example's last line, `final: accuracy=..., loss=...`."""
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("final: "), stdout[-2000:]
    logs = dict(item.split("=") for item in line[len("final: ") :].split(", "))
    return float(logs["loss"])


def test_tpu_example_on_two_processes_equals_one(tmp_path):
    """Each process feeds its part of every global batch, as NumPy arrays:
    the same final loss as one process on 4 devices. TensorFlow cannot be
    imported in either run (a module in its place raises ImportError)."""
    (tmp_path / "tensorflow.py").write_text(
        'raise ImportError("this run must not need TensorFlow")\n'
    )
    no_tensorflow = os.pathsep.join([str(tmp_path), str(TESTS)])
    (one,) = run_ranks(
        EXAMPLE,
        lambda rank: {"PYTHONPATH": no_tensorflow},
        ranks=1,
        backend="jax",
        xla_flags="--xla_force_host_platform_device_count=4",
    )
    two = run_ranks(
        [*EXAMPLE, "--multi-host"],
        jax_cluster(2, PYTHONPATH=no_tensorflow),
        backend="jax",
        xla_flags=TWO_DEVICES,
    )
    for stdout in (one, *two):
        assert "DataParallel over 4 devices." in stdout
    losses = [_final_loss(stdout) for stdout in two]
    assert losses[0] == losses[1]
    np.testing.assert_allclose(losses, _final_loss(one), rtol=0, atol=1e-5)
