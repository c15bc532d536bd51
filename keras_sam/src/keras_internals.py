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
    (keras.Variable, "_value"),
)
# Backend-specific ones, checked on that backend: a trainer class of
# `keras.Model`'s on that backend, or a module (named in full).
_TF_TRAINER = "keras.src.backend.tensorflow.trainer"
# `"MirroredStrategy.extended"`: the `extended` of a `MirroredStrategy`;
# `"tf.__internal__.distribute"`: TensorFlow's internal API.
USED_BY_BACKEND = {
    "jax": (("JAXTrainer", "_update_metrics_variables"),),
    "tensorflow": (
        ("TensorFlowTrainer", "_maybe_symbolic_build"),
        ("TensorFlowTrainer", "_distribute_strategy"),
        (_TF_TRAINER, "_collective_all_reduce_multi_worker"),
        ("MirroredStrategy.extended", "_collective_key_base"),
        ("MirroredStrategy.extended", "_collective_ops"),
        ("MirroredStrategy.extended", "_cross_device_ops"),
        ("MirroredStrategy.extended", "_make_collective_ops_with_fallbacks"),
        ("tf.__internal__.distribute", "strategy_supports_no_merge_call"),
    ),
}


def set_collective_key_base(strategy, base: int) -> None:
    """Gives a `MirroredStrategy` collective keys from `base` on, as
    TensorFlow's own tests space their strategies
    (`MirroredStrategy._collective_key_base`), by rebuilding its collective
    ops (and its cross-device ops, where they are those)."""
    extended = strategy.extended
    collective = extended._collective_ops
    extended._collective_key_base = base
    extended._collective_ops = extended._make_collective_ops_with_fallbacks()
    if extended._cross_device_ops is collective:
        extended._cross_device_ops = extended._collective_ops


def strategy_supports_no_merge_call() -> bool:
    """Whether the current `tf.distribute` strategy updates distributed
    variables without a `merge_call` (TensorFlow's internal API, as Keras'
    `LossScaleOptimizer` reads it)."""
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def lost_value(variable: keras.Variable) -> bool:
    """Whether the JAX trainer took `variable`'s value into `fit`'s state
    (`_purge_model_variables`) and has not written it back."""
    return variable._value is None


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


def first_local_batch(iterator, strategy):
    """The first batch of Keras' TensorFlow epoch `iterator`, each
    distributed value as its first local replica's part: the shapes that a
    replica's step sees, from which the model can be built.

    Keras' TF trainer (`_maybe_symbolic_build`) takes the same batch but
    reduces a distributed one with `strategy.reduce("MEAN", batch)`, which
    `MultiWorkerMirroredStrategy` on several workers cannot do for a nest of
    `PerReplica` values ("Attempt to convert a value (PerReplica:{...}) with
    an unsupported type", keras-team/keras#20585). `None` if `iterator`
    has no batch.
    """
    local = strategy.experimental_local_results
    for _, _, distributed in iterator:
        return keras.tree.map_structure(
            lambda v: None if v is None else local(v)[0], next(distributed)
        )
    return None


def symbolic_build_before_tracing(model, build, data_batch):
    """`build(data_batch=data_batch)`, the TensorFlow trainer's
    `_maybe_symbolic_build`, as under a strategy: the model, its compiled
    loss and metrics and the optimizer are built from a batch's shapes
    before the step is traced (what the JAX and torch trainers always do).

    Without a strategy Keras defers building to the step's first trace,
    and a `tf.function` whose first trace creates variables is traced a
    second time: a SAM step's trace is the longest part of a short fit.
    """
    if model._distribute_strategy is not None:
        return build(data_batch=data_batch)
    model._distribute_strategy = model.distribute_strategy  # the default
    try:
        return build(data_batch=data_batch)
    finally:
        model._distribute_strategy = None


def multi_worker(strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` on several
    workers, as Keras' TF trainer tells it: there `reduce_per_replica`
    reduces each log of a step across the replicas with
    `strategy.reduce("MEAN", log, axis=0)`, which fails for a scalar
    ("Invalid reduction dimension 0 for input with 0 dimensions"), where
    it means the replicas' logs itself under any other strategy."""
    from keras.src.backend.tensorflow import trainer

    return trainer._collective_all_reduce_multi_worker(strategy)


def update_metrics_variables(
    model, metrics_values, loss, x, y, y_pred, sample_weight
):
    """The JAX trainer's update of the loss tracker and compiled metrics on
    stateless values: `(logs, new metrics values)`."""
    return model._update_metrics_variables(
        metrics_values, loss, x, y, y_pred, sample_weight
    )
