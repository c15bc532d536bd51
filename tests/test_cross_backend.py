"""The same initial weights and batches give the same weights on
TensorFlow, JAX and PyTorch (each other backend runs in a subprocess).

The tensorflow session of `make test` compares itself with the two others,
which covers every pair; the other sessions skip it.
"""

import numpy as np
import pytest
from conftest import BACKEND
from support.cross_backend import CASES, trajectories
from support.processes import SUPPORT, run_python


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
    run_python([SUPPORT / "cross_backend.py", out], backend=other, timeout=300)
    theirs = np.load(out)
    for name in CASES:
        np.testing.assert_allclose(
            local[name],
            theirs[name],
            rtol=2e-6,
            atol=1e-7,
            err_msg=f"{name}: {BACKEND} vs {other}",
        )
