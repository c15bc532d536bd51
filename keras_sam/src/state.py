"""The state a SAM method keeps between steps.

`SAMState` holds it, as values inside a step or as the Keras variables that
persist it (saved with the model, replicated under a strategy, carried in
the JAX trainer's state during `fit`). `StateVariables` reads and writes
those variables the same way on every backend.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np

from keras_sam.src import keras_internals


class SAMState(NamedTuple):
    """The persistent state of a SAM method (values or Keras variables).

    Attributes:
        iterations: the count of steps that were not skipped (int32); the
            SAM step is `t = iterations - start_step` (or minus `start`).
        ema: the EMA of the clean gradient (F-SAM's `m`; MSAM's momentum,
            of the gradients at its look-aheads), one float32 tensor per
            perturbed variable (`[]` without `friendly` or
            `direction="momentum"`).
        g_v: LookSAM's stored component of the SAM gradient orthogonal to
            the clean gradient, one float32 tensor per variable of the SAM
            gradient (`[]` without `reuse="look"`; divided by the clean
            gradient's norm with `reuse_scale="relative"`).
        u: nuSAM's fan-in vector per perturbed weight matrix (`[]` for the
            other geometries).
        norm_stats: AE-SAM's running mean and variance of the squared norm
            of the clean gradient, two float32 scalars (`[]` without
            `policy="adaptive"`).
        start: late-phase SAM's first SAM step, one int32 scalar that the
            first `fit` sets (`[]` without `late_phase`); the step never
            changes it.
    """

    iterations: Any
    ema: list
    g_v: list
    u: list
    norm_stats: list
    start: list


def _constant(value: np.ndarray):
    """An initializer returning `value` (a NumPy array of the right shape)."""

    def initializer(shape, dtype=None):
        return keras.ops.cast(keras.ops.convert_to_tensor(value), dtype)

    return initializer


class StateVariables:
    """The Keras variables of a `SAMState`, and the one way every backend
    reads and writes them."""

    def __init__(self, variables: SAMState):
        self.variables = variables

    def flat(self) -> list:
        return keras.tree.flatten(self.variables)

    def read(self, snapshot=lambda value: value) -> SAMState:
        """The current values, each through `snapshot` (TensorFlow's
        `tf.identity`: a variable's `.value` is the live variable)."""
        return keras.tree.map_structure(
            lambda v: snapshot(v.value), self.variables
        )

    def assign(self, values: SAMState) -> None:
        keras.tree.map_structure(
            lambda v, value: v.assign(value), self.variables, values
        )

    def from_values(self, variables: list, values: list) -> SAMState:
        """The state's values within a stateless list (the JAX trainer's
        non-trainable values, aligned with `variables`)."""
        index = {id(v): i for i, v in enumerate(variables)}
        return keras.tree.map_structure(
            lambda v: values[index[id(v)]], self.variables
        )

    def into_values(self, variables: list, values: list, state: SAMState):
        """`values` with the state's entries replaced by `state`."""
        index = {id(v): i for i, v in enumerate(variables)}
        values = list(values)
        for v, value in zip(self.flat(), keras.tree.flatten(state)):
            values[index[id(v)]] = value
        return values


def new_variable(layer, name: str, shape, value=None) -> keras.Variable:
    """A float32 non-trainable state variable of `layer`, zeros or `value`,
    created even after the layer was built (its tracker is locked then)."""
    with keras_internals.unlocked(layer):
        return layer.add_weight(
            shape=shape,
            dtype="float32",
            initializer="zeros" if value is None else _constant(value),
            trainable=False,
            name=name,
        )
