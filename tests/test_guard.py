"""An error never costs the model: a SAMModel whose `fit` raises keeps its
weights, optimizer and SAM state readable, savable and trainable, on every
backend (Keras' JAX trainer alone lost them to an error in an epoch's first
step); errors keras-sam can see before a step come before it."""

import keras
import numpy as np
import pytest
from support.helpers import FEW_STEPS_EAGERLY, compile_sgd, toy_classification

from keras_sam import SAMModel

# The errors' tests take a few steps, eagerly on TensorFlow (helpers.py);
# the skipped steps' tests run the compiled step everywhere.


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, name="hidden"),
            keras.layers.Dense(3, name="head"),
        ]
    )


def _assert_whole(sam: SAMModel, expected: list, tmp_path) -> None:
    """The weights are `expected`, and the model evaluates and saves."""
    for actual, want in zip(sam.inner.get_weights(), expected):
        np.testing.assert_array_equal(actual, want)
    x, y = toy_classification(12)
    assert np.isfinite(sam.evaluate(x, y, batch_size=12, verbose=0))
    sam.inner.save(tmp_path / "kept.keras")


def _assert_trains(sam: SAMModel, **fit_kwargs) -> None:
    before = sam.inner.get_weights()
    sam.fit(*toy_classification(48), epochs=1, verbose=0, **fit_kwargs)
    after = sam.inner.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(np.any(a != b) for a, b in zip(after, before))


def test_an_error_in_the_first_step_keeps_the_model(tmp_path):
    """`batch_splits=3` and batches of 16: the step's own error, after
    which the model is whole and a corrected `fit` trains it."""
    sam = SAMModel(_mlp(), batch_splits=3)
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    sam.build((None, 6))
    initial = sam.inner.get_weights()
    with pytest.raises(ValueError, match="batch_splits=3"):
        sam.fit(*toy_classification(48), batch_size=16, verbose=0)
    _assert_whole(sam, initial, tmp_path)
    _assert_trains(sam, batch_size=12)
    assert keras.ops.convert_to_numpy(sam.sam_state.iterations) == 4


def test_an_error_in_a_callable_rho_keeps_a_trained_model(tmp_path):
    """A radius schedule that fails inside the step, on a model trained
    before: its trained weights survive, and the inner model trains on
    under a SAMModel with a working schedule."""
    model = _mlp()
    trained = SAMModel(model)
    compile_sgd(trained, run_eagerly=FEW_STEPS_EAGERLY)
    trained.fit(*toy_classification(48), batch_size=16, verbose=0)
    weights = model.get_weights()

    def failing(step):
        raise ZeroDivisionError("the schedule failed")

    sam = SAMModel(model, rho=failing)
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    with pytest.raises(ZeroDivisionError, match="the schedule failed"):
        sam.fit(*toy_classification(48), batch_size=16, verbose=0)
    _assert_whole(sam, weights, tmp_path)
    fixed = SAMModel(model, rho=lambda step: 0.05)
    compile_sgd(fixed, run_eagerly=FEW_STEPS_EAGERLY)
    _assert_trains(fixed, batch_size=16)


@pytest.mark.parametrize("change", ["unfreeze", "freeze"])
def test_trainability_changed_since_compile_raises_before_any_step(
    tmp_path, change
):
    """Train the head, unfreeze the backbone and forget `compile()` (or
    freeze it after training): one rule on every backend, an error before
    any step, the trained weights kept, and `compile()` then `fit`."""
    model = _mlp()
    model.get_layer("hidden").trainable = change == "freeze"
    sam = SAMModel(model)
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    sam.fit(*toy_classification(48), batch_size=16, verbose=0)
    trained = model.get_weights()
    model.get_layer("hidden").trainable = change == "unfreeze"
    with pytest.raises(RuntimeError, match="call compile\\(\\) again"):
        sam.fit(*toy_classification(48), batch_size=16, verbose=0)
    _assert_whole(sam, trained, tmp_path)
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    _assert_trains(sam, batch_size=16)
    hidden = [w.numpy() for w in model.get_layer("hidden").weights]
    frozen = change == "freeze"
    assert all(
        np.array_equal(a, b) == frozen for a, b in zip(hidden, trained[:2])
    )


@pytest.mark.parametrize(
    "option, value, argument",
    [
        ("rho", lambda: 0.1, "the SAM step"),
        ("perturb", lambda variable, other: True, "a variable"),
    ],
)
def test_a_callable_option_of_the_wrong_arity_is_a_clear_error(
    option, value, argument
):
    with pytest.raises(TypeError) as error:
        SAMModel(_mlp(), **{option: value})
    message = str(error.value)
    assert message.startswith(f"`{option}` is called with one argument, ")
    assert argument in message and f"received {option}=" in message


def _batch_norm_mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )


def _train(x, y, epochs: int = 1, **options) -> tuple[list, dict]:
    """Every variable (weights, BatchNorm statistics, SAM state, Adam's
    moments) after `epochs` in batches of 8, and the last epoch's logs."""
    sam = SAMModel(_batch_norm_mlp(), **options)
    sam.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = sam.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0
    )
    variables = [*sam.variables, *sam.optimizer.variables]
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    return values, {k: v[-1] for k, v in history.history.items()}


@pytest.mark.parametrize(
    "options", [{}, {"method": "looksam", "k": 2}, {"method": "fsam"}]
)
def test_a_non_finite_batch_changes_nothing_and_is_counted(options):
    """A batch with a NaN input, between good ones: the run ends where the
    run without that batch ends (weights, BatchNorm statistics, the
    optimizer's moments and step, the SAM state and counter), and
    `sam_skipped` counts it."""
    x, y = toy_classification(32)
    bad = x.copy()
    bad[9, 2] = np.nan  # in the second batch
    kept = np.r_[0:8, 16:32]
    skipping, logs = _train(bad, y, **options)
    without, clean_logs = _train(x[kept], y[kept], **options)
    for a, b in zip(skipping, without):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert logs["sam_skipped"] == 1.0 and clean_logs["sam_skipped"] == 0.0


@pytest.mark.parametrize("radius", [-0.05, float("nan")])
def test_a_radius_schedule_outside_its_range_skips_the_step(radius):
    """A callable `rho` whose value is negative or not finite: each such
    step is skipped whole and counted, never trained with."""
    x, y = toy_classification(32)
    initial, _ = _train(x, y, epochs=0, rho=lambda step: radius)
    values, logs = _train(x, y, rho=lambda step: radius + 0.0 * step)
    for a, b in zip(values, initial):
        np.testing.assert_array_equal(a, b)
    assert logs["sam_skipped"] == 4.0


def test_fit_takes_its_arguments_in_keras_order():
    """`SAMModel.fit` adds its guard without changing `fit`'s signature:
    callbacks given by position, as `keras.Model.fit` takes them."""
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(epoch)
    )
    sam = SAMModel(_mlp())
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    x, y = toy_classification(16)
    sam.fit(x, y, 8, 2, 0, [callback])
    assert seen == [0, 1]
