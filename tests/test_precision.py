"""Mixed precision and bad gradients: loss scaling, bfloat16, overflow, zero
and NaN gradients, for every preset."""

import contextlib

import keras
import numpy as np
import pytest
from support.helpers import (
    COVERING_PRESETS,
    FEW_STEPS_EAGERLY,
    toy_classification,
)

from keras_sam import PRESETS, SAMModel

# Precision is handled alike for every preset (the casts, the loss scale
# and the skipped step are the trainer's): the presets that cover every
# kind of state and step.
METHODS = COVERING_PRESETS


@contextlib.contextmanager
def _policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _options(method):
    # Ascents on steps 0 and 2 for the reuse methods.
    return {"k": 2} if PRESETS[method].values.get("reuse") else {}


def _sam(method, optimizer=None, loss=None, run_eagerly=False):
    model = SAMModel(_model(), method=method, **_options(method))
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=loss
        or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    return model


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v).astype("float32") for v in variables]


def _state(model):
    return _numpy(keras.tree.flatten(model.sam_state))


def _assert_equal(actual, expected):
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


def _all_finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_float16_trains_close_to_float32_with_unscaled_state(method):
    x, y = toy_classification(32)
    reference = _sam(method)
    reference.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    with _policy("mixed_float16"):
        model = _sam(method)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert (
        float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale)) > 1.0
    )
    for v in keras.tree.flatten(model.sam_state):
        assert keras.backend.standardize_dtype(v.dtype) in ("float32", "int32")
    # Within half precision of the float32 run; the state (EMA, g_v) too,
    # which it would not be by the factor of the loss scale if it were
    # stored scaled.
    for a, b in zip(
        _numpy(model.inner.weights), _numpy(reference.inner.weights)
    ):
        np.testing.assert_allclose(a, b, atol=2e-2, rtol=2e-2)
    for a, b in zip(_state(model), _state(reference)):
        np.testing.assert_allclose(a, b, atol=2e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "method", ["fisher", "fsam", "looklayersam", "nusam_norm"]
)
def test_loss_scale_factor_leaves_the_method_unchanged(method):
    """A base optimizer's `loss_scale_factor` scales both passes' gradients
    like a LossScaleOptimizer does: the method's math and state (Fisher's
    T, F-SAM's EMA, LayerSAM's ratio, LookSAM's g_v, nuSAM's singular
    values) stay unscaled."""
    x, y = toy_classification(32)
    models = []
    for factor in (None, 1024.0):
        model = _sam(
            method,
            optimizer=keras.optimizers.SGD(0.1, loss_scale_factor=factor),
            run_eagerly=FEW_STEPS_EAGERLY,
        )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        models.append(model)
    unscaled, scaled = models
    for a, b in zip(
        _numpy(scaled.inner.weights), _numpy(unscaled.inner.weights)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_state(scaled), _state(unscaled)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_bfloat16_trains_with_float32_state(method):
    """bfloat16 computations on float32 variables (bfloat16 variables:
    test_half_precision_variables_with_large_gradients)."""
    x, y = toy_classification(32)
    with _policy("mixed_bfloat16"):
        model = _sam(method, run_eagerly=FEW_STEPS_EAGERLY)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    loss = history.history["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    for v in keras.tree.flatten(model.sam_state):
        assert keras.backend.standardize_dtype(v.dtype) in ("float32", "int32")
    assert _all_finite(_numpy(model.variables))


@pytest.mark.parametrize("method", METHODS)
def test_overflow_step_changes_nothing(method):
    """A loss scale so large that the float16 backward pass overflows, then a
    NaN in the data: the LossScaleOptimizer skips both steps; weights,
    optimizer and SAM state (counter included) stay as they were, with no
    NaN anywhere."""
    x, y = toy_classification(8)
    with _policy("mixed_float16"):
        model = _sam(
            method,
            optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=2.0**100
            ),
            run_eagerly=FEW_STEPS_EAGERLY,
        )
        weights = _numpy(model.inner.weights)
        state = _state(model)
        model.train_on_batch(x, y)
    assert (
        float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
        == 2.0**99
    )
    _assert_equal(_numpy(model.inner.weights), weights)
    _assert_equal(_state(model), state)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    assert _all_finite(_numpy(model.variables + model.optimizer.variables))

    # A NaN in the data: skipped the same way.
    x[0, 0] = np.nan
    with _policy("mixed_float16"):
        model.train_on_batch(x, y)
    assert (
        float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
        == 2.0**98
    )
    _assert_equal(_numpy(model.inner.weights), weights)
    _assert_equal(_state(model), state)


@pytest.mark.parametrize("method", METHODS)
def test_zero_then_nan_gradients(method):
    """A zero gradient (all sample weights 0) gives eps = 0 and no NaN. Then,
    without loss scaling, a NaN clean gradient skips the step whole: the
    weights, the optimizer's step and the SAM state stay as they were (a
    plain Keras model's weights turn NaN)."""
    x, y = toy_classification(8)
    # Eager: the same step as compiled, without a compilation per preset.
    model = _sam(method, run_eagerly=True)
    weights = _numpy(model.inner.weights)
    for _ in range(3):  # ascents and, for the reuse methods, a reuse step
        logs = model.train_on_batch(
            x, y, sample_weight=np.zeros(8), return_dict=True
        )
    assert logs["sharpness"] == 0.0
    _assert_equal(_numpy(model.inner.weights), weights)
    state = _state(model)
    assert _all_finite(state)

    x[0, 0] = np.nan
    plain = _model()
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    optimizer = _numpy(model.optimizer.variables)
    logs = model.train_on_batch(x, y, return_dict=True)
    plain.train_on_batch(x, y)
    assert logs["sam_skipped"] == 1.0
    assert not _all_finite(_numpy(plain.weights))
    _assert_equal(_numpy(model.inner.weights), weights)
    _assert_equal(_numpy(model.optimizer.variables), optimizer)
    _assert_equal(_state(model), state)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("policy", ["float16", "bfloat16"])
def test_half_precision_variables_with_large_gradients(method, policy):
    """Half-precision variables, no loss scaling, and gradients whose norm
    exceeds 256, so that a sum of squares taken in float16 passes its maximum
    (65504): every norm is float32, so the steps are finite, the SAM state
    (the counter included) advances on every step and the perturbation is
    the float32 run's."""
    x, y = toy_classification(16)
    weight = np.full(16, 1e3, "float32")  # gradient entries of order 100
    # The float32 run, for the comparison below (float16 only).
    names = ("float32", policy) if policy == "float16" else (policy,)
    models = {}
    for name in names:
        with _policy(name):
            models[name] = _sam(method, optimizer=keras.optimizers.SGD(1e-6))
    # The float32 initial weights, in half precision.
    models[policy].inner.set_weights(_model().get_weights())
    runs = {
        name: (
            model,
            [
                model.train_on_batch(
                    x, y, sample_weight=weight, return_dict=True
                )
                for _ in range(3)
            ],
        )
        for name, model in models.items()
    }
    model, logs = runs[policy]
    assert int(keras.ops.convert_to_numpy(model._iterations.value)) == 3
    for v in keras.tree.flatten(model.sam_state):
        assert keras.backend.standardize_dtype(v.dtype) in ("float32", "int32")
    assert _all_finite(_state(model) + _numpy(model.variables))
    if PRESETS[method].values.get("direction") == "momentum":
        _assert_look_ahead_as_float32(runs, policy)
        return
    ascents = [0, 2] if _options(method) else [0, 1, 2]
    sharpness = np.array([logs[i]["sharpness"] for i in ascents])
    assert np.isfinite(sharpness).all()
    if policy == "float16":
        # eps = 0 would make pass 2 repeat pass 1: a sharpness of 0. Three
        # steps at lr 1e-6: both runs see the same weights to half
        # precision, so their perturbations raise the loss alike. (A loss
        # of ~1e3 has a resolution of 8 in bfloat16: no such comparison.)
        assert (sharpness != 0).all()
        expected = [runs["float32"][1][i]["sharpness"] for i in ascents]
        np.testing.assert_allclose(sharpness, expected, rtol=0.1, atol=0.5)


def _assert_look_ahead_as_float32(runs: dict, policy: str) -> None:
    """MSAM's logged loss is its look-ahead's, along the descent: from step
    1 on (step 0's look-ahead is zero) it falls by a fifth (a zero
    look-ahead leaves it where step 0 did), and in float16 it is the
    float32 run's."""
    logs = runs[policy][1]
    assert logs[1]["loss"] < 0.9 * logs[0]["loss"]
    if policy == "float16":
        np.testing.assert_allclose(
            [logs[i]["loss"] for i in (1, 2)],
            [runs["float32"][1][i]["loss"] for i in (1, 2)],
            rtol=0.01,
        )


@pytest.mark.parametrize("method", ["sam", "looksam", "nusam"])
def test_skipped_steps_are_counted_in_the_logs(method):
    """A step whose gradient is not finite leaves the SAM state as it was
    (the counter included), and `sam_skipped` says so: the number of such
    steps in each epoch, in the training logs only."""
    x, y = toy_classification(32)
    x[9, 0] = np.nan  # in the second of four batches
    model = _sam(
        method,
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1)
        ),
    )
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        validation_data=(x[:8], y[:8]),
        verbose=0,
    )
    assert history.history["sam_skipped"] == [1.0, 1.0]
    assert np.isfinite(history.history["sharpness"]).all()
    assert "val_sam_skipped" not in history.history
    assert int(keras.ops.convert_to_numpy(model._iterations.value)) == 6
    assert _all_finite(_numpy(model.inner.weights) + _state(model))
