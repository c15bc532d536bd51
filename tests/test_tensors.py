"""The global reductions every method shares: float32 whatever the dtype."""

import keras
import numpy as np
import pytest

from keras_sam.src.methods.tensors import all_finite, global_dot, global_norm


def _tensors(dtype):
    # A norm of sqrt(1000 * 10^2 + 100 * 3^2) = 317.65: its square passes
    # float16's largest value (65504).
    return [
        keras.ops.convert_to_tensor(np.full((1000,), 10.0), dtype),
        keras.ops.convert_to_tensor(np.full((10, 10), -3.0), dtype),
    ]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_norms_and_dots_are_float32(dtype):
    tensors = _tensors(dtype)
    expected = np.sqrt(1000 * 100.0 + 100 * 9.0)
    norm = global_norm(tensors)
    assert keras.backend.standardize_dtype(norm.dtype) == "float32"
    np.testing.assert_allclose(float(norm), expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(global_dot(tensors, tensors)), expected**2, rtol=1e-6
    )
    assert bool(all_finite(tensors))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_all_finite_finds_inf_and_nan(dtype):
    for bad in (np.inf, np.nan):
        tensors = _tensors(dtype)
        values = np.full((10, 10), -3.0)
        values[3, 4] = bad
        tensors[1] = keras.ops.convert_to_tensor(values, dtype)
        assert not bool(all_finite(tensors))
