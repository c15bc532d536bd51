"""F-SAM's EMA and direction (Alg. 1, lines 5 and 7)."""

import numpy as np
from keras import ops

from keras_sam.src.methods import friendly


def test_ema_starts_from_zero_and_direction_uses_the_updated_ema():
    g1 = [ops.convert_to_tensor(np.array([1.0, -2.0], "float32"))]
    g2 = [ops.convert_to_tensor(np.array([3.0, 0.5], "float32"))]
    m0 = [ops.zeros((2,))]
    m1 = friendly.ema_update(m0, g1, 0.9)
    m2 = friendly.ema_update(m1, g2, 0.9)
    np.testing.assert_allclose(
        ops.convert_to_numpy(m1[0]), 0.1 * np.array([1.0, -2.0]), 1e-6
    )
    expected_m2 = 0.9 * 0.1 * np.array([1.0, -2.0]) + 0.1 * np.array([3.0, 0.5])
    np.testing.assert_allclose(ops.convert_to_numpy(m2[0]), expected_m2, 1e-6)
    d = friendly.direction(g2, m2, 0.5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(d[0]),
        np.array([3.0, 0.5]) - 0.5 * expected_m2,
        1e-6,
    )
