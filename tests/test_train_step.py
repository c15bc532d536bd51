"""The train step's contract (docs/semantics.md): what pass 1 and pass 2 do
and do not change, on every backend."""

import types

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops
from support.helpers import (
    LR,
    assert_weights_close,
    compile_sgd,
    reference_mlp,
)
from support.reference import Config, Reference, init_params, make_batches

from keras_sam import SAMModel


def _data(n=32, n_in=6, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = rng.integers(0, 3, size=(n,))
    return x, y


def _bn_dropout_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.5)(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _twins(method="sam", **options):
    """A plain model and a SAMModel around an identical copy."""
    plain = _bn_dropout_model()
    inner = _bn_dropout_model()
    inner.set_weights(plain.get_weights())
    sam = SAMModel(inner, method=method, **options)
    compile_sgd(plain)
    compile_sgd(sam)
    return plain, sam, inner


def _non_trainable(model):
    return [ops.convert_to_numpy(v.value) for v in model.non_trainable_weights]


@pytest.mark.parametrize("method", ["sam", "samon", "looksam"])
def test_batchnorm_statistics_and_seeds_advance_once(method):
    """Moving mean/variance and the dropout seed after one SAM step equal
    those after one plain Keras step: pass 2 updates nothing."""
    plain, sam, inner = _twins(method)
    x, y = _data()
    plain.train_on_batch(x, y)
    sam.train_on_batch(x, y)
    for expected, actual in zip(_non_trainable(plain), _non_trainable(inner)):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["sam", "looksam"])
def test_micro_batches_advance_batchnorm_statistics_and_seeds_once(method):
    """With `batch_splits=2` each micro-batch's pass 1 starts from the
    state before the step, and the step applies their updates once:
    BatchNorm's moving statistics take the mean of the two plain steps on
    the halves, the seeds advance as in one plain step."""
    plain, sam, inner = _twins(method, batch_splits=2)
    x, y = _data()
    halves = []
    for half in (slice(0, 16), slice(16, 32)):
        model = _bn_dropout_model()
        model.set_weights(plain.get_weights())
        compile_sgd(model)
        model.train_on_batch(x[half], y[half])
        halves.append(_non_trainable(model))
    sam.train_on_batch(x, y)
    for actual, *expected in zip(_non_trainable(inner), *halves):
        if np.issubdtype(actual.dtype, np.floating):
            expected = [np.mean(expected, axis=0)]
        np.testing.assert_allclose(actual, expected[0], rtol=1e-6, atol=1e-7)


def test_micro_batches_need_a_divisible_batch():
    sam = SAMModel(reference_mlp(init_params()), batch_splits=4)
    compile_sgd(sam)
    x, y = _data(n=30)
    with pytest.raises(ValueError, match="batch_splits=4 .* has 30 examples"):
        sam.train_on_batch(x, y)


def test_rho_zero_step_is_the_plain_step():
    """With rho = 0, pass 2 runs at w with the same dropout mask and batch
    statistics, so the SAM step is Keras' own step and sharpness is 0."""
    plain, sam, inner = _twins("sam", rho=0.0)
    x, y = _data()
    # Keras' torch dropout draws unseeded masks from the global torch RNG:
    # both twins start the step from the same RNG state.
    keras.utils.set_random_seed(5)
    plain_logs = plain.train_on_batch(x, y, return_dict=True)
    keras.utils.set_random_seed(5)
    logs = sam.train_on_batch(x, y, return_dict=True)
    for expected, actual in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(logs["loss"], plain_logs["loss"], rtol=1e-6)
    np.testing.assert_allclose(logs["sharpness"], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "method",
    ["sam", "asam", "fisher", "fsam", "layersam", "looksam", "nusam"]
    + ["nusam_norm"],
)
def test_learning_rate_zero_leaves_weights_bit_identical(method):
    """Pass 2 is functional: nothing is perturbed in place and restored
    (nuSAM's rank-1 perturbation is applied as factors in the forward
    pass)."""
    for _, before, after in _steps_at_learning_rate_zero(method):
        np.testing.assert_array_equal(after, before)


def _steps_at_learning_rate_zero(method, steps=3):
    """`(variable, before, after)` for each trainable variable of the inner
    model after `steps` SAM steps with SGD(0)."""
    _, sam, inner = _twins(method)
    sam.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [ops.convert_to_numpy(v.value) for v in inner.trainable_weights]
    x, y = _data()
    for _ in range(steps):
        sam.train_on_batch(x, y)
    return [
        (v, b, ops.convert_to_numpy(v.value))
        for v, b in zip(inner.trainable_weights, before)
    ]


def test_pass_two_sees_w_plus_eps():
    """For a loss linear in w, L(w + eps) - L(w) = <g, eps> = rho * ||g||:
    the logged sharpness is exactly SAM's first-order gain."""
    x, _ = _data(n=16, n_in=5)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(1, use_bias=False)]
    )
    sam = SAMModel(model, method="sam", rho=0.3)
    sam.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=lambda y_true, y_pred: ops.mean(y_pred, axis=-1),
    )
    logs = sam.train_on_batch(x, np.zeros((16, 1)), return_dict=True)
    gradient_norm = np.linalg.norm(x.mean(axis=0))
    np.testing.assert_allclose(logs["sharpness"], 0.3 * gradient_norm, 1e-5)


@pytest.mark.parametrize("geometry", ["l2", "nuclear"])
def test_regularizers_and_sample_weight_count_in_both_passes(geometry):
    """The regularization loss of pass 2 is taken at `w + eps` (nuSAM's
    regularized kernel is then perturbed as a value, its other matrix as
    factors)."""
    params = init_params()
    x, y = make_batches(n_batches=4)
    x = x.astype("float32")
    weights = np.random.default_rng(7).uniform(0.2, 2.0, size=y.shape)
    model = reference_mlp(params, l2=0.01)
    method = "sam" if geometry == "l2" else "nusam"
    sam = SAMModel(model, method=method, rho=0.2)
    compile_sgd(sam)
    ref = Reference(Config(geometry=geometry, rho=0.2), params, LR, l2=0.01)
    for step in range(len(x)):
        sam.reset_metrics()
        logs = sam.train_on_batch(
            x[step], y[step], sample_weight=weights[step], return_dict=True
        )
        ref.step(x[step], y[step], sample_weight=weights[step])
        assert_weights_close(model, ref.params(), msg=f"step {step}")
        np.testing.assert_allclose(logs["sharpness"], ref.last_sharpness, 1e-4)


class _WithUnusedLayer(keras.Model):
    """The reference MLP plus a layer the loss never reaches."""

    def __init__(self, core, **kwargs):
        super().__init__(**kwargs)
        self.core = core
        self.unused = keras.layers.Dense(2)
        self.unused.build((None, 3))

    def call(self, x, training=None):
        return self.core(x, training=training)


@pytest.mark.parametrize("method", ["sam", "fisher", "looklayersam"])
def test_variables_without_gradient_are_skipped(method):
    """A variable with no gradient (None on TF and torch, zeros on JAX) is
    neither perturbed nor updated, and the others follow the reference."""
    params = init_params()
    x, y = make_batches(n_batches=3)
    x = x.astype("float32")
    core = reference_mlp(params)
    model = _WithUnusedLayer(core)
    unused_before = [w.copy() for w in model.unused.get_weights()]
    sam = SAMModel(
        model,
        method=method,
        rho=0.05,
        # The per-variable scale: the global one's ||w|| counts the unused
        # layer's weights too, which the reference does not model.
        **(
            {"k": 2, "layer_scale": "layer"} if method == "looklayersam" else {}
        ),
    )
    compile_sgd(sam)
    geometry = {"sam": "l2", "fisher": "fisher", "looklayersam": "layer"}
    config = Config(
        geometry=geometry[method],
        eta=1.0,
        rho=0.05,
        reuse="look" if method == "looklayersam" else None,
        k=2,
        layer_scale="layer",
        reuse_scale="relative",  # looklayersam's
    )
    ref = Reference(config, params, LR)
    for step in range(len(x)):
        sam.train_on_batch(x[step], y[step])
        ref.step(x[step], y[step])
    assert_weights_close(core, ref.params())
    for before, after in zip(unused_before, model.unused.get_weights()):
        np.testing.assert_array_equal(after, before)


class _WithIntVariable(keras.layers.Layer):
    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 3))
        self.count = self.add_weight(
            shape=(), initializer="ones", dtype="int32", trainable=True
        )

    def call(self, x):
        return ops.matmul(x, self.kernel) * ops.cast(self.count, x.dtype)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="Only TensorFlow can train a model with an integer trainable "
    "variable: torch cannot create one (requires_grad on an int tensor "
    "raises) and Keras' own JAX trainer fails on it (jax.grad rejects "
    "integer inputs), so there is nothing for SAMModel to skip there.",
)
def test_non_float_variables_are_skipped():
    model = keras.Sequential([keras.Input((6,)), _WithIntVariable()])
    sam = SAMModel(model, method="asam")
    compile_sgd(sam)
    x, y = _data()
    sam.fit(x, y, batch_size=16, epochs=1, verbose=0)
    layer = model.layers[0]
    assert int(ops.convert_to_numpy(layer.count.value)) == 1
    assert np.all(np.isfinite(ops.convert_to_numpy(layer.kernel.value)))


class _CountForward(keras.layers.Layer):
    """Counts executed forward passes with a host callback, so that a pass
    in an untaken `ops.cond` branch, or a trace, is not counted."""

    def __init__(self, tally, **kwargs):
        super().__init__(**kwargs)
        self.tally = tally

    def call(self, x):
        def tick():
            self.tally.count += 1

        if BACKEND == "jax":
            import jax

            jax.debug.callback(tick)
        elif BACKEND == "tensorflow":
            import tensorflow as tf

            def py_tick():
                tick()
                return np.float32(0)

            x = x + tf.ensure_shape(tf.py_function(py_tick, [], tf.float32), ())
        else:
            tick()
        return x


@pytest.mark.parametrize(
    "options, schedule",
    [
        # start_step=2: two plain steps, then an ascent on every step.
        (dict(method="sam", start_step=2), "PPAAA"),
        # LookSAM k=2 after one plain step: ascent, reuse, ascent, reuse.
        (dict(method="looksam", k=2, start_step=1), "PARAR"),
        # SAM-k, k=3: ascent, plain, plain, ascent, plain.
        (dict(method="samk", k=3), "APPAP"),
    ],
)
def test_forward_passes_per_step(options, schedule):
    """Steps without an ascent run the model forward once, ascents twice."""
    tally = types.SimpleNamespace(count=0)
    inputs = keras.Input((6,))
    h = _CountForward(tally)(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    sam = SAMModel(model, **options)
    compile_sgd(sam)
    x, y = _data(n=16)
    sam.train_on_batch(x, y)  # the first call also builds and traces
    counts = []
    for _ in schedule[1:]:
        before = tally.count
        sam.train_on_batch(x, y)
        counts.append(tally.count - before)
    expected = [2 if kind == "A" else 1 for kind in schedule[1:]]
    assert counts == expected


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs the step eagerly: nothing to trace"
)
def test_the_step_is_traced_once():
    """`fit` builds the optimizer and the metrics before it traces the step,
    as Keras' JAX trainer does (Keras' TensorFlow trainer, without a
    strategy, creates them in the first trace, and a `tf.function` that
    creates variables is traced twice)."""
    sam = SAMModel(reference_mlp(init_params()))
    sam.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    traces = []
    step = sam.train_step
    sam.train_step = lambda *args: traces.append(1) or step(*args)
    x, y = _data(n=32)
    sam.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert len(traces) == 1


def test_sharpness_is_averaged_over_ascent_steps_only():
    """Reuse steps log no sharpness of their own and do not dilute the mean."""
    params = init_params()
    x, y = make_batches(n_batches=4)
    x = x.astype("float32")
    sam = SAMModel(reference_mlp(params), method="samk", k=2, rho=0.1)
    compile_sgd(sam)
    history = sam.fit(
        x.reshape(-1, 6),
        y.reshape(-1),
        batch_size=16,
        shuffle=False,
        verbose=0,
    )
    ref = Reference(Config(reuse="every_k", k=2, rho=0.1), params, LR)
    sharpness = []
    for step in range(4):
        ref.step(x[step], y[step])
        if ref.last_sharpness is not None:
            sharpness.append(ref.last_sharpness)
    assert len(sharpness) == 2
    np.testing.assert_allclose(
        history.history["sharpness"][0], np.mean(sharpness), rtol=1e-4
    )


def test_evaluate_logs_have_no_sharpness():
    sam = SAMModel(reference_mlp(init_params()), method="sam")
    compile_sgd(sam, metrics=["accuracy"])
    x, y = _data()
    history = sam.fit(
        x, y, batch_size=16, validation_data=(x, y), verbose=0, epochs=1
    )
    assert "sharpness" in history.history
    assert "val_sharpness" not in history.history
    assert "sharpness" not in sam.evaluate(x, y, verbose=0, return_dict=True)


@pytest.mark.parametrize(
    "options, differentiated",
    [
        # Every step ascends and only the perturbed gradients are read.
        (dict(method="samon"), "norm"),
        (dict(method="nusam"), "kernels"),
        (dict(method="fsam", perturb="norm"), "norm"),
        # Plain steps (before start_step, SAM-k) and LookSAM's reuse read
        # the clean gradient of every variable.
        (dict(method="samon", start_step=1), "all"),
        (dict(method="samk", perturb="norm"), "all"),
        (dict(method="looksam", perturb="norm"), "all"),
        (dict(method="sam"), "all"),
    ],
)
def test_pass_one_differentiates_only_the_gradients_the_step_reads(
    options, differentiated
):
    """SAM-ON's pass 1 never computes the other weight gradients (the
    golden tests check that the step still equals the reference)."""
    _, sam, _ = _twins(**options)
    plan = sam._plan
    names = [v.path for v in sam.trainable_variables]
    expected = {
        "all": names,
        "norm": [p for p in names if "batch_normalization" in p],
        "kernels": [p for p in names if p.endswith("kernel")],
    }[differentiated]
    assert [names[i] for i in plan.clean_indices] == expected


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(method="nusam"), True),
        (dict(method="nusam_norm", power_iterations=3), True),
        # The clean gradient is read beyond its singular pairs: by a reuse
        # step, F-SAM's EMA, LookSAM, a descent rule; or the ascents are
        # each micro-batch's or replica's own.
        (dict(method="nusam", start_step=1), False),
        (dict(method="nusam", reuse="look", k=2), False),
        (dict(method="nusam", friendly=True), False),
        (dict(method="nusam", descent="wsam"), False),
        (dict(method="nusam", batch_splits=2), False),
        (dict(method="nusam", ascent="per_replica"), False),
        (dict(method="sam"), False),
    ],
)
def test_pass_one_computes_singular_pairs_where_only_they_are_read(
    options, expected
):
    """nuSAM's pass 1 gives each weight matrix's top singular pair from its
    backward pass instead of the weight gradients (`probes.py`) exactly
    when the step reads nothing else of them."""
    _, sam, _ = _twins(**options)
    assert sam._plan.pairs_in_pass_one is expected


def test_a_layer_that_is_not_a_flat_product_keeps_gradients_in_pass_one():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.EinsumDense("ab,cb->ac", (3,), bias_axes="c"),
            keras.layers.Dense(2),
        ]
    )
    sam = SAMModel(model, method="nusam")
    compile_sgd(sam)
    assert not sam._plan.pairs_in_pass_one
