"""The SAM train step on JAX: a pure function of the trainer's `state`.

During `fit` the JAX trainer purges the variable objects; every value is
read from `state` and the new values are returned in it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import keras
from keras import ops

from keras_sam.src import keras_internals, micro_batches, step
from keras_sam.src.replicas import ONE_REPLICA, Replicas
from keras_sam.src.trainer import PassOne, SAMTrainer


class _PassInputs(NamedTuple):
    non_trainable: list  # from before pass 1
    metrics: list
    optimizer: list
    x: object
    y: object
    sample_weight: object
    share: float = 1.0  # what each replica's loss counts for (1 / replicas)


class _Gradients(NamedTuple):
    """What the step computes before the base optimizer (over the batch, or
    over each device's shard with `ascent="per_replica"`)."""

    loss: object
    y_pred: object
    non_trainable: list
    metrics: list
    update: object


def _batch_axis(model):
    """The mesh and the batch axis of `ascent="per_replica"` under a
    `keras.distribution` that splits the batch, else `None`.

    Raises:
        NotImplementedError: under a distribution other than
            `DataParallel` (its sharded variables would be gathered whole
            on each device).
    """
    distribution = keras.distribution.distribution()
    if model.options.ascent != "per_replica" or distribution is None:
        return None
    mesh = distribution.device_mesh
    axis = distribution.batch_dim_name or mesh.axis_names[0]
    if mesh.shape[list(mesh.axis_names).index(axis)] == 1:
        return None
    if not isinstance(distribution, keras.distribution.DataParallel):
        raise NotImplementedError(
            "ascent='per_replica' on the JAX backend runs each device's "
            "shard of the batch as a replica of its own, with every "
            "variable whole on every device: it supports keras.distribution."
            f"DataParallel, and received {type(distribution).__name__}, "
            "which shards variables. Use ascent='global' (the single-device "
            "trajectory) with it."
        )
    return mesh.backend_mesh, axis


def _all_replicas(before: list, after: list, axis: str, reduce) -> list:
    """Values each replica's passes changed from `before` to `after`, joined
    over the replicas as micro-batches are (`micro_batches.merged_values`):
    float changes reduced by the collective `reduce` (`jax.lax.pmean` or
    `jax.lax.psum`), the others as they are (alike on every replica)."""
    return micro_batches.merged_values(
        before, [after], lambda changes: reduce(changes[0], axis)
    )


def _aligned(trainable: list, indices, gradients: list) -> list:
    """`gradients` of the variables at `indices` as a list aligned with the
    trainable variables, `None` elsewhere."""
    grads = [None] * len(trainable)
    for i, grad in zip(indices, gradients):
        grads[i] = grad
    return grads


class JaxSAMTrainer(SAMTrainer):
    def train_step(self, state, data):
        self._check_plan()
        trainable, non_trainable, optimizer_values, metrics_values = state
        with self._stateless(optimizer_values, self.optimizer.variables):
            loss_scale = self._loss_scale()
            learning_rate = self._learning_rate()
        batch_axis = _batch_axis(self)
        if batch_axis is None:
            out = self._gradients(state, data, loss_scale)
        else:
            out = self._per_replica(state, data, loss_scale, *batch_axis)
        update = out.update
        # A skipped step leaves every variable as it was (pass 1's updates
        # of BatchNorm statistics included); the SAM state commits itself.
        applied = ops.equal(update.skipped, 0.0)
        new_non_trainable = self._state.into_values(
            self.non_trainable_variables,
            step.commit(non_trainable, out.non_trainable, applied),
            update.state,
        )
        trainable, optimizer_values = self._apply_update(
            update, trainable, optimizer_values, learning_rate
        )
        with self._stateless(out.metrics, self.metrics_variables) as scope:
            self._track(update)
        metrics_values = [
            scope.get_current_value(v) for v in self.metrics_variables
        ]
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with self._logging_sharpness():
            logs, metrics_values = keras_internals.update_metrics_variables(
                self, metrics_values, out.loss, x, y, out.y_pred, sample_weight
            )
        state = (trainable, new_non_trainable, optimizer_values, metrics_values)
        return logs, state

    def _apply_update(self, update, trainable, optimizer_values, learning_rate):
        """The trainable and optimizer values after the base optimizer's
        step, or as they were if it does not take it (a skipped step; a
        `LossScaleOptimizer` takes one with non-finite gradients, and leaves
        the weights as they were). A conditional, not a selection after the
        update: XLA updates the donated buffers in place."""

        def apply():
            new, new_optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, update.gradients, trainable
            )
            new = self._decoupled(new, update, learning_rate)
            return list(new), list(new_optimizer_values)

        return ops.cond(
            self._optimizer_takes(update),
            apply,
            lambda: (list(trainable), list(optimizer_values)),
        )

    def _gradients(
        self, state, data, loss_scale, replicas: Replicas = ONE_REPLICA
    ) -> _Gradients:
        """Passes 1 and 2 of each micro-batch and the SAM update, from the
        trainer's `state`."""
        trainable, non_trainable, optimizer_values, metrics_values = state
        inputs = [
            _PassInputs(
                non_trainable,
                metrics_values,
                optimizer_values,
                *micro_batch,
                share=1.0 / replicas.count,
            )
            for micro_batch in self._micro_batches(
                keras.utils.unpack_x_y_sample_weight(data)
            )
        ]
        sam_state = self._state.from_values(
            self.non_trainable_variables, non_trainable
        )
        ctx = self._context(trainable, sam_state, loss_scale, replicas)
        one = self._passes_one(ctx, sam_state, inputs)
        update = self._sam_update(ctx, sam_state, one, inputs)
        return _Gradients(
            one.loss, one.y_pred, one.non_trainable, one.metrics, update
        )

    def _per_replica(self, state, data, loss_scale, mesh, axis: str):
        """`_gradients` with each device's shard of the batch as a replica
        (`ascent="per_replica"`), computed where the shard lives
        (`shard_map`): its own micro-batches, ascents and passes. The
        replicas all-reduce what the step reads globally and the base
        optimizer's gradient; BatchNorm's statistics take the replicas'
        mean, metrics count every replica's examples."""
        replicas = Replicas(
            mesh.shape[axis], lambda ts: [jax.lax.psum(t, axis) for t in ts]
        )

        def run(state, data):
            out = self._gradients(state, data, loss_scale, replicas)
            update = out.update._replace(
                gradients=[
                    None if g is None else jax.lax.psum(g, axis)
                    for g in out.update.gradients
                ],
                sharpness=jax.lax.pmean(out.update.sharpness, axis),
            )
            _, non_trainable, _, metrics = state
            return _Gradients(
                jax.lax.pmean(out.loss, axis),
                out.y_pred,
                _all_replicas(
                    non_trainable, out.non_trainable, axis, jax.lax.pmean
                ),
                _all_replicas(metrics, out.metrics, axis, jax.lax.psum),
                update,
            )

        whole = jax.sharding.PartitionSpec()
        split = jax.sharding.PartitionSpec(axis)
        return jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(whole, split),
            out_specs=_Gradients(whole, split, whole, whole, whole),
            check_vma=False,
        )(tuple(state), data)

    @staticmethod
    def _stateless(values, variables):
        return keras.StatelessScope(state_mapping=list(zip(variables, values)))

    def _pass_one(self, values, batch, probes, u, loss_scale) -> PassOne:
        if probes is None:
            return self._micro_batch_pass_one(values, batch, 0)
        return self._probed_pass_one(values, batch, probes, u, loss_scale)

    def _kept_once(self, one: PassOne, x) -> PassOne:
        return one

    def _loss_and_updates(self, trainable, inputs: _PassInputs):
        """Pass 1's scaled loss and Keras' auxiliary values as a function of
        the values of the variables it differentiates (`clean_indices`)."""
        clean = self._plan.clean_indices

        def loss_and_updates(clean_values):
            values = list(trainable)
            for i, value in zip(clean, clean_values):
                values[i] = value
            scaled, aux = self.compute_loss_and_updates(
                values,
                inputs.non_trainable,
                inputs.metrics,
                inputs.x,
                inputs.y,
                inputs.sample_weight,
                training=True,
                optimizer_variables=inputs.optimizer,
            )
            return scaled * inputs.share, aux

        return loss_and_updates

    def _micro_batch_pass_one(self, values, batch, index: int) -> PassOne:
        """As `keras.src.backend.jax.trainer` does it, differentiated with
        respect to the variables whose clean gradient the step reads."""
        clean = self._plan.clean_indices
        (_, aux), clean_grads = jax.value_and_grad(
            self._loss_and_updates(values, batch), has_aux=True
        )([values[i] for i in clean])
        loss, y_pred, non_trainable, metrics = aux
        grads = _aligned(values, clean, clean_grads)
        return PassOne(loss, [grads], y_pred, None, non_trainable, metrics)

    def _probed_pass_one(
        self, trainable, inputs: _PassInputs, probes, u, loss_scale
    ):
        """`_micro_batch_pass_one` with the weight matrices' layers run
        through their probes: their singular pairs from its backward pass
        instead of their gradients (which XLA then never computes), unless
        a layer ran twice (`probes.py`)."""
        clean = self._plan.clean_indices
        loss_and_updates = self._loss_and_updates(trainable, inputs)

        def probed(clean_values, probe_values):
            with probes.scope(probe_values) as run:
                runs.append(run)
                return loss_and_updates(clean_values)

        runs = []
        scaled, backward, aux = jax.vjp(
            probed,
            [trainable[i] for i in clean],
            probes.initial(u),
            has_aux=True,
        )
        clean_grads, probe_grads = backward(jax.numpy.ones_like(scaled))
        differentiated = self._differentiated(runs[0])
        grads = _aligned(
            trainable,
            differentiated,
            [g for i, g in zip(clean, clean_grads) if i in differentiated],
        )
        pairs = probes.pairs(probe_grads, runs[0], loss_scale)
        loss, y_pred, non_trainable, metrics = aux
        return PassOne(loss, [grads], y_pred, pairs, non_trainable, metrics)

    def _pass_two(self, loss, values, scope, batch: _PassInputs):
        with scope:
            (_, value), grads = jax.value_and_grad(loss, has_aux=True)(values)
        return value, grads
