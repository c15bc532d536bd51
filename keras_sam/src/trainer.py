"""The part of the SAM train step that every backend shares.

`SAMTrainer` is mixed into `SAMModel` through the backend's subclass
(`keras_sam/src/backend/`), as Keras mixes its own trainers into
`keras.Model`. A backend's `train_step` runs pass 1 as Keras' own does,
then `_sam_update`, which composes the pure functions of `step` and hands
pass 2's loss (`_pass_two_loss`) to the backend's `_pass_two` to
differentiate at the perturbed weights, then applies the result with the
base optimizer.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

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


class PassInputs(Protocol):
    """What a pass over one micro-batch runs from, as each backend's
    `_PassInputs` holds it (with whatever else its passes need)."""

    non_trainable: list  # the non-trainable values from before pass 1
    metrics: list  # the metric values from before pass 1
    x: Any
    y: Any
    sample_weight: Any
    share: float  # what this replica's loss counts for, where the backend
    # does not scale it itself (JAX's per-replica step: 1 / replicas)


class PassOne(NamedTuple):
    """Pass 1's result, as each backend gives it to the shared step.

    Attributes:
        loss: the mean loss over the batch (this replica's, unscaled).
        groups: each micro-batch's gradients (`[the batch's]` for one):
            scaled shares aligned with the trainable variables, `None`
            where not differentiated.
        y_pred: the predictions, in batch order.
        pairs: nuSAM's singular pairs when pass 1 computed them instead of
            the weight matrices' gradients (`_probes`), else `None`.
        non_trainable: the non-trainable values after pass 1, where the
            backend runs it functionally (JAX), else `None` (pass 1
            assigned them).
        metrics: the metric values after pass 1, likewise.
    """

    loss: Any
    groups: list[list]
    y_pred: Any
    pairs: SingularPairs | None = None
    non_trainable: list | None = None
    metrics: list | None = None


def _add(total: list | None, term: list | None) -> list | None:
    """`total + term`, element by element (`None` entries stay `None`)."""
    if total is None:
        return None
    return [None if a is None else a + b for a, b in zip(total, term)]


def _divided(tensors: list | None, count: int) -> list | None:
    """`tensors` over `count` (`None` entries stay `None`)."""
    if tensors is None:
        return None
    return [None if t is None else t / count for t in tensors]


def _sum(total: step.PassTwo | None, term: step.PassTwo) -> step.PassTwo:
    """The sum of the micro-batches' passes 2 so far (`total`) and one
    more."""
    if total is None:
        return term
    return step.PassTwo(
        total.loss + term.loss,
        _add(total.gradients, term.gradients),
        _add(total.own, term.own),
    )


def _mean(total: step.PassTwo, count: int) -> step.PassTwo:
    """`total` over `count` micro-batches."""
    if count == 1:
        return total
    return step.PassTwo(
        total.loss / count,
        _divided(total.gradients, count),
        _divided(total.own, count),
    )


class SAMTrainer:
    """The backend-neutral half of `SAMModel`'s train step.

    A backend subclass implements `train_step` and the hooks declared
    below: `_pass_one` and `_micro_batch_pass_one` (pass 1, each giving a
    `PassOne`), `_pass_two`, and `_track_loss`, or `_kept_once` where pass
    1 runs functionally. Its `train_step` reads the
    values of the step, runs `_passes_one`, then `_sam_update` with the
    step's `_context`, and applies the `Update`.
    """

    # The name of `batch_splits` in the errors of a batch that it does not
    # divide (`SharpnessAwareMinimization` takes it as `num_batch_splits`).
    _batch_splits_option = "batch_splits"

    def _on_create(self) -> None:
        """What the backend sets up for a new `SAMModel` (nothing, unless
        it says otherwise)."""

    def _context(
        self,
        values: list,
        state: SAMState,
        loss_scale=None,
        replicas: Replicas = ONE_REPLICA,
    ) -> step.Context:
        """The step's context: `values` are the trainable values before
        the step, `state` the SAM state (its counter and late-phase SAM's
        start give the SAM step, and a radius schedule's value)."""
        o = self._options
        start = state.start[0] if state.start else o.start_step
        t = state.iterations - start
        rho = schedule.rho_at(o.rho, ops.maximum(t, 0))
        return step.Context(self._plan, o, values, loss_scale, replicas, t, rho)

    def _sam_update(
        self, ctx: step.Context, state: SAMState, one: PassOne, inputs: list
    ) -> Update:
        """The SAM step between pass 1 (`one`) and the base optimizer;
        `inputs` are what each micro-batch's pass 2 needs."""
        plan, o = ctx.plan, ctx.options
        clean = step.gather(ctx, one.groups, one.loss, one.pairs)
        t = ctx.t
        active = ops.greater_equal(t, 0)
        ema = step.gradient_ema(o, state.ema, clean, active)
        ascent, norm_stats = step.ascent_policy(
            o, t, clean, state.norm_stats, active
        )
        if plan.ascends_every_step:
            branch, differentiated = self._ascend(
                ctx, clean, ema, state, inputs
            )
        elif plan.looks_ahead:  # MSAM: pass 1's gradient is the update
            branch, differentiated = step.reuse(ctx, clean, state, active), ()
        else:
            branch = ops.cond(
                ascent,
                lambda: self._ascend(ctx, clean, ema, state, inputs)[0],
                lambda: step.reuse(ctx, clean, state, active),
            )
            differentiated = ()
        # Replicas synchronise outside the conditional: MirroredStrategy
        # cannot all-reduce inside one.
        ok = ops.logical_and(clean.finite, ctx.replicas.all(branch.finite))
        ok = ops.logical_and(ok, step.valid_policy(o, t))
        g_v = step.global_g_v(ctx, branch.g_v, state.g_v, ascent)
        branch, decoupled = step.descend(ctx, clean, branch, ascent)
        new = SAMState(
            state.iterations + 1, ema, g_v, branch.u, norm_stats, state.start
        )
        present = plan.has_gradient(clean.present, differentiated)
        return Update(
            gradients=step.merge(plan, clean, branch.gradients, present),
            state=step.commit(state, new, ok),
            sharpness=ops.where(ok, branch.sharpness, 0.0),
            ascended=ops.cast(ops.logical_and(ascent, ok), "float32"),
            skipped=ops.cast(ops.logical_not(ok), "float32"),
            decoupled=decoupled,
        )

    def _ascend(
        self,
        ctx: step.Context,
        clean: step.Clean,
        ema: list,
        state: SAMState,
        inputs: list,
    ) -> tuple[step.Branch, tuple[bool, ...]]:
        """The ascent branch: for each micro-batch, perturb along its
        ascent and run its pass 2; then read the mean of their gradients.
        Also returns which trainable variables pass 2 differentiated."""
        global_u = None
        if ctx.plan.matrices and clean.own:
            # The state's u follows the global gradient.
            global_u = step.ascent_perturbation(
                ctx, clean.perturbed, clean, ema, state.u
            ).u
        total = None
        for j, (along, group) in enumerate(zip(clean.ascents, inputs)):
            ascent = step.ascent_perturbation(ctx, along, clean, ema, state.u)
            u, run_values = ascent.u, ascent.perturbation.values(ctx.values)
            scope = ascent.perturbation.scope()
            if len(inputs) == 1:
                self._release_clean_gradient(clean, ascent.direction)
            del ascent  # eager backends: no reference to eps in pass 2
            loss_2, grads_2 = self._pass_two(
                self._pass_two_loss(ctx, group), run_values, scope, group
            )
            own = None
            if clean.groups is not None:
                own = step.own_gsam(ctx, clean.groups[j], grads_2)
            total = _sum(total, step.PassTwo(loss_2, grads_2, own))
        two = _mean(total, len(inputs))
        branch = step.after_ascent(
            ctx, clean, two, state.g_v, u if global_u is None else global_u
        )
        if callable(ctx.options.rho):
            # A radius schedule's value outside [0, inf) skips the step.
            valid = schedule.valid_radius(ctx.rho)
            branch = branch._replace(
                finite=ops.logical_and(branch.finite, valid)
            )
        return branch, tuple(g is not None for g in grads_2)

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

    def _release_clean_gradient(
        self, clean: step.Clean, direction: list
    ) -> None:
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

    def _pass_two_loss(self, ctx: step.Context, batch: PassInputs):
        """Pass 2's loss on the micro-batch `batch` as a function of the
        trainable values, for the backend's `_pass_two` to differentiate:
        `values -> (scaled loss, loss)`.

        Runs the model functionally (`stateless_call`) with the
        non-trainable values from before pass 1 (the same dropout mask,
        BatchNorm in training mode on the same batch statistics), includes
        the regularization losses at `values`, and drops every update to
        non-trainable and metric variables. The scaled loss carries the
        step's loss scale and the replica's `share`.
        """

        def loss(values):
            value = self._stateless_loss(values, batch)[0]
            return step.scaled(value, ctx.loss_scale) * batch.share, value

        return loss

    def _stateless_loss(self, values: list, inputs: PassInputs) -> tuple:
        """The loss at `values` on a micro-batch, run functionally from its
        non-trainable and metric values: `(loss, y_pred, non-trainable
        values, metric values)`, the last two as the pass left them."""
        x, y, weights = inputs.x, inputs.y, inputs.sample_weight
        kwargs = {}
        if keras_internals.call_has_training_arg(self):
            kwargs["training"] = True
        # `stateless_call` skips `__call__`'s name scope; without it the
        # wrapped model would open a root TF scope, which rejects names
        # starting with "_".
        with keras.name_scope(self.name):
            y_pred, non_trainable, losses = self.stateless_call(
                values, inputs.non_trainable, x, return_losses=True, **kwargs
            )
        mapping = list(zip(self.metrics_variables, inputs.metrics))
        with keras_internals.losses_override(self, losses):
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss = keras_internals.compute_loss(self, x, y, y_pred, weights)
        metrics = [scope.get_current_value(v) for v in self.metrics_variables]
        return loss, y_pred, non_trainable, metrics

    def _passes_one(
        self, ctx: step.Context, state: SAMState, inputs: list
    ) -> PassOne:
        """Pass 1 of the batch (`inputs`: one `PassInputs`), or of each
        micro-batch, each from the state before the step, joined into what
        one pass over the whole batch would give (`micro_batches.join`),
        the side effects kept once (`_kept_once`). MSAM's runs at its
        look-ahead (`step.lookahead`), functionally as a micro-batch's."""
        lookahead = step.lookahead(ctx, state)
        if lookahead is None and len(inputs) == 1:
            probes = self._probes(ctx.replicas)
            return self._pass_one(
                ctx.values, inputs[0], probes, state.u, ctx.loss_scale
            )
        at = ctx.values if lookahead is None else lookahead.values(ctx.values)
        passes = [
            self._micro_batch_pass_one(at, part, j)
            for j, part in enumerate(inputs)
        ]
        loss, y_pred, non_trainable, metrics = micro_batches.join(
            inputs[0].non_trainable,
            inputs[0].metrics,
            [(p.loss, p.y_pred, p.non_trainable, p.metrics) for p in passes],
        )
        groups = [p.groups[0] for p in passes]
        one = PassOne(loss, groups, y_pred, None, non_trainable, metrics)
        return self._kept_once(one, inputs[0].x)

    # The backend's hooks.

    def _pass_one(
        self, values: list, batch: PassInputs, probes, u: list, loss_scale
    ) -> PassOne:
        """Pass 1 over the whole batch, as Keras' own train step runs it,
        differentiated with respect to `plan.clean_indices` (`values` are
        theirs, for a backend that runs it functionally); with `probes`
        (`_probes`), the weight matrices' layers run through them and pass
        1 gives their singular pairs from the state's `u` instead of their
        gradients, unless a layer ran twice (`probes.py`)."""
        raise NotImplementedError

    def _micro_batch_pass_one(
        self, values: list, batch: PassInputs, index: int
    ) -> PassOne:
        """Pass 1 of the micro-batch `index`, run functionally at `values`
        from the values before the step: its non-trainable and metric values
        after it in the result, nothing assigned."""
        raise NotImplementedError

    def _kept_once(self, one: PassOne, x) -> PassOne:
        """The micro-batches' joined pass 1 with its side effects kept
        once: a backend that assigns variables (TensorFlow, torch, this
        default) gives the non-trainable and metric variables their joined
        values, SAM's own state aside, and tracks the loss on the batch `x`
        as Keras' step does (`_track_loss`); one that runs functionally
        (JAX) returns `one` as it is."""
        own = {id(v) for v in self._state.flat()}
        for variables, values in (
            (self.non_trainable_variables, one.non_trainable),
            (self.metrics_variables, one.metrics),
        ):
            for variable, value in zip(variables, values):
                if id(variable) not in own:
                    variable.assign(value)
        self._track_loss(one.loss, x)
        return one

    def _track_loss(self, loss, x) -> None:
        """The loss tracker's update with a batch's loss, as Keras' step
        does it (a backend whose pass 1 assigns variables)."""
        raise NotImplementedError

    def _pass_two(self, loss, values: list, scope, batch: PassInputs) -> tuple:
        """Pass 2 of the micro-batch `batch`: the gradient of `loss`
        (`_pass_two_loss`: `values -> (scaled loss, loss)`) at `values` (the
        perturbation's), run within `scope` (the perturbation's,
        `perturbation.py`). Returns `(loss, gradients)`: the loss unscaled,
        the gradients of the scaled loss aligned with the trainable
        variables (`None` where not differentiated). The backend only
        differentiates: it calls nothing else of the trainer."""
        raise NotImplementedError

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
