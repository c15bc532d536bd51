"""The part of the SAM train step that every backend shares.

`SAMTrainer` is mixed into `SAMModel` through the backend's subclass
(`keras_sam/src/backend/`), as Keras mixes its own trainers into
`keras.Model`. A backend's `train_step` runs pass 1 as Keras' own does,
then `_sam_update`, which composes the pure functions of `step` and calls
back the backend's `_pass_two` for the gradient at the perturbed weights,
then applies the result with the base optimizer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from keras_sam.src import keras_internals, micro_batches, step
from keras_sam.src.methods import schedule, tensors
from keras_sam.src.probes import Probes, Run, SingularPairs
from keras_sam.src.replicas import ONE_REPLICA, Replicas
from keras_sam.src.state import SAMState


class Update(NamedTuple):
    """What a SAM step gives the backend to apply.

    Attributes:
        gradients: for the base optimizer, aligned with the trainable
            variables (scaled shares; `None` where Keras' would be).
        state: the new SAM state.
        sharpness: `L(w + eps) - L(w)` of an ascent, else 0.
        ascended: 1.0 if the step took an ascent whose state was kept.
        skipped: 1.0 if the state was left as it was (a gradient was not
            finite).
        decoupled: WSAM's decoupled term over the SAM gradient's
            variables (global, float32), which the backend subtracts times
            the learning rate after the optimizer's step (`_decoupled`);
            `None` for every other method.
    """

    gradients: list
    state: SAMState
    sharpness: Any
    ascended: Any
    skipped: Any
    decoupled: list | None = None


def _accumulate(sums, terms):
    """`sums` plus `terms`, element by element, over lists of tensors
    (`None` entries stay `None`); `terms` when `sums` is `None`."""
    if sums is None:
        return terms
    return tuple(
        None
        if total is None
        else [None if a is None else a + b for a, b in zip(total, term)]
        for total, term in zip(sums, terms)
    )


def _mean(sums, count: int):
    """`sums` (a list of tensors, `None` entries allowed, or `None`) over
    `count`."""
    if sums is None or count == 1:
        return sums
    return [None if t is None else t / count for t in sums]


class SAMTrainer:
    """The backend-neutral half of `SAMModel`'s train step.

    A backend subclass implements `_pass_two(values, scope, inputs) ->
    (loss, gradients)`: the loss at `values` (unscaled) and its gradients
    (scaled, aligned with the trainable variables, `None` for variables
    without one), with every side effect of the forward pass discarded,
    run within `scope` (the perturbation's, see `perturbation.py`);
    `inputs` is whatever else the backend's pass 2 needs.
    """

    # The name of `batch_splits` in the errors of a batch that it does not
    # divide (`SharpnessAwareMinimization` takes it as `num_batch_splits`).
    _batch_splits_option = "batch_splits"

    def _on_create(self) -> None:
        """What the backend sets up for a new `SAMModel` (nothing, unless
        it says otherwise)."""

    def _sam_update(
        self,
        groups: list[list],
        values: list,
        state: SAMState,
        loss,
        inputs: list,
        loss_scale=None,
        replicas: Replicas = ONE_REPLICA,
        pairs: SingularPairs | None = None,
    ) -> Update:
        """The SAM step between pass 1 and the base optimizer: `groups` are
        pass 1's gradients of each micro-batch (one: the batch), `loss`
        their mean loss at `values`, `inputs` what each micro-batch's pass 2
        needs, `pairs` nuSAM's singular pairs if pass 1 computed them
        (`_probes`)."""
        plan, o = self._plan, self._options
        grads = micro_batches.mean_gradients(groups)
        clean = step.gather(
            plan, o, grads, groups, values, loss_scale, replicas, pairs
        )
        del groups  # eager backends: each micro-batch's is in `clean` now
        t = state.iterations - o.start_step
        active = ops.greater_equal(t, 0)
        ema = step.friendly_ema(o, state.ema, clean, active)
        ascent, norm_stats = step.ascent_policy(
            o, t, clean, state.norm_stats, active
        )
        args = (clean, ema, values, state, loss, grads, inputs)
        if plan.ascends_every_step:
            branch, differentiated = self._ascend(*args, loss_scale)
        else:
            reuse = (plan, o, clean, grads, values, state, active)
            branch = ops.cond(
                ascent,
                lambda: self._ascend(*args, loss_scale)[0],
                lambda: step.reuse(*reuse, loss_scale, replicas),
            )
            differentiated = {}
        # Replicas synchronise outside the conditional: MirroredStrategy
        # cannot all-reduce inside one.
        ok = ops.logical_and(clean.finite, replicas.all(branch.finite))
        g_v = step.global_g_v(o, branch.g_v, state.g_v, ascent, replicas)
        branch, decoupled = step.descend(
            plan, o, clean, grads, values, branch, ascent, loss_scale, replicas
        )
        new = SAMState(state.iterations + 1, ema, g_v, branch.u, norm_stats)
        return Update(
            gradients=step.merge(plan, clean, branch.gradients, differentiated),
            state=step.commit(state, new, ok),
            sharpness=ops.where(ok, branch.sharpness, 0.0),
            ascended=ops.cast(ops.logical_and(ascent, ok), "float32"),
            skipped=ops.cast(ops.logical_not(ok), "float32"),
            decoupled=decoupled,
        )

    def _ascend(
        self,
        clean: step.Clean,
        ema: list,
        values: list,
        state: SAMState,
        loss,
        grads: list,
        inputs: list,
        loss_scale,
    ) -> tuple[step.Branch, dict]:
        """The ascent branch: for each micro-batch, perturb along its
        ascent and run its pass 2; then read the mean of their gradients.
        Also returns which variables pass 2 differentiated."""
        plan, o = self._plan, self._options
        t = state.iterations - o.start_step
        rho = schedule.rho_at(o.rho, ops.maximum(t, 0))
        args = (plan, o, clean, ema, values, state.u, rho)
        global_u = None
        if plan.matrices and clean.own:
            # The state's u follows the global gradient.
            _, global_u, _ = step.ascent_perturbation(clean.perturbed, *args)
        sums = None
        for j, (ascent, group) in enumerate(zip(clean.ascents, inputs)):
            perturbation, u, direction = step.ascent_perturbation(ascent, *args)
            run_values = perturbation.values(values)
            scope = perturbation.scope()
            del perturbation  # eager backends: no reference to eps in pass 2
            if len(inputs) == 1:
                self._release_clean_gradient(clean, direction, grads)
            loss_2, grads_2 = self._pass_two(run_values, scope, group)
            own = None
            if clean.groups is not None:
                own = step.own_gsam(
                    plan, o, clean.groups[j], grads_2, values, loss_scale
                )
            sums = _accumulate(sums, (grads_2, own, [loss_2]))
        differentiated = {
            i: grads_2[i] is not None for i in plan.gradient_indices
        }
        grads_2, own, (loss_2,) = (_mean(s, len(inputs)) for s in sums)
        u = u if global_u is None else global_u
        branch = step.after_ascent(
            plan,
            o,
            clean,
            (loss, loss_2),
            grads_2,
            values,
            state.g_v,
            u,
            loss_scale,
        )
        if callable(o.rho):
            # A radius schedule's value outside [0, inf) skips the step.
            valid = ops.logical_and(branch.finite, schedule.valid_radius(rho))
            branch = branch._replace(finite=valid)
        if own is not None:
            branch = branch._replace(gradients=own)
        return branch, differentiated

    def _probes(self, replicas: Replicas = ONE_REPLICA) -> Probes | None:
        """The probes with which pass 1 computes nuSAM's singular pairs
        instead of the weight matrices' gradients, where the plan allows it
        on one replica (`probes.py`); `None` otherwise. A backend without
        custom gradients in Keras (torch) does not call it."""
        if not self._plan.pairs_in_pass_one or replicas.count > 1:
            return None
        return Probes(self._plan.matrices, self._options.power_iterations)

    def _differentiated(self, run: Run | None) -> list[int]:
        """The variables pass 1 differentiates: `plan.clean_indices`, less
        the weight matrices when a probed `run` gives their singular pairs
        instead."""
        clean = self._plan.clean_indices
        if run is None or not run.exact:
            return list(clean)
        perturbed = set(self._plan.perturbed_indices)
        return [i for i in clean if i not in perturbed]

    def _micro_batches(self, data) -> list:
        """`data` as `batch_splits` micro-batches (itself when 1)."""
        count = self._options.batch_splits
        if count == 1:
            return [data]
        return micro_batches.split(data, count, self._batch_splits_option)

    def _optimizer_takes(self, update: Update):
        """Whether the base optimizer takes the step (a boolean scalar):
        when it is not skipped. A `LossScaleOptimizer` also takes a step
        whose gradients are not finite: it leaves the weights as they are
        and lowers its loss scale, as mixed precision needs."""
        applied = ops.equal(update.skipped, 0.0)
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return applied
        gradients = [g for g in update.gradients if g is not None]
        overflow = ops.logical_not(tensors.all_finite(gradients))
        return ops.logical_or(applied, overflow)

    def _release_clean_gradient(self, *lists) -> None:
        """Where an eager backend frees pass 1's gradient before pass 2
        (compiled backends leave it to the compiler)."""

    def _learning_rate(self):
        """The learning rate of the base optimizer's next step (float32),
        for WSAM's decoupled term: read before `apply` (the optimizer's own
        schedule at its `iterations`); `None` unless the term exists."""
        if not self._options.decoupled:
            return None
        return ops.cast(self.optimizer.learning_rate, "float32")

    def _decoupled_steps(self, update: Update, learning_rate, dtypes) -> list:
        """WSAM's decoupled step of each variable of the SAM gradient,
        `lr * gamma / (1 - gamma) (g_s - g)` (Yue et al. 2023, Alg. 1), in
        its dtype; zero on a skipped step."""
        skipped = ops.greater(update.skipped, 0.0)
        return [
            ops.cast(ops.where(skipped, 0.0, learning_rate * term), dtype)
            for term, dtype in zip(update.decoupled, dtypes)
        ]

    def _decoupled(self, values: list, update: Update, learning_rate) -> list:
        """`values` (aligned with the trainable variables, after the
        optimizer's step) minus WSAM's decoupled steps; `values` as they are
        without them."""
        if update.decoupled is None:
            return values
        values = list(values)
        indices = self._plan.gradient_indices
        steps = self._decoupled_steps(
            update, learning_rate, [values[i].dtype for i in indices]
        )
        for i, step_ in zip(indices, steps):
            values[i] = values[i] - step_
        return values

    def _assign_decoupled(
        self, variables: list, update: Update, learning_rate
    ) -> None:
        """`_decoupled` in place, on the trainable variables (TensorFlow,
        torch). Under a `tf.distribute` strategy each replica subtracts the
        same global term from its own copy."""
        if update.decoupled is None:
            return
        indices = self._plan.gradient_indices
        steps = self._decoupled_steps(
            update, learning_rate, [variables[i].dtype for i in indices]
        )
        for i, step_ in zip(indices, steps):
            variables[i].assign_sub(step_)

    def _perturbed_loss(
        self, values, non_trainable_values, metrics_values, x, y, weights
    ):
        """Pass 2's loss at `values`, side effects discarded.

        Runs the model functionally (`stateless_call`) with
        `non_trainable_values` (those from before pass 1: the same dropout
        mask, BatchNorm in training mode on the same batch statistics),
        includes the regularization losses at `values`, and drops every
        update to non-trainable and metric variables.
        """
        return self._stateless_loss(
            values, non_trainable_values, metrics_values, x, y, weights
        )[0]

    def _stateless_loss(
        self, values, non_trainable_values, metrics_values, x, y, weights
    ) -> tuple:
        """The loss at `values` on a batch, run functionally from the given
        non-trainable and metric values: `(loss, y_pred, non-trainable
        values, metric values)`, the last two as the pass left them."""
        kwargs = {}
        if keras_internals.call_has_training_arg(self):
            kwargs["training"] = True
        # `stateless_call` skips `__call__`'s name scope; without it the
        # wrapped model would open a root TF scope, which rejects names
        # starting with "_".
        with keras.name_scope(self.name):
            y_pred, non_trainable, losses = self.stateless_call(
                values, non_trainable_values, x, return_losses=True, **kwargs
            )
        mapping = list(zip(self.metrics_variables, metrics_values))
        with keras_internals.losses_override(self, losses):
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss = keras_internals.compute_loss(self, x, y, y_pred, weights)
        metrics = [scope.get_current_value(v) for v in self.metrics_variables]
        return loss, y_pred, non_trainable, metrics

    def _micro_batch_passes_one(self, values: list, inputs: list, x) -> tuple:
        """Pass 1 of each micro-batch (`batch_splits`; TensorFlow, torch),
        each from the state before the step, with its side effects applied
        once (`x` is the whole batch's input): the mean loss, each one's
        gradients and the predictions. The backend's
        `_micro_batch_pass_one(values, inputs, index)` gives a micro-batch's
        `(loss, gradients, y_pred, (non-trainable values, metric values))`."""
        passes = [
            self._micro_batch_pass_one(values, part, j)
            for j, part in enumerate(inputs)
        ]
        loss, y_pred, non_trainable, metrics = micro_batches.join(
            inputs[0].non_trainable,
            inputs[0].metrics,
            [(loss_j, y_j, *effects) for loss_j, _, y_j, effects in passes],
        )
        self._assign_once(non_trainable, metrics)
        self._track_loss(loss, x)
        return loss, [grads for _, grads, *_ in passes], y_pred

    def _assign_once(self, non_trainable: list, metrics: list) -> None:
        """The non-trainable and metric variables take the values that the
        micro-batches' passes 1 give together (`micro_batches.join`), SAM's
        own state aside (TensorFlow, torch)."""
        own = {id(v) for v in self._state.flat()}
        for variables, values in (
            (self.non_trainable_variables, non_trainable),
            (self.metrics_variables, metrics),
        ):
            for variable, value in zip(variables, values):
                if id(variable) not in own:
                    variable.assign(value)

    def _loss_scale(self):
        """The factor by which `optimizer.scale_loss` multiplies the loss
        (float32): a `LossScaleOptimizer`'s current scale, or any
        optimizer's `loss_scale_factor`; `None` when the loss is not
        scaled."""
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.cast(optimizer.dynamic_scale, "float32")
        if optimizer.loss_scale_factor is not None:
            return ops.cast(optimizer.loss_scale_factor, "float32")
        return None

    def _track(self, update: Update) -> None:
        """The step's `sharpness` (averaged over its ascents) and
        `sam_skipped` (counted) into their metrics."""
        sharpness = keras_internals.unscale_loss_for_distribution(
            update.sharpness
        )
        self._sharpness_tracker.update_state(
            sharpness, sample_weight=update.ascended
        )
        self._skipped_tracker.update_state(update.skipped)

    def _train_logs(self, x, y, y_pred, sample_weight):
        """The logs of a train step: the compiled metrics, `sharpness` and
        `sam_skipped`."""
        with self._logging_sharpness():
            return self.compute_metrics(x, y, y_pred, sample_weight)
