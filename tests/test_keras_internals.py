"""The Keras internals keras-sam relies on still exist, no other module
reaches into Keras, and the package's public surface is what
`keras_sam/__init__.py` says."""

import ast
import importlib
import pathlib
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


def _backend_owner(where: str):
    """What `USED_BY_BACKEND` names: a trainer class of `keras.Model`'s (an
    instance, for the attributes its `__init__` sets), the `extended` of a
    `MirroredStrategy`, TensorFlow's internal API, or a module."""
    if where == "MirroredStrategy.extended":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(["/cpu:0"]).extended
    if where == "tf.__internal__.distribute":
        import tensorflow as tf

        return tf.__internal__.distribute
    if "." in where:
        return importlib.import_module(where)
    model = keras.Sequential()
    assert any(c.__name__ == where for c in type(model).__mro__), where
    return model


def test_backend_internals_exist():
    for where, name in keras_internals.USED_BY_BACKEND.get(BACKEND, ()):
        assert hasattr(_backend_owner(where), name), (
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


# ---- No other module reaches into Keras or TensorFlow ----------------------

PACKAGE = pathlib.Path(keras_internals.__file__).parents[1]
NAMED_TUPLE = {"_replace", "_asdict", "_fields", "_make"}


def _private(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in NAMED_TUPLE
    )


def _on_self(value: ast.AST) -> bool:
    """`self.`, `cls.` or `super().`"""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and getattr(value.func, "id", "") == (
        "super"
    )


def _private_uses(path: pathlib.Path) -> tuple[list, list]:
    """The private attributes `path` reads on itself (`self._x`: a name of
    its own or of the Keras class it extends), and those it reads on
    anything else but a module it imports (`x._y`)."""
    tree = ast.parse(path.read_text())
    modules = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    own, other = [], []
    for node in filter(_private, ast.walk(tree)):
        if _on_self(node.value):
            own.append((node.lineno, node.attr))
        elif not (
            isinstance(node.value, ast.Name) and node.value.id in modules
        ):
            other.append((node.lineno, ast.unparse(node)))
    return own, other


def _keras_privates(kind: str) -> set:
    """The private names a Keras model (layer, trainer) or optimizer has:
    on its classes and on an instance."""
    if kind == "optimizer":
        instance = keras.optimizers.Optimizer(learning_rate=0.1)
        instance.build([keras.Variable(0.0)])
    else:
        instance = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        instance.compile(optimizer="sgd", loss="mse")
    names = set(dir(instance))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_other_module_touches_a_keras_private():
    """Every private attribute of Keras (or TensorFlow) that keras-sam
    reads, calls or overrides is listed in `keras_internals` (and used
    through it where it is not a method a subclass overrides): a module
    other than `keras_internals.py` reads no private attribute of anything
    but itself and its own modules, and of itself only names that Keras'
    classes do not have, unless listed."""
    listed = {name for _, name in keras_internals.USED}
    listed |= {
        n for uses in keras_internals.USED_BY_BACKEND.values() for _, n in uses
    }
    privates = {k: _keras_privates(k) for k in ("model", "optimizer")}
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "keras_internals.py":
            continue
        kind = "optimizer" if "optimizers" in path.parts else "model"
        own, other = _private_uses(path)
        where = path.relative_to(PACKAGE.parent)
        problems += [f"{where}:{line}: {text}" for line, text in other]
        problems += [
            f"{where}:{line}: self.{name} is Keras' and not listed"
            for line, name in own
            if name in privates[kind] and name not in listed
        ]
    assert not problems, "\n".join(problems)
