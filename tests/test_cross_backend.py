"""The same initial weights and batches give the same weights on
TensorFlow, JAX and PyTorch (each other backend runs in a subprocess).

The tensorflow session of `make test` compares itself with the two others,
which covers every pair; the other sessions skip it.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND
from cross_backend import CASES, trajectories

HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def local():
    return trajectories()


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the tensorflow session compares all three backends",
)
@pytest.mark.parametrize("other", ["jax", "torch"])
def test_same_weights_on_every_backend(other, local, tmp_path):
    out = tmp_path / f"{other}.npz"
    env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(HERE / "cross_backend.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = np.load(out)
    for name in CASES:
        np.testing.assert_allclose(
            local[name],
            theirs[name],
            rtol=2e-6,
            atol=1e-7,
            err_msg=f"{name}: {BACKEND} vs {other}",
        )
