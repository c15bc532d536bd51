"""Every private part of Keras that keras-sam uses, in one place.

A two-pass train step has to do what Keras' own trainers do inside
`train_step`, and Keras keeps some of that private. Each use goes through a
function here; `tests/test_keras_internals.py` checks that every name in
`USED` still exists, so that a Keras release that moves one fails with a
clear message instead of deep inside a step. Checked against Keras 3.15
(`pyproject.toml` pins `keras>=3.15,<3.16`).
"""

from __future__ import annotations

import contextlib

import keras
from keras.src.losses import loss as loss_module

# (where, attribute): what keras-sam reads from Keras beyond its public API.
USED = (
    (keras.Model, "_compute_loss"),
    (keras.Model, "_losses_override"),
    (keras.Model, "_flatten_layers"),
    (keras.Model, "_loss_tracker"),
    (keras.layers.Layer, "_tracker"),
    (keras.layers.Layer, "_call_has_training_arg"),
    (loss_module, "unscale_loss_for_distribution"),
    (keras.optimizers.Optimizer, "_get_variable_index"),
    (keras.optimizers.Optimizer, "_use_weight_decay"),
    (keras.optimizers.Optimizer, "_apply_weight_decay"),
    (keras.optimizers.Optimizer, "_trainable_variables"),
)
# Backend-specific ones, checked on that backend.
USED_BY_BACKEND = {
    "jax": (("JAXTrainer", "_update_metrics_variables"),),
    "tensorflow": (("TensorFlowTrainer", "_maybe_symbolic_build"),),
}


def flatten_layers(layer: keras.layers.Layer) -> list:
    """`layer` and all its sublayers."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


@contextlib.contextmanager
def unlocked(layer: keras.layers.Layer):
    """Lets a built layer create variables (Keras locks its tracker)."""
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        yield
    finally:
        if locked:
            layer._tracker.lock()


def call_has_training_arg(model: keras.layers.Layer) -> bool:
    return model._call_has_training_arg


def compute_loss(model: keras.Model, x, y, y_pred, sample_weight):
    """The training loss as Keras' trainers compute it (compiled losses,
    regularization losses, `training=True`)."""
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


@contextlib.contextmanager
def losses_override(model: keras.Model, losses: list):
    """Within it, `model.losses` are `losses` (those of a stateless call)."""
    if not losses:
        yield
        return
    model._losses_override.clear()
    model._losses_override = losses
    try:
        yield
    finally:
        model._losses_override.clear()


def loss_tracker(model: keras.Model) -> keras.metrics.Metric:
    return model._loss_tracker


def unscale_loss_for_distribution(value):
    """`value` times the replica count (TensorFlow's per-replica losses are
    divided by it)."""
    return loss_module.unscale_loss_for_distribution(value)


def symbolic_build_before_tracing(model, build, iterator, data_batch):
    """`build(iterator, data_batch)`, the TensorFlow trainer's
    `_maybe_symbolic_build`, as under a strategy: the model, its compiled
    loss and metrics and the optimizer are built from a batch's shapes
    before the step is traced (what the JAX and torch trainers always do).

    Without a strategy Keras defers building to the step's first trace,
    and a `tf.function` whose first trace creates variables is traced a
    second time: a SAM step's trace is the longest part of a short fit.
    """
    if model._distribute_strategy is not None:
        return build(iterator, data_batch)
    model._distribute_strategy = model.distribute_strategy  # the default
    try:
        return build(iterator, data_batch)
    finally:
        model._distribute_strategy = None


def update_metrics_variables(
    model, metrics_values, loss, x, y, y_pred, sample_weight
):
    """The JAX trainer's update of the loss tracker and compiled metrics on
    stateless values: `(logs, new metrics values)`."""
    return model._update_metrics_variables(
        metrics_values, loss, x, y, y_pred, sample_weight
    )
