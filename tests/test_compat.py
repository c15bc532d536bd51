"""`keras_sam.SharpnessAwareMinimization`, tf-keras's SAM model on Keras 3:
the same steps as tf-keras's (docs/migrating_from_tf_keras.md), its
arguments' checks, saving."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from support.helpers import (
    FEW_STEPS_EAGERLY,
    LR,
    compile_sgd,
    reference_mlp,
    toy_classification,
)
from support.reference import init_params

from keras_sam import SAMModel, SharpnessAwareMinimization

BATCH = 8
STEPS = 4

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf-keras runs on TensorFlow only"
)


def _model():
    """Dense -> LayerNorm -> tanh -> Dense, deterministic (no dropout, no
    BatchNorm: tf-keras's first pass runs without `training=True`)."""
    return reference_mlp(init_params())


def _tf_keras_twin(model):
    """`model` rebuilt in tf-keras with the same weights."""
    tf_keras = pytest.importorskip(
        "tf_keras",
        reason="needs tf-keras (make install: pip install --no-deps tf-keras)",
    )
    inputs = tf_keras.Input((model.input_shape[-1],))
    h = tf_keras.layers.Dense(model.layers[1].units)(inputs)
    h = tf_keras.layers.LayerNormalization()(h)
    h = tf_keras.layers.Activation("tanh")(h)
    outputs = tf_keras.layers.Dense(model.layers[-1].units)(h)
    twin = tf_keras.Model(inputs, outputs)
    twin.set_weights(model.get_weights())
    return tf_keras, twin


def _tf_keras_trained(
    model, x, y, lr, num_batch_splits=None, epochs=1, momentum=0.0
):
    """The weights of `model`'s tf-keras twin after SAM's `fit` on `x, y`
    in order, with SGD."""
    tf_keras, twin = _tf_keras_twin(model)
    sam = tf_keras.models.experimental.SharpnessAwareMinimization(
        twin, rho=0.05, num_batch_splits=num_batch_splits
    )
    sam.compile(
        optimizer=tf_keras.optimizers.SGD(lr, momentum=momentum),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    sam.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return twin.get_weights()


def _trained(model, x, y, lr, num_batch_splits=None, epochs=1, momentum=0.0):
    sam = SharpnessAwareMinimization(
        model, rho=0.05, num_batch_splits=num_batch_splits
    )
    sam.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    sam.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model.get_weights()


def _assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(
            a, e, rtol=1e-5, atol=1e-6, err_msg=f"weight {i}"
        )


@tensorflow_only
def test_steps_equal_tf_keras():
    """Without a split, tf-keras's SAM and ours take the same steps: the
    same weights after two epochs of SGD on the same batches."""
    x, y = toy_classification(BATCH * STEPS)
    expected = _tf_keras_trained(_model(), x, y, LR, epochs=2)
    actual = _trained(_model(), x, y, LR, epochs=2)
    _assert_all_close(actual, expected)
    # The run moved the weights: the comparison is not of the initial ones.
    assert not np.allclose(actual[0], _model().get_weights()[0])


@tensorflow_only
def test_split_step_is_tf_keras_mean():
    """With num_batch_splits=2, tf-keras sums the micro-batches' SAM
    gradients and we average them: with plain SGD (no state), our step at
    learning rate `lr` is tf-keras's at `lr / 2`. One step from the same
    weights."""
    sam = SharpnessAwareMinimization(_model(), num_batch_splits=2)
    assert sam.options.batch_splits == 2 and sam.num_batch_splits == 2
    x, y = toy_classification(BATCH)
    expected = _tf_keras_trained(_model(), x, y, LR / 2, num_batch_splits=2)
    actual = _trained(_model(), x, y, LR, num_batch_splits=2)
    _assert_all_close(actual, expected)
    # The split matters: one batch's step is another.
    unsplit = _tf_keras_trained(_model(), x, y, LR)
    assert not np.allclose(actual[0], unsplit[0], rtol=1e-5, atol=1e-6)


@tensorflow_only
def test_split_steps_with_momentum_are_tf_keras_at_lr_over_n():
    """SGD's update is linear in the gradient, momentum included: over many
    steps, ours at `lr` follows tf-keras at `lr / num_batch_splits` (what
    docs/migrating_from_tf_keras.md tells to change)."""
    x, y = toy_classification(BATCH * STEPS)
    kwargs = {"num_batch_splits": 2, "epochs": 2, "momentum": 0.9}
    expected = _tf_keras_trained(_model(), x, y, LR / 2, **kwargs)
    actual = _trained(_model(), x, y, LR, **kwargs)
    _assert_all_close(actual, expected)


def test_is_a_sam_model():
    model = _model()
    sam = SharpnessAwareMinimization(model, rho=0.1, name="tfk_sam")
    assert isinstance(sam, SAMModel)
    assert sam.options.method == "sam"
    assert sam.options.rho == 0.1
    assert sam.name == "tfk_sam"
    assert sam.model is model and sam.inner is model
    assert sam.rho == 0.1 and isinstance(sam.rho, float)
    assert sam.num_batch_splits is None
    defaults = SharpnessAwareMinimization(_model(), num_batch_splits=1)
    assert defaults.rho == 0.05 and defaults.num_batch_splits == 1
    assert defaults.options == SAMModel(_model(), method="sam").options
    # An int radius is a float radius.
    assert SharpnessAwareMinimization(_model(), rho=1).rho == 1.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rho": -0.1}, ValueError, r"`rho` must be .*rho=-0.1"),
        ({"rho": float("inf")}, ValueError, r"`rho`.*rho=inf"),
        ({"rho": "0.05"}, TypeError, r"`rho`.*rho='0.05'"),
        ({"rho": True}, TypeError, r"`rho`.*rho=True"),
        ({"rho": None}, TypeError, r"`rho`.*rho=None"),
        ({"num_batch_splits": 0}, ValueError, r"num_batch_splits=0"),
        ({"num_batch_splits": -2}, ValueError, r"num_batch_splits=-2"),
        ({"num_batch_splits": 2.0}, TypeError, r"num_batch_splits=2.0"),
        ({"num_batch_splits": True}, TypeError, r"num_batch_splits=True"),
        ({"name": 3}, TypeError, r"`name`.*name=3"),
        ({"perturb": "norm"}, TypeError, r"\['perturb'\].*SAMModel"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        SharpnessAwareMinimization(_model(), **kwargs)


def test_a_batch_that_num_batch_splits_does_not_divide_names_it():
    """The error names this class's argument, not `SAMModel`'s
    `batch_splits`."""
    x, y = toy_classification(BATCH)
    sam = SharpnessAwareMinimization(_model(), num_batch_splits=3)
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    with pytest.raises(ValueError) as info:
        sam.fit(x, y, batch_size=BATCH, verbose=0)
    assert str(info.value) == (
        "num_batch_splits=3 splits each batch into 3 equal micro-batches, "
        "and this batch has 8 examples. Use a batch size divisible by 3 "
        "(and, for the last batch of an epoch, a dataset whose size is, or "
        "`drop_remainder=True`)."
    )


def test_bad_model_raises():
    with pytest.raises(TypeError, match="model="):
        SharpnessAwareMinimization("model")


def test_saves_and_loads(tmp_path):
    """A `.keras` file gives back a `SharpnessAwareMinimization` with its
    arguments, weights and SAM's step counter, which trains on as the
    original does."""
    x, y = toy_classification(BATCH * 2)
    sam = SharpnessAwareMinimization(
        _model(), rho=0.1, num_batch_splits=1, name="tfk_sam"
    )
    compile_sgd(sam, run_eagerly=FEW_STEPS_EAGERLY)
    sam.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    path = tmp_path / "sam.keras"
    sam.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is SharpnessAwareMinimization
    assert loaded.name == "tfk_sam"
    assert loaded.rho == 0.1 and loaded.num_batch_splits == 1
    config = {k: v for k, v in sam.get_config().items() if k != "model"}
    assert config.items() <= loaded.get_config().items()
    assert keras.ops.convert_to_numpy(loaded.sam_state.iterations) == 2
    _assert_all_close(loaded.get_weights(), sam.get_weights())
    # The compile config (`run_eagerly` too) is saved with the model.
    for model in (sam, loaded):
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    _assert_all_close(loaded.get_weights(), sam.get_weights())
