"""Keras features keep working through SAMModel: callbacks, validation,
evaluate/predict, class and sample weights, multiple outputs, subclassed
models, embeddings, and the base optimizer's own options."""

import keras
import numpy as np
import pytest
from support.helpers import toy_classification

from keras_sam import SAMModel


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def _assert_same(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_callbacks_validation_evaluate_and_predict(tmp_path):
    x, y = toy_classification(48)
    model = SAMModel(_mlp(), method="looksam", k=2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=_loss(), metrics=["accuracy"]
    )
    rates = []
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=6,
        validation_data=(x[:16], y[:16]),
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.keras")),
            keras.callbacks.EarlyStopping(
                monitor="loss", patience=0, min_delta=10.0
            ),
            keras.callbacks.LearningRateScheduler(
                lambda epoch, lr: (
                    rates.append(0.1 / (epoch + 1)) or 0.1 / (epoch + 1)
                )
            ),
            keras.callbacks.TensorBoard(str(tmp_path / "logs")),
        ],
    )
    # EarlyStopping (no improvement of 10) stops after the second epoch.
    assert len(history.history["loss"]) == 2
    assert {"loss", "accuracy", "sharpness", "val_loss", "val_accuracy"} <= set(
        history.history
    )
    assert rates == [0.1, 0.05]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.optimizer.learning_rate), 0.05
    )
    assert sorted(p.name for p in tmp_path.glob("*.keras")) == [
        "e1.keras",
        "e2.keras",
    ]
    loaded = keras.models.load_model(tmp_path / "e2.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )
    assert any((tmp_path / "logs").rglob("*tfevents*"))
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert model.predict(x, verbose=0).shape == (48, 3)


@pytest.mark.parametrize("method", ["sam", "looksam", "nusam"])
def test_class_weight_equals_the_matching_sample_weight(method):
    x, y = toy_classification(48)
    class_weight = {0: 2.0, 1: 1.0, 2: 0.25}
    options = {"k": 2} if method == "looksam" else {}
    models = []
    for weighting in ("class", "sample"):
        model = SAMModel(_mlp(), method=method, **options)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss())
        kwargs = (
            {"class_weight": class_weight}
            if weighting == "class"
            else {"sample_weight": np.vectorize(class_weight.get)(y)}
        )
        model.fit(
            x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, **kwargs
        )
        models.append(model)
    _assert_same(*models)


def _two_heads(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(
        inputs,
        {
            "label": keras.layers.Dense(3, name="label")(h),
            "value": keras.layers.Dense(1, name="value")(h),
        },
    )


def _compile_two_heads(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss={"label": _loss(), "value": "mse"},
        loss_weights={"label": 1.0, "value": 0.5},
        metrics={"label": ["accuracy"]},
    )


def test_multiple_outputs_and_losses():
    """rho = 0 reproduces Keras' own step on a two-headed Functional model
    (weighted losses, per-output metrics, BatchNorm); rho > 0 trains."""
    x, y = toy_classification(48)
    targets = {"label": y, "value": x[:, :1]}
    plain = _two_heads()
    sam = SAMModel(_two_heads(), rho=0.0)
    for model in (plain, sam):
        _compile_two_heads(model)
        model.fit(x, targets, batch_size=16, shuffle=False, verbose=0)
    _assert_same(plain, sam.inner, rtol=1e-5, atol=1e-6)

    model = SAMModel(_two_heads(), method="fsam", rho=0.1)
    _compile_two_heads(model)
    history = model.fit(x, targets, batch_size=16, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert "label_accuracy" in history.history
    assert all(s > 0 for s in history.history["sharpness"])


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.drop = keras.layers.Dropout(0.2, seed=1)
        self.out = keras.layers.Dense(3)

    def call(self, x, training=None):
        return self.out(self.drop(self.hidden(x), training=training))


@pytest.mark.parametrize("method", ["sam", "asam", "looklayersam"])
def test_subclassed_model_with_dropout_trains(method):
    x, y = toy_classification(96)
    keras.utils.set_random_seed(0)
    model = SAMModel(_Subclassed(), method=method, rho=0.02)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss())
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


def _embedding_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(20, 8)(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("method", ["sam", "fsam", "looksam", "nusam"])
def test_embeddings_train_and_rho_zero_is_the_plain_step(method):
    """Embedding gradients (`IndexedSlices` on TensorFlow, densified) go
    through every geometry; with rho = 0 the step is Keras' own."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(48, 5)).astype("int32")
    y = x[:, 0] % 3
    options = {"k": 2} if method == "looksam" else {}
    plain = _embedding_model()
    zero = SAMModel(_embedding_model(), method=method, rho=0.0, **options)
    for model in (plain, zero):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=_loss())
        model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    if method != "looksam":  # LookSAM's reuse steps add alpha * g_v
        _assert_same(plain, zero.inner, rtol=1e-5, atol=1e-6)

    model = SAMModel(_embedding_model(), method=method, rho=0.05, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=_loss())
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "optimizer_options",
    [
        {"clipnorm": 0.01},
        {"global_clipnorm": 0.01},
        {"weight_decay": 0.1},
        {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2},
    ],
    ids=lambda o: next(iter(o)),
)
def test_base_optimizer_options_apply_to_the_sam_gradient(optimizer_options):
    """With rho = 0 the SAM gradient is the clean gradient, so clipping,
    weight decay and the EMA of the weights act exactly as without SAM."""
    x, y = toy_classification(48)
    plain = _mlp()
    sam = SAMModel(_mlp(), rho=0.0)
    for model in (plain, sam):
        model.compile(
            optimizer=keras.optimizers.AdamW(0.01, **optimizer_options),
            loss=_loss(),
        )
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    _assert_same(plain, sam.inner, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["sam", "asam", "nusam"])
def test_gradient_accumulation_averages_the_micro_batch_sam_gradients(method):
    """`gradient_accumulation_steps=2`: each micro-batch is one SAM step at
    the same weights (the SAM state advancing per micro-batch), and the
    update applies the average of the two SAM gradients."""
    x, y = toy_classification(16)
    lr = 0.1
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    start = _mlp()
    w0 = _weights(start)

    # Each micro-batch's SAM gradient from a plain-SGD step at w0, the SAM
    # state (the counter, nuSAM's warm-started u) carried over.
    model = SAMModel(_mlp(), method=method)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=_loss())
    sam_gradients = []
    for bx, by in batches:
        model.inner.set_weights(w0)
        model.train_on_batch(bx, by)
        sam_gradients.append(
            [(a - b) / lr for a, b in zip(w0, _weights(model.inner))]
        )

    model = SAMModel(_mlp(), method=method)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, gradient_accumulation_steps=2),
        loss=_loss(),
    )
    model.train_on_batch(*batches[0])
    _assert_same(model.inner, start)  # accumulating only
    model.train_on_batch(*batches[1])
    expected = [w - lr * (g1 + g2) / 2 for w, g1, g2 in zip(w0, *sam_gradients)]
    for actual, want in zip(_weights(model.inner), expected):
        np.testing.assert_allclose(actual, want, rtol=1e-4, atol=1e-6)
