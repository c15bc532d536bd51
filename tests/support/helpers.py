"""Keras twins of the NumPy reference model, and comparisons."""

from __future__ import annotations

import keras
import numpy as np

from support.reference import NAMES

LR = 0.1
# TensorFlow traces a SAM step per model (about a second on this machine),
# longer than a test of a few steps that checks state, dtypes or skipped
# steps takes eagerly: such tests run eagerly there (the compiled step's
# numbers are test_golden's; each precision mode is compiled in one test of
# test_precision.py). JAX dispatches op by op when eager, far slower than
# its compiled step; torch is eager either way.
FEW_STEPS_EAGERLY = keras.backend.backend() == "tensorflow"

# The presets through which a mechanism that every preset shares runs
# (mixed precision, overflow, bad gradients): one per geometry and per
# option a preset sets, so that every kind of SAM state (F-SAM's EMA,
# LookSAM's g_v, nuSAM's u), every conditional step (LookSAM, SAM-k), both
# descents and the look-ahead go through it. Plain SAM is each of them at
# its ascent. test_golden.py holds the set to the presets; every preset's
# numbers are test_golden's.
COVERING_PRESETS = (
    "samon",
    "fasam",
    "fisher",
    "looklayersam",
    "samk",
    "nusam",
    "nusam_norm",
    "gsam",
    "wsam",
    "msam",
)


def reference_mlp(params: dict, l2: float = 0.0) -> keras.Model:
    """Dense -> LayerNorm -> tanh -> Dense, with the reference's weights."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((params["w1"].shape[0],))
    h = keras.layers.Dense(
        params["w1"].shape[1], kernel_regularizer=regularizer
    )(inputs)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    outputs = keras.layers.Dense(params["w2"].shape[1])(h)
    model = keras.Model(inputs, outputs)
    model.set_weights([np.asarray(params[n], "float32") for n in NAMES])
    return model


class Batches(keras.utils.PyDataset):
    """Given batches as a dataset (`fit(..., shuffle=False)` keeps their
    order): TensorFlow traces the step with an unknown (`None`) batch size,
    as for a `tf.data` pipeline."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def toy_classification(n: int, seed: int = 0):
    """`n` standard-normal 6-feature inputs, labels cycling through 3
    classes."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), np.arange(n) % 3


def compile_sgd(model: keras.Model, lr: float = LR, **kwargs) -> None:
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )


def weights_of(model: keras.Model) -> dict:
    return dict(zip(NAMES, model.get_weights()))


def assert_weights_close(model, expected: dict, rtol=1e-5, atol=1e-6, msg=""):
    actual = weights_of(model)
    for name in NAMES:
        np.testing.assert_allclose(
            actual[name],
            expected[name],
            rtol=rtol,
            atol=atol,
            err_msg=f"{msg} variable {name}",
        )
