"""Run by test_saving in a fresh process: load each saved SAMModel, write
its variables (the optimizer's too), train one more epoch, write them
again."""

import pathlib
import sys

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# The suite's settings (conftest.py), as in the test's process: its one
# intra-op thread makes the resumed steps' numbers bit for bit the same.
import conftest  # noqa: F401
import keras
import numpy as np

import support.saving  # noqa: F401 (registers the test callables)
from keras_sam import SAMModel  # registers SAMModel, for load_model


def write(path: pathlib.Path, variables: list) -> None:
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    np.savez(path, **{f"v{i}": v for i, v in enumerate(values)})


directory = pathlib.Path(sys.argv[1])
with np.load(directory / "data.npz") as data:
    x, y = data["x"], data["y"]
for name in sys.argv[2:]:
    model = keras.models.load_model(directory / f"{name}.keras")
    assert isinstance(model, SAMModel), type(model)
    write(
        directory / f"{name}.loaded.npz",
        model.variables + model.optimizer.variables,
    )
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    write(directory / f"{name}.resumed.npz", model.variables)
