"""The SAM train step on JAX: a pure function of the trainer's `state`.

During `fit` the JAX trainer purges the variable objects; every value is
read from `state` and the new values are returned in it.
"""

from __future__ import annotations

import jax
import keras


def _check_ascent(model) -> None:
    """`ascent="per_replica"` needs per-replica gradients, which JAX's data
    parallelism never computes: raises when the batch is split."""
    distribution = keras.distribution.distribution()
    if model.options.ascent != "per_replica" or distribution is None:
        return
    mesh = distribution.device_mesh
    axis = distribution.batch_dim_name or mesh.axis_names[0]
    shards = mesh.shape[list(mesh.axis_names).index(axis)]
    if shards > 1:
        raise NotImplementedError(
            "ascent='per_replica' is not supported on the JAX backend under "
            f"keras.distribution (the batch is split over {shards} devices): "
            "JAX runs the step as one program over the global batch and "
            "never computes a device's own gradient, which would cost a "
            "third pass per step. Use ascent='global' (the default; the "
            "single-device trajectory), or the TensorFlow backend with a "
            "tf.distribute strategy for m-sharpness. Received "
            "ascent='per_replica'."
        )


def train_step(model, state, data):
    _check_ascent(model)
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    plan = model._plan()
    state_variables = model.state_variables(plan)
    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}

    # Pass 1, as keras.src.backend.jax.trainer does it, differentiated with
    # respect to the variables whose clean gradient the step reads.
    clean = plan.clean_indices

    def loss_and_updates(clean_values, *args, **kwargs):
        values = list(trainable)
        for i, value in zip(clean, clean_values):
            values[i] = value
        return model.compute_loss_and_updates(values, *args, **kwargs)

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)
    (_, aux), clean_grads = grad_fn(
        [trainable[i] for i in clean],
        non_trainable,
        metrics_values,
        x,
        y,
        sample_weight,
        training=True,
        optimizer_variables=optimizer_values,
    )
    loss, y_pred, new_non_trainable, metrics_values = aux
    grads = [None] * len(trainable)
    for i, grad in zip(clean, clean_grads):
        grads[i] = grad

    optimizer_mapping = list(zip(model.optimizer.variables, optimizer_values))

    def scaled_perturbed_loss(values):
        loss_2 = model.perturbed_loss(
            values, non_trainable, metrics_values, x, y, sample_weight
        )
        with keras.StatelessScope(state_mapping=optimizer_mapping):
            return model.optimizer.scale_loss(loss_2), loss_2

    def second_pass(values, rank_one):
        # Functional "in place": perturb, differentiate, restore, and update
        # the restored weights, so that XLA can reuse the weights' buffers.
        if rank_one is not None:
            values = rank_one.perturbed(values)
        (_, loss_2), grads_2 = jax.value_and_grad(
            scaled_perturbed_loss, has_aux=True
        )(values)
        if rank_one is not None:
            values = rank_one.restored(values)
        return loss_2, grads_2, values

    with keras.StatelessScope(state_mapping=optimizer_mapping):
        loss_scale = model.loss_scale()
    final, new_state, sharpness, ascent, after, skipped = (
        model.descent_gradients(
            plan,
            grads,
            trainable,
            keras.tree.map_structure(
                lambda v: non_trainable[index[id(v)]], state_variables
            ),
            loss,
            second_pass,
            loss_scale,
        )
    )
    new_non_trainable = list(new_non_trainable)
    for v, value in zip(
        keras.tree.flatten(state_variables), keras.tree.flatten(new_state)
    ):
        new_non_trainable[index[id(v)]] = value

    if after is not None:
        trainable = after
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, final, trainable
    )
    mapping = list(zip(model.metrics_variables, metrics_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        model._sharpness_tracker.update_state(sharpness, sample_weight=ascent)
        model._skipped_tracker.update_state(skipped)
    metrics_values = [
        scope.get_current_value(v)
        if scope.get_current_value(v) is not None
        else value
        for v, value in mapping
    ]
    with model.logging_sharpness():
        logs, metrics_values = model._update_metrics_variables(
            metrics_values, loss, x, y, y_pred, sample_weight
        )
    return logs, (
        trainable,
        new_non_trainable,
        optimizer_values,
        metrics_values,
    )
