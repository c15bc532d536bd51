"""A callback that logs a flatness measure during `fit`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import keras

from keras_sam.src.analysis import curvature, sharpness
from keras_sam.src.analysis.objective import (
    HVP_MODES,
    cached_objective,
    make_batches,
)
from keras_sam.src.validation import check_choice, check_int


class _Measure(NamedTuple):
    key: str  # the name in the logs
    function: Callable  # (objective, batches, **options) -> result
    check: Callable  # (options, defaults filled in) -> None, or raises
    number: Callable  # result -> the logged float


MEASURES = {
    "top_eigenvalue": _Measure(
        "top_eigenvalue",
        curvature.eigen,
        lambda o: curvature.check_eigen_options(
            o["k"], o["method"], o["iterations"], o["tolerance"]
        ),
        lambda result: float(result.values[0]),
    ),
    "trace": _Measure(
        "hessian_trace",
        curvature.trace,
        lambda o: check_int("samples", o["samples"], 1),
        lambda result: result.estimate,
    ),
    "sharpness": _Measure(
        "m_sharpness",  # a SAMModel logs its own `sharpness`
        sharpness.measure,
        lambda o: sharpness.check_sharpness_options(
            **{k: v for k, v in o.items() if k != "seed"}
        ),
        lambda result: result.mean,
    ),
}


def _options(measure: str, options: dict) -> dict:
    """`options` checked against the measure's, with its defaults."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(
            MEASURES[measure].function
        ).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(
            f"Unknown options {unknown} for measure={measure!r}; its options "
            f"are {sorted(defaults)}."
        )
    MEASURES[measure].check({**defaults, **options})
    return options


class FlatnessCallback(keras.callbacks.Callback):
    """Logs a flatness measure of the model every `every` epochs.

    At the end of every `every`-th epoch, the measure is computed on the
    fixed data `(x, y)` at the current weights (in inference mode; the
    model does not change) and written into the epoch's logs under `name`,
    so that it appears in `History` and, if this callback comes before a
    `keras.callbacks.TensorBoard` in the list, in TensorBoard. Epochs
    without a measurement log nothing (`History` then holds one value per
    measured epoch); `epochs` and `values` keep both.

    Measures: `"top_eigenvalue"` (`top_eigenvalues(...).values[0]`, logged
    as `top_eigenvalue`), `"trace"` (`hessian_trace(...).estimate`, as
    `hessian_trace`), `"sharpness"` (`sharpness(...).mean`, as
    `m_sharpness`, with `m = batch_size`), or a function
    `measure(model, x, y) -> float`. The measure's compiled functions are
    made at its first use and reused.

    Args:
        x: inputs (a fixed batch, say), or, with `y=None`, an iterable of
            `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        measure: `"top_eigenvalue"`, `"trace"`, `"sharpness"` or a
            function. Defaults to `"top_eigenvalue"`.
        every: measure every this many epochs (>= 1). Defaults to `1`.
        name: the key in the logs; `None`: the measure's (above), or the
            function's name. Defaults to `None`.
        batch_size: the batch size for arrays: `m` for `"sharpness"` (it
            must divide the number of examples), memory only for the
            Hessian measures; `None`: one batch. Defaults to `None`.
        loss: the loss; `None`: the one the model is compiled with.
            Defaults to `None`.
        variables: the variables measured (a list, or a layer); `None`: all
            the trainable ones. Defaults to `None`.
        hvp: `"autodiff"` or `"finite_difference"`. Defaults to
            `"autodiff"`.
        **options: the measure's options (`k`, `iterations`, `tolerance`,
            `method`, `samples`, `radius`, `steps`, `geometry`, `norm`,
            `kind`, `seed`, ...; see `top_eigenvalues`, `hessian_trace`,
            `sharpness`).

    Example:

    ```python
    callback = keras_sam.analysis.FlatnessCallback(
        x_train[:256], y_train[:256], measure="top_eigenvalue", every=5,
        iterations=20)
    history = model.fit(x_train, y_train, epochs=30, callbacks=[callback])
    history.history["top_eigenvalue"]  # one value per 5 epochs
    ```
    """

    def __init__(
        self,
        x,
        y=None,
        *,
        measure: str | Callable = "top_eigenvalue",
        every: int = 1,
        name: str | None = None,
        batch_size: int | None = None,
        loss=None,
        variables=None,
        hvp: str = "autodiff",
        **options,
    ):
        super().__init__()
        check_int("every", every, 1)
        check_choice("hvp", hvp, HVP_MODES)
        if callable(measure):
            if options:
                raise TypeError(
                    "Options apply to the named measures only; received "
                    f"a function and options {sorted(options)}."
                )
            name = name or getattr(measure, "__name__", "flatness")
        else:
            check_choice("measure", measure, tuple(MEASURES))
            self._options = _options(measure, options)
            if measure == "sharpness":
                sharpness.check_m(y, batch_size, "batch_size")
            name = name or MEASURES[measure].key
        self.measure, self.every, self.name = measure, every, name
        self._data = (x, y, batch_size)
        self._objective_arguments = (loss, variables, hvp)
        self._batches = None
        self.epochs, self.values = [], []

    def _measure(self) -> float:
        if callable(self.measure):
            return float(self.measure(self.model, *self._data[:2]))
        if self._batches is None:
            self._batches = make_batches(*self._data)
        objective = cached_objective(self.model, *self._objective_arguments)
        measure = MEASURES[self.measure]
        result = measure.function(objective, self._batches, **self._options)
        return measure.number(result)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if logs is not None and self.name in logs:
            raise ValueError(
                f"The logs already hold {self.name!r} (a metric of the "
                "model); give the measure another `name`."
            )
        value = self._measure()
        self.epochs.append(epoch)
        self.values.append(value)
        if logs is not None:
            logs[self.name] = value
