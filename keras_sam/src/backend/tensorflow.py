"""The SAM train step on TensorFlow: tapes for both passes, one replica of
a `tf.distribute` strategy at a time."""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_sam.src import keras_internals, micro_batches
from keras_sam.src.replicas import ONE_REPLICA, Replicas
from keras_sam.src.trainer import PassOne, SAMTrainer


class _PassInputs(NamedTuple):
    non_trainable: list  # from before pass 1
    metrics: list
    x: object
    y: object
    sample_weight: object
    share: float = 1.0  # compute_loss scales the loss for the replicas


def _read(variable):
    """A snapshot of the variable's value (`.value` is the live variable)."""
    return tf.identity(variable.value)


def _dense(gradient):
    """Densifies `IndexedSlices` (Embedding) so both branches match."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def _check_micro_batches(options, count: int) -> None:
    """Raises a `ValueError` for micro-batches (`batch_splits`) with a global
    ascent on several replicas, which cannot give one device's trajectory."""
    if count > 1 and options.batch_splits > 1 and options.ascent == "global":
        raise ValueError(
            f"batch_splits={options.batch_splits} gives each micro-batch an "
            "ascent of its own, and ascent='global' one ascent along the "
            f"global gradient of the {count} replicas: under tf.distribute "
            "micro-batches split each replica's batch, so use "
            f"ascent='per_replica' ({count} x {options.batch_splits} "
            "micro-batches), or batch_splits=1."
        )


def _assert_divisible(data, size, count: int, option: str):
    """`data` once `micro_batches.split`'s check of its batch `size` has run,
    at run time where the trace does not know the size (a dataset's batches
    in a `tf.function`): the split waits for it. (Under XLA the compiler
    sees the size first and reports "Number of ways to split should evenly
    divide the split dimension" itself.) The message names the argument
    that gave `count`, `option`."""
    message = micro_batches.indivisible_message(count, "N", option)
    check = tf.debugging.Assert(size % count == 0, [message, "N =", size])
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(
            lambda t: None if t is None else tf.identity(t), data
        )


def _replicas() -> Replicas:
    """The replicas of the enclosing `tf.distribute` strategy."""
    count = tf.distribute.get_strategy().num_replicas_in_sync
    if count == 1:
        return ONE_REPLICA
    context = tf.distribute.get_replica_context()

    def all_reduce(tensors):
        return context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))

    return Replicas(count, all_reduce)


def _reducible(logs: dict, strategy) -> dict:
    """A step's `logs`, each with a leading axis of length 1 under a
    `MultiWorkerMirroredStrategy` on several workers, where Keras reduces
    them with `strategy.reduce("MEAN", log, axis=0)`: the mean over that
    axis across the replicas is then the replicas' mean, as Keras gives it
    under any other strategy, where `logs` are left as they are."""
    if not keras_internals.multi_worker(strategy):
        return logs
    return tf.nest.map_structure(lambda log: tf.expand_dims(log, 0), logs)


def _check_steps_per_execution(model) -> None:
    """Raises a `ValueError` for `steps_per_execution > 1` under a
    `MultiWorkerMirroredStrategy` on several workers, where Keras' loop of
    steps fails for every model ("You must feed a value for placeholder
    tensor ...")."""
    steps = model.steps_per_execution
    if steps > 1 and keras_internals.multi_worker(model.distribute_strategy):
        raise ValueError(
            f"steps_per_execution={steps} runs several steps in one loop, "
            "which Keras' TensorFlow trainer cannot run under a "
            "MultiWorkerMirroredStrategy on several workers, for any "
            "model. Compile with steps_per_execution=1 (predict takes any)."
        )


def _run_if(condition, update, values: list) -> None:
    """`update(values)` on each replica if `condition` (the same on every
    replica), as Keras' `LossScaleOptimizer` conditions its inner
    optimizer's step: a conditional in a replica's context cannot hold the
    `merge_call` of a distributed variable's update, so under a strategy
    that makes one it runs in the cross-replica context."""
    if keras_internals.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: update(values), lambda: None)
        return

    def cross_replica(strategy, condition, values):
        tf.cond(
            strategy.experimental_local_results(condition)[0],
            lambda: strategy.extended.call_for_each_replica(
                update, args=(values,)
            ),
            lambda: None,
        )

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(condition, values)
    )


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
    if (
        not isinstance(strategy, tf.distribute.MirroredStrategy)
        or strategy in _isolated
    ):
        return
    _isolated.add(strategy)
    keras_internals.set_collective_key_base(strategy, next(_key_bases))


class TensorFlowSAMTrainer(SAMTrainer):
    def _on_create(self) -> None:
        isolate_collectives(self.distribute_strategy)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._build_before_pass_one(x)
        self._check_plan()
        variables = self.trainable_variables
        values = [_read(v) for v in variables]
        non_trainable = [_read(v) for v in self.non_trainable_variables]
        replicas, loss_scale = _replicas(), self._loss_scale()
        state = self._state.read(snapshot=tf.identity)
        metrics = [_read(v) for v in self.metrics_variables]
        inputs = [
            _PassInputs(non_trainable, metrics, *micro_batch)
            for micro_batch in self._micro_batches((x, y, sample_weight))
        ]
        ctx = self._context(values, state, loss_scale, replicas)
        one = self._passes_one(ctx, state, inputs)
        update = self._sam_update(ctx, state, one, inputs)
        self._apply_update(update, variables, non_trainable)
        self._track(update)
        logs = self._train_logs(x, y, one.y_pred, sample_weight)
        return _reducible(logs, self.distribute_strategy)

    def _apply_update(
        self, update, variables: list, non_trainable: list
    ) -> None:
        """Applies `update`; a skipped step leaves every variable as it
        was, restoring the model's own non-trainable ones (BatchNorm
        statistics, seeds) from their snapshots `non_trainable`."""
        learning_rate = self._learning_rate()
        taken = [
            (g, v) for g, v in zip(update.gradients, variables) if g is not None
        ]

        def apply(gradients):
            self.optimizer.apply(gradients, [v for _, v in taken])

        _run_if(self._optimizer_takes(update), apply, [g for g, _ in taken])
        self._assign_decoupled(variables, update, learning_rate)
        own = {id(v) for v in self._state.flat()}
        restored = [
            (v, value)
            for v, value in zip(self.non_trainable_variables, non_trainable)
            if id(v) not in own
        ]

        def restore(values):
            for (v, _), value in zip(restored, values):
                v.assign(value)

        if restored:
            skipped = tf.greater(update.skipped, 0.0)
            _run_if(skipped, restore, [value for _, value in restored])
        self._state.assign(update.state)

    def test_step(self, data):
        return _reducible(super().test_step(data), self.distribute_strategy)

    def make_train_function(self, force=False):
        _check_micro_batches(
            self._options, self.distribute_strategy.num_replicas_in_sync
        )
        _check_steps_per_execution(self)
        return super().make_train_function(force)

    def make_test_function(self, force=False):
        _check_steps_per_execution(self)
        return super().make_test_function(force)

    def _micro_batches(self, data) -> list:
        first = next(t for t in tf.nest.flatten(data) if t is not None)
        if first.shape[0] is None:
            count = self._options.batch_splits
            data = _assert_divisible(
                data, tf.shape(first)[0], count, self._batch_splits_option
            )
        return super()._micro_batches(data)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            data_batch = keras_internals.first_local_batch(
                iterator, self.distribute_strategy
            )
        return keras_internals.symbolic_build_before_tracing(
            self, super()._maybe_symbolic_build, data_batch
        )

    def _build_before_pass_one(self, x) -> None:
        if not self.built:
            # Without a strategy Keras' TF trainer defers building to the
            # first trace; the SAM state must exist before the step reads it.
            self.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))
        if not self.optimizer.built:
            # Built in the first trace too, before pass 1, so that a
            # LossScaleOptimizer's scale is its variable, not a constant.
            self.optimizer.build(self.trainable_variables)

    def _pass_one(self, values, batch, probes, u, loss_scale) -> PassOne:
        """As `keras.src.backend.tensorflow.trainer` does it, on the
        variables (`values` unused)."""
        x, y, sample_weight = batch.x, batch.y, batch.sample_weight
        probe_values = [] if probes is None else probes.initial(u)
        scope = contextlib.nullcontext()
        if probes is not None:
            scope = probes.scope(probe_values)
        with tf.GradientTape() as tape:
            tape.watch(probe_values)
            with scope as run:
                if keras_internals.call_has_training_arg(self):
                    y_pred = self(x, training=True)
                else:
                    y_pred = self(x)
            loss = keras_internals.compute_loss(
                self, x, y, y_pred, sample_weight
            )
            self._track_loss(loss, x)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        clean = self._differentiated(run)
        gradients = tape.gradient(
            scaled_loss, [variables[i] for i in clean] + probe_values
        )
        grads = [None] * len(variables)
        for i, g in zip(clean, gradients):
            grads[i] = _dense(g)
        pairs = None
        if probes is not None:
            pairs = probes.pairs(gradients[len(clean) :], run, loss_scale)
        return PassOne(loss, [grads], y_pred, pairs)

    def _track_loss(self, loss, x) -> None:
        """The loss tracker's update with a batch's loss, as Keras' does."""
        keras_internals.loss_tracker(self).update_state(
            keras_internals.unscale_loss_for_distribution(loss),
            sample_weight=tf.shape(
                next(i for i in tf.nest.flatten(x) if i is not None)
            )[0],
        )

    def _micro_batch_pass_one(self, values, batch, index: int) -> PassOne:
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss, y_pred, *effects = self._stateless_loss(values, batch)
            scaled = self.optimizer.scale_loss(loss)
        clean = self._plan.clean_indices
        grads = [None] * len(values)
        for i, g in zip(
            clean, tape.gradient(scaled, [values[i] for i in clean])
        ):
            grads[i] = _dense(g)
        return PassOne(loss, [grads], y_pred, None, *effects)

    def _pass_two(self, loss, values, scope, batch: _PassInputs):
        with tf.GradientTape() as tape, scope:
            tape.watch(values)
            scaled, value = loss(values)
        return value, [_dense(g) for g in tape.gradient(scaled, values)]
