"""SAMModel builds the wrapped model and creates its state before training,
whatever the model: Sequential without Input, subclassed, dict inputs."""

import keras
import numpy as np
import pytest

from keras_sam import SAMModel


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8)
        self.norm = keras.layers.LayerNormalization()
        self.out = keras.layers.Dense(3)

    def call(self, x, training=None):
        return self.out(self.norm(self.hidden(x)))


class _DictInputs(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(3)
        self.c = keras.layers.Dense(3)

    def call(self, inputs):
        return self.a(inputs["a"]) + self.c(inputs["c"])


def _functional_dict():
    a = keras.Input((6,), name="a")
    c = keras.Input((2,), name="c")
    h = keras.layers.Concatenate()([keras.layers.Dense(4)(a), c])
    return keras.Model({"a": a, "c": c}, keras.layers.Dense(3)(h))


def _unbuilt_sequential():
    return keras.Sequential(
        [
            keras.layers.Dense(8),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(3),
        ]
    )


MLP_PARAMS = 6 * 8 + 8 + 8 + 8 + 8 * 3 + 3  # Dense, LayerNorm, Dense


@pytest.mark.parametrize(
    "make, method, dict_inputs, state",
    [
        (_unbuilt_sequential, "looksam", False, MLP_PARAMS),
        (_Subclassed, "fsam", False, MLP_PARAMS),
        (_Subclassed, "nusam", False, 6 + 8),
        (_functional_dict, "sam", True, 0),
        (_DictInputs, "looklayersam", True, 6 * 3 + 3 + 2 * 3 + 3),
    ],
    ids=[
        "sequential",
        "subclassed-fsam",
        "subclassed-nusam",
        "dict",
        "subdict",
    ],
)
def test_unbuilt_models_build_with_their_state(
    make, method, dict_inputs, state
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32)
    inputs = {"a": x, "c": x[:, :2]} if dict_inputs else x
    sam = SAMModel(make(), method=method)
    sam.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = sam.fit(inputs, y, batch_size=8, verbose=0)
    assert sam.built
    assert np.isfinite(history.history["loss"][-1])
    assert np.isfinite(history.history["sharpness"][-1])
    assert sam.perturbation_state_size() == state
    assert int(keras.ops.convert_to_numpy(sam._iterations.value)) == 4


def test_unfreezing_after_build_gets_state_at_compile():
    """Fine-tuning: train the head of a frozen model, unfreeze, compile
    again (as Keras requires) and train everything; LookSAM's g_v and the
    F-SAM EMA then cover the unfrozen variables too."""
    inputs = keras.Input((6,))
    body = keras.layers.Dense(8, name="body")
    model = keras.Model(inputs, keras.layers.Dense(3)(body(inputs)))
    body.trainable = False
    sam = SAMModel(model, method="fsam", reuse="look", k=2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sam.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    y = np.zeros(16, "int64")
    sam.fit(x, y, batch_size=8, verbose=0)
    head = 8 * 3 + 3
    assert sam.perturbation_state_size() == 2 * head  # EMA + g_v
    body_before = body.get_weights()[0].copy()

    body.trainable = True
    sam.compile(optimizer="sgd", loss=loss)
    history = sam.fit(x, y, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert sam.perturbation_state_size() == 2 * (head + 6 * 8 + 8)
    assert not np.allclose(body.get_weights()[0], body_before)
