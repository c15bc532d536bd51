"""The SAM train step on JAX: a pure function of the trainer's `state`.

During `fit` the JAX trainer purges the variable objects; every value is
read from `state` and the new values are returned in it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import keras

from keras_sam.src import keras_internals
from keras_sam.src.trainer import SAMTrainer


class _PassInputs(NamedTuple):
    non_trainable: list  # from before pass 1
    metrics: list
    optimizer: list
    x: object
    y: object
    sample_weight: object


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


class JaxSAMTrainer(SAMTrainer):
    def train_step(self, state, data):
        _check_ascent(self)
        self._check_plan()
        trainable, non_trainable, optimizer_values, metrics_values = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs = _PassInputs(
            non_trainable, metrics_values, optimizer_values, x, y, sample_weight
        )
        loss, grads, y_pred, new_non_trainable, metrics_values = self._pass_one(
            trainable, inputs
        )
        with self._stateless(optimizer_values, self.optimizer.variables):
            loss_scale = self._loss_scale()
            learning_rate = self._learning_rate()
        sam_state = self._state.from_values(
            self.non_trainable_variables, non_trainable
        )
        update = self._sam_update(
            grads, trainable, sam_state, loss, inputs, loss_scale
        )
        new_non_trainable = self._state.into_values(
            self.non_trainable_variables, new_non_trainable, update.state
        )
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, update.gradients, trainable
        )
        trainable = self._decoupled(trainable, update, learning_rate)
        with self._stateless(metrics_values, self.metrics_variables) as scope:
            self._track(update)
        metrics_values = [
            scope.get_current_value(v) for v in self.metrics_variables
        ]
        with self._logging_sharpness():
            logs, metrics_values = keras_internals.update_metrics_variables(
                self, metrics_values, loss, x, y, y_pred, sample_weight
            )
        state = (trainable, new_non_trainable, optimizer_values, metrics_values)
        return logs, state

    @staticmethod
    def _stateless(values, variables):
        return keras.StatelessScope(state_mapping=list(zip(variables, values)))

    def _pass_one(self, trainable, inputs: _PassInputs):
        """As `keras.src.backend.jax.trainer` does it, differentiated with
        respect to the variables whose clean gradient the step reads."""
        clean = self._plan.clean_indices

        def loss_and_updates(clean_values):
            values = list(trainable)
            for i, value in zip(clean, clean_values):
                values[i] = value
            return self.compute_loss_and_updates(
                values,
                inputs.non_trainable,
                inputs.metrics,
                inputs.x,
                inputs.y,
                inputs.sample_weight,
                training=True,
                optimizer_variables=inputs.optimizer,
            )

        (_, aux), clean_grads = jax.value_and_grad(
            loss_and_updates, has_aux=True
        )([trainable[i] for i in clean])
        grads = [None] * len(trainable)
        for i, grad in zip(clean, clean_grads):
            grads[i] = grad
        loss, y_pred, non_trainable, metrics_values = aux
        return loss, grads, y_pred, non_trainable, metrics_values

    def _pass_two(self, values, scope, inputs: _PassInputs):
        def scaled_loss(values):
            loss = self._perturbed_loss(
                values,
                inputs.non_trainable,
                inputs.metrics,
                inputs.x,
                inputs.y,
                inputs.sample_weight,
            )
            with self._stateless(inputs.optimizer, self.optimizer.variables):
                return self.optimizer.scale_loss(loss), loss

        with scope:
            (_, loss), grads = jax.value_and_grad(scaled_loss, has_aux=True)(
                values
            )
        return loss, grads
