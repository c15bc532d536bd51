"""The SAM train step on TensorFlow: tapes for both passes."""

from __future__ import annotations

import itertools
import weakref

import keras
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from keras_sam.replicas import ONE_REPLICA, Replicas


def _read(variable):
    """A snapshot of the variable's value (`.value` is the live variable)."""
    return tf.identity(variable.value)


def _dense(gradient):
    """Densifies `IndexedSlices` (Embedding) so both branches match."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _add_in_sequence(variables, rank_one, sign: float, after, order) -> None:
    """`variable += sign * eps_j` in place, one matrix after the other, in
    `order`, each once the ops `after(i)` ran.

    Each delta is computed only once the previous update ran, so a single
    matrix-sized temporary exists at a time (TensorFlow would otherwise run
    the independent updates, and hold their temporaries, all at once).
    """
    previous = []
    for j in order:
        i = rank_one.indices[j]
        with tf.control_dependencies(previous + after(i)):
            previous = [
                variables[i].value.assign_add(
                    tf.cast(rank_one.delta(j, sign), variables[i].dtype),
                    read_value=False,
                )
            ]


def _restore_after(values):
    """What restoring variable `i` after pass 2 waits for: the ops that read
    its pass-2 value.

    In a graph that lets each variable be restored, and its pass-2 gradient
    go to the optimizer and be freed, while the backward pass goes on, as a
    plain step streams its updates; an update while a read of the value is
    still pending would also make TensorFlow copy the whole buffer first
    (copy-on-write). Eagerly, the whole pass 2 is done by then.
    """
    if tf.executing_eagerly():
        return lambda i: []
    return lambda i: values[i].consumers()


# Group keys per strategy: TensorFlow's own tests space their strategies'
# collectives this far apart (`strategy_combinations.py`).
_KEY_SPACING = 100_000
_key_bases = itertools.count(_KEY_SPACING, _KEY_SPACING)
_isolated = weakref.WeakSet()


def isolate_collectives(strategy) -> None:
    """Gives `strategy` collective keys of its own, once.

    Every `MirroredStrategy` numbers its collectives from the same group
    key, and TensorFlow's runtime keeps the shape it first saw under each
    (group, instance) key for the rest of the process. Two strategies whose
    models all-reduce differently shaped tensors (two Keras models of
    different sizes: SAM's step all-reduces more than a plain one) then fail
    with "Shape mismatch in the collective instance ...". A strategy that
    trains a `SAMModel` draws its keys from a range no other strategy uses,
    as TensorFlow's tests do with `MirroredStrategy._collective_key_base`;
    the others keep theirs.
    """
    extended = strategy.extended
    if (
        not isinstance(strategy, tf.distribute.MirroredStrategy)
        or strategy in _isolated
        or not hasattr(extended, "_make_collective_ops_with_fallbacks")
    ):
        return
    _isolated.add(strategy)
    collective = extended._collective_ops
    extended._collective_key_base = next(_key_bases)
    extended._collective_ops = extended._make_collective_ops_with_fallbacks()
    if extended._cross_device_ops is collective:
        extended._cross_device_ops = extended._collective_ops


def _replicas() -> Replicas:
    """The replicas of the enclosing `tf.distribute` strategy."""
    count = tf.distribute.get_strategy().num_replicas_in_sync
    if count == 1:
        return ONE_REPLICA
    context = tf.distribute.get_replica_context()

    def all_reduce(tensors):
        return context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))

    return Replicas(count, all_reduce)


def train_step(model, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not model.built:
        # Without a strategy Keras' TF trainer defers building to the first
        # trace; the SAM state must exist before the step reads it.
        model.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))
    variables = model.trainable_variables
    if not model.optimizer.built:
        # Built in the first trace too, before pass 1, so that a
        # LossScaleOptimizer's scale is its variable, not a traced constant.
        model.optimizer.build(variables)
    plan = model._plan()
    state_variables = model.state_variables(plan)
    replicas = _replicas()
    # Replicas with perturbations of their own cannot share in-place
    # perturbed weights: subtracting different eps rounds differently on
    # each copy, and the copies would drift apart. They perturb values.
    in_place = replicas.count == 1 or model.options.ascent == "global"
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
    grads = [None] * len(variables)
    clean = plan.clean_indices
    for i, g in zip(
        clean, tape.gradient(scaled_loss, [variables[i] for i in clean])
    ):
        grads[i] = _dense(g)
    metrics_values = [_read(v) for v in model.metrics_variables]

    def second_pass(values, rank_one):
        if rank_one is not None and not in_place:
            values = rank_one.perturbed(values)
        elif rank_one is not None:  # nuSAM: perturb the variables in place
            _add_in_sequence(
                variables,
                rank_one,
                1.0,
                after=lambda i: [],
                order=range(len(rank_one.indices)),
            )
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
        if rank_one is not None and in_place:  # restore once pass 2 is done
            # Last layers first: the backward pass finishes with them first.
            _add_in_sequence(
                variables,
                rank_one,
                -1.0,
                after=_restore_after(values),
                order=reversed(range(len(rank_one.indices))),
            )
        return loss_2, grads_2, values

    final, new_state, sharpness, ascent, _, skipped = model.descent_gradients(
        plan,
        grads,
        [_read(v) for v in variables],
        tf.nest.map_structure(_read, state_variables),
        loss,
        second_pass,
        model.loss_scale(),
        replicas,
    )
    model.optimizer.apply(final, variables)
    tf.nest.map_structure(
        lambda v, value: v.assign(value), state_variables, new_state
    )
    model._sharpness_tracker.update_state(
        unscale_loss_for_distribution(sharpness), sample_weight=ascent
    )
    # The flag is all-reduced: every replica counts the same steps.
    model._skipped_tracker.update_state(skipped)
    with model.logging_sharpness():
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
