"""A `fit` that raises leaves the model whole.

Keras' JAX trainer takes every variable's value into `fit`'s local state
at the first step of each epoch and writes the state back only from a
completed step: an error inside an epoch's first step (a batch size that
`batch_splits` does not divide, a callable `rho` that fails, Keras' own
errors) left the variables without values, so `get_weights`, `save`,
`evaluate` and a corrected `fit` all failed. The other backends train the
variables in place and keep them.
"""

from __future__ import annotations

import keras

from keras_sam.src import keras_internals


def _variables(model: keras.Model) -> list:
    """Every variable `fit` trains or tracks: the model's (weights, SAM
    state), the optimizer's and the metrics'."""
    variables = [*model.variables, *model.metrics_variables]
    if getattr(model, "optimizer", None) is not None:
        variables += model.optimizer.variables
    return list({id(v): v for v in variables}.values())


def _alive(value) -> bool:
    """Whether `value` still holds its data (JAX deletes donated arrays)."""
    is_deleted = getattr(value, "is_deleted", None)
    return is_deleted is None or not is_deleted()


class ValuesKept(keras.callbacks.Callback):
    """Holds every variable's value as each epoch begins, and gives it back
    to the variables that lost theirs when `fit` raised (`restore`).

    A variable that still has a value keeps it: Keras wrote back the last
    completed step, which is newer. The values are references, not copies:
    the JAX trainer donates, and so deletes, the arrays of each step it
    runs, not those of a step that failed before running.
    """

    def __init__(self):
        super().__init__()
        self._values = []

    def on_epoch_begin(self, epoch, logs=None):
        self._values = [(v, v.value) for v in _variables(self.model)]

    def restore(self) -> None:
        for variable, value in self._values:
            if keras_internals.lost_value(variable) and _alive(value):
                variable.assign(value)
