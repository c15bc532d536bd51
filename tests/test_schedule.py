"""The schedule axis: when an ascent is taken, LookSAM's g_v and its reuse."""

import numpy as np
import pytest
from keras import ops
from support.reference import rst_draw

from keras_sam.src.methods import schedule


def _t(arrays):
    return [ops.convert_to_tensor(a) for a in arrays]


@pytest.mark.parametrize(
    "reuse, k, expected",
    [
        (None, None, [0, 0, 1, 1, 1, 1, 1, 1]),
        ("look", 3, [0, 0, 1, 0, 0, 1, 0, 0]),
        ("every_k", 2, [0, 0, 1, 0, 1, 0, 1, 0]),
        ("look", 1, [0, 0, 1, 1, 1, 1, 1, 1]),
    ],
)
def test_ascent_steps(reuse, k, expected):
    # start_step = 2: t = step - 2
    taken = [
        bool(ops.convert_to_numpy(schedule.takes_ascent(step - 2, reuse, k)))
        for step in range(8)
    ]
    assert taken == [bool(e) for e in expected]


def test_look_projection_is_orthogonal_to_g_globally():
    rng = np.random.default_rng(0)
    g = [
        rng.normal(size=(3, 2)).astype("float32"),
        rng.normal(size=4).astype("float32"),
    ]
    gs = [
        rng.normal(size=(3, 2)).astype("float32"),
        rng.normal(size=4).astype("float32"),
    ]
    g_v = [
        ops.convert_to_numpy(v) for v in schedule.look_projection(_t(g), _t(gs))
    ]
    flat = lambda xs: np.concatenate([np.ravel(x) for x in xs])  # noqa: E731
    fg, fgs = flat(g), flat(gs)
    expected = fgs - fg * (fg @ fgs) / (fg @ fg)
    np.testing.assert_allclose(flat(g_v), expected, rtol=1e-5, atol=1e-6)
    # Global, not per tensor: each tensor alone is generally not orthogonal.
    assert abs(flat(g_v) @ fg) < 1e-4
    assert abs(np.ravel(g_v[0]) @ np.ravel(g[0])) > 1e-3


@pytest.mark.parametrize(
    "scale, expected",
    [
        # ||g|| = 5, ||g_v|| = 10: g + 0.5 * 5 / 10 * g_v (Alg. 1).
        ("gradient", [3.0, 6.5]),
        # g + 0.5 * g_v.
        ("stored", [3.0, 9.0]),
        # Stored as g_v / ||g_a|| = g_v / 2: g + 0.5 * 5 * g_v / 2.
        ("relative", [3.0, 16.5]),
    ],
)
def test_look_reuse_scales(scale, expected):
    g = [np.array([3.0, 4.0], "float32")]
    g_v = [np.array([0.0, 10.0], "float32")]
    g_a = [np.array([0.0, 2.0], "float32")]  # the ascent's clean gradient
    stored = schedule.look_stored(_t(g_a), _t(g_v), scale)
    out = schedule.look_reuse(_t(g), stored, 0.5, scale)
    np.testing.assert_allclose(ops.convert_to_numpy(out[0]), expected, 1e-6)


def test_rho_schedule_is_evaluated_at_the_sam_step():
    assert schedule.rho_at(0.2, 7) == 0.2
    value = schedule.rho_at(lambda t: 0.1 * (t + 1), ops.convert_to_tensor(3))
    np.testing.assert_allclose(ops.convert_to_numpy(value), 0.4, rtol=1e-6)


def test_proportional_rho_follows_the_learning_rate():
    """GSAM: (rho - rho_min) / (rho_max - rho_min) = (lr - lr_min) /
    (lr_max - lr_min), through the optimizer's own schedule."""
    import keras

    lr = keras.optimizers.schedules.CosineDecay(
        0.0, 10, warmup_target=2e-3, warmup_steps=4, alpha=0.1
    )
    rho = schedule.ProportionalRho(
        lr, lr_max=2e-3, rho_max=0.6, rho_min=0.1, lr_min=2e-4, start_step=2
    )
    for t in (0.0, 2.0, 5.0, 11.0):
        lr_t = float(ops.convert_to_numpy(lr(t + 2.0)))
        expected = max(0.1 + 0.5 * (lr_t - 2e-4) / (2e-3 - 2e-4), 0.0)
        np.testing.assert_allclose(
            float(ops.convert_to_numpy(schedule.rho_at(rho, t))),
            expected,
            rtol=1e-5,
            atol=1e-7,
        )
    # During warmup lr < lr_min: rho would be negative (big_vision issue
    # 80); it is clipped at 0.
    warmup = schedule.ProportionalRho(lr, lr_max=2e-3, rho_max=0.6, lr_min=2e-4)
    assert float(ops.convert_to_numpy(warmup(0.0))) == 0.0
    # At lr_max, rho_max.
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(rho(2.0))), 0.6, rtol=1e-6
    )
    restored = schedule.ProportionalRho.from_config(rho.get_config())
    assert restored.get_config() == rho.get_config()
    constant = schedule.ProportionalRho(1e-3, lr_max=1e-3, rho_max=0.2)
    np.testing.assert_allclose(float(ops.convert_to_numpy(constant(5))), 0.2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(lr_max=1e-3, rho_max=0.1, rho_min=0.2), "rho_min <= rho_max"),
        (dict(lr_max=1e-3, rho_max=0.1, lr_min=2e-3), "lr_max > lr_min"),
        (dict(lr_max=0.0, rho_max=0.1), "lr_max > lr_min"),
    ],
)
def test_proportional_rho_checks_its_bounds(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        schedule.ProportionalRho(lambda step: 1e-3, **kwargs)


def test_rst_draws_are_the_specified_hash_and_uniform():
    """RST's draws: the hash docs/semantics.md specifies (the reference's),
    past the first base-P digit too; over 20000 steps about a fraction p
    ascend, each seed its own sequence."""
    steps = [0, 1, 2, 7, 32716, 32717, 40000, 10**6, 2**31 - 1]
    for seed in (0, 3):
        draws = [float(schedule.uniform_draw(t, seed)) for t in steps]
        np.testing.assert_allclose(
            draws, [rst_draw(t, seed) for t in steps], rtol=1e-6
        )
    t = ops.arange(20000)
    draws = ops.convert_to_numpy(schedule.uniform_draw(t, 0))
    assert abs(np.mean(draws < 0.3) - 0.3) < 0.01
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.03
    other = ops.convert_to_numpy(schedule.uniform_draw(t, 1))
    assert np.mean(draws == other) < 0.01
    ascends = schedule.random_ascends(ops.convert_to_tensor(5), 0.5, 0)
    assert bool(ascends) == (rst_draw(5, 0) < 0.5)
