"""The Keras internals keras-sam relies on still exist, and the package's
public surface is what `keras_sam/__init__.py` says."""

import importlib
import subprocess
import sys

import keras
import pytest
from conftest import BACKEND

from keras_sam.src import keras_internals


def _compiled_model():
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def _exists(owner, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Instance attributes: look on an instance.
    instance = {
        keras.Model: _compiled_model,
        keras.layers.Layer: lambda: keras.layers.Dense(1),
        keras.optimizers.Optimizer: lambda: keras.optimizers.SGD(),
        keras.Variable: lambda: keras.Variable(0.0),
    }.get(owner)
    return instance is not None and hasattr(instance(), name)


@pytest.mark.parametrize(
    "owner, name",
    keras_internals.USED,
    ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n in keras_internals.USED],
)
def test_keras_internal_exists(owner, name):
    assert _exists(owner, name), (
        f"Keras {keras.__version__} has no `{name}` on {owner!r}, which "
        "keras-sam uses (keras_sam/src/keras_internals.py); this Keras is "
        "outside the range keras-sam supports (pyproject.toml)."
    )


def test_backend_internals_exist():
    trainer = type(keras.Sequential()).__mro__
    for where, name in keras_internals.USED_BY_BACKEND.get(BACKEND, ()):
        if "." in where:  # a module
            owner = importlib.import_module(where)
        else:  # a trainer class
            owner = next(c for c in trainer if c.__name__ == where)
        assert hasattr(owner, name), (
            f"Keras {keras.__version__}'s {where} has no `{name}`."
        )


def test_public_api_and_what_import_pulls():
    """`import keras_sam` gives the public names, `keras_sam.optimizers` and
    `keras_sam.analysis`, and does not import the demo; without matplotlib
    (Keras imports it when it is installed), everything imports and a plot
    says what is missing."""
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # import matplotlib fails\n"
        "import keras_sam\n"
        "keras_sam.optimizers.LAMB, keras_sam.analysis.sharpness\n"
        "print(sorted(keras_sam.__all__))\n"
        "print(any(m.startswith('keras_sam.demo') for m in sys.modules))\n"
        "try:\n"
        "    keras_sam.analysis.plot_line(None)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[0] == str(
        ["PRESETS", "Preset", "ProportionalRho", "SAMModel", "SAMOptions"]
        + ["SAMState", "SharpnessAwareMinimization", "analysis"]
        + ["optimizers"]
    )
    assert out[1] == "False"
    assert out[2] == (
        "keras_sam.analysis's plots need matplotlib: pip install matplotlib "
        "(or 'keras-sam[demo]')."
    )
