"""Run by test_saving in a fresh process: load each saved SAMModel, train one
more epoch, write its variables."""

import pathlib
import sys

import keras
import numpy as np
import test_saving  # noqa: F401 (registers the test callables)

directory = pathlib.Path(sys.argv[1])
with np.load(directory / "data.npz") as data:
    x, y = data["x"], data["y"]
for method in sys.argv[2:]:
    model = keras.models.load_model(directory / f"{method}.keras")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    values = [keras.ops.convert_to_numpy(v) for v in model.variables]
    np.savez(
        directory / f"{method}.npz",
        **{f"v{i}": v for i, v in enumerate(values)},
    )
