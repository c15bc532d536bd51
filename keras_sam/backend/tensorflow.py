"""The SAM train step on TensorFlow: tapes for both passes."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution


def _read(variable):
    """A snapshot of the variable's value (`.value` is the live variable)."""
    return tf.identity(variable.value)


def _dense(gradient):
    """Densifies `IndexedSlices` (Embedding) so both branches match."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _add_in_sequence(variables, rank_one, sign: float, after: list) -> None:
    """`variable += sign * eps_j` in place, one matrix after the other.

    Each delta is computed only once the previous update ran, so a single
    matrix-sized temporary exists at a time (TensorFlow would otherwise run
    the independent updates, and hold their temporaries, all at once).
    """
    previous = after
    for j, i in enumerate(rank_one.indices):
        with tf.control_dependencies(previous):
            previous = [
                variables[i].value.assign_add(
                    rank_one.delta(j, sign), read_value=False
                )
            ]


def train_step(model, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not model.built:
        # Without a strategy Keras' TF trainer defers building to the first
        # trace; the SAM state must exist before the step reads it.
        model.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))
    variables = model.trainable_variables
    plan = model._plan()
    state_variables = model.state_variables(plan)
    non_trainable_before = [_read(v) for v in model.non_trainable_variables]

    # Pass 1, as keras.src.backend.tensorflow.trainer does it.
    with tf.GradientTape() as tape:
        if model._call_has_training_arg:
            y_pred = model(x, training=True)
        else:
            y_pred = model(x)
        loss = model._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        model._loss_tracker.update_state(
            unscale_loss_for_distribution(loss),
            sample_weight=tf.shape(
                next(i for i in tf.nest.flatten(x) if i is not None)
            )[0],
        )
        scaled_loss = model.optimizer.scale_loss(loss)
    grads = [_dense(g) for g in tape.gradient(scaled_loss, variables)]
    metrics_values = [_read(v) for v in model.metrics_variables]

    def second_pass(values, rank_one):
        if rank_one is not None:  # nuSAM: perturb the variables in place
            _add_in_sequence(variables, rank_one, 1.0, after=[])
            values = [_read(v) for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss_2 = model.perturbed_loss(
                values,
                non_trainable_before,
                metrics_values,
                x,
                y,
                sample_weight,
            )
            scaled = model.optimizer.scale_loss(loss_2)
        grads_2 = [_dense(g) for g in tape.gradient(scaled, values)]
        if rank_one is not None:  # restore once pass 2 is done with them
            done = [g for g in grads_2 if g is not None]
            _add_in_sequence(variables, rank_one, -1.0, after=done)
        return loss_2, grads_2, values

    final, new_state, sharpness, ascent, _ = model.descent_gradients(
        plan,
        grads,
        [_read(v) for v in variables],
        tf.nest.map_structure(_read, state_variables),
        loss,
        second_pass,
    )
    model.optimizer.apply(final, variables)
    tf.nest.map_structure(
        lambda v, value: v.assign(value), state_variables, new_state
    )
    model._sharpness_tracker.update_state(
        unscale_loss_for_distribution(sharpness), sample_weight=ascent
    )
    with model.logging_sharpness():
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
