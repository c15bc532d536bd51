"""Saving the callable options of a `SAMModel` (`rho`, `perturb`,
`policy_threshold`)."""

from __future__ import annotations

from typing import Any

import keras


def serialize_option(name: str, value: Any) -> Any:
    """`value` as it goes into `get_config()`.

    Numbers and strings stay as they are. A Keras object (a
    `LearningRateSchedule`) and a function registered with
    `keras.saving.register_keras_serializable` are serialized by Keras; any
    other callable (a lambda, a closure, an unregistered function) cannot be
    rebuilt when the model is loaded and raises.
    """
    if not callable(value):
        return value
    if hasattr(value, "get_config") or _is_registered(value):
        return keras.saving.serialize_keras_object(value)
    raise ValueError(
        f"Cannot save a SAMModel whose `{name}` is {value!r}: a callable "
        "option must be a Keras object with `get_config()` (a "
        "`keras.optimizers.schedules.LearningRateSchedule`) or a function "
        "registered with `@keras.saving.register_keras_serializable()`, so "
        "that `keras.models.load_model` can rebuild it."
    )


def deserialize_option(value: Any) -> Any:
    """The inverse of `serialize_option`."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


def _is_registered(function) -> bool:
    name = keras.saving.get_registered_name(function)
    return keras.saving.get_registered_object(name) is function
