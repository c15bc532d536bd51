"""The backend-neutral SAM step, as pure functions of values.

A step on every backend: pass 1 gives the clean gradient (as Keras' own step
does); `gather` turns it into what the method reads; `gradient_ema` and
`direction` give the ascent direction (MSAM's `lookahead` gives pass 1's
point instead); `ascent_policy` decides whether the step ascends; on an
ascent step, `perturb` gives the perturbation, the backend runs pass 2 with
it and `after_ascent` reads its gradient; on a reuse step, `reuse` gives the
update instead; `descend` applies the descent rule (GSAM, WSAM) to an
ascent's gradient; `commit` keeps the new state only if every gradient was
finite, and `merge` lays the result out for the base optimizer.

Every function reads the step's `Context`, built once per step: the plan,
the options, the values before the step, the loss scale, the replicas, the
SAM step and the radius.

Conventions, by name: a *share* is this replica's share of the global
gradient (its local mean loss divided by the replica count; the shares of
all replicas sum to the global gradient, and the base optimizer receives
shares). *Scaled* gradients carry the loss scale of a `LossScaleOptimizer`
(or `loss_scale_factor`); the method's math and its state are unscaled
float32. Lists are over `plan.gradient_indices` unless said otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from keras_sam.src import micro_batches
from keras_sam.src.methods import (
    descent,
    friendly,
    momentum,
    nuclear,
    schedule,
)
from keras_sam.src.methods.geometry import perturbation
from keras_sam.src.methods.tensors import all_finite, global_dot, to_float32
from keras_sam.src.options import SAMOptions
from keras_sam.src.perturbation import Dense, RankOne
from keras_sam.src.plan import StepPlan
from keras_sam.src.probes import SingularPairs
from keras_sam.src.replicas import Replicas
from keras_sam.src.state import SAMState


class Context(NamedTuple):
    """What every function of one step reads and none changes.

    Attributes:
        plan: which variables take part (`plan.py`).
        options: the resolved options.
        values: the trainable variables' values before the step.
        loss_scale: the factor of a scaled loss (float32), or `None`.
        replicas: the replicas that run the step together.
        t: the SAM step, `iterations - start_step` (or minus late-phase
            SAM's `start`): negative before the first SAM step.
        rho: the step's radius: `rho`, or its schedule's value at `t`.
    """

    plan: StepPlan
    options: SAMOptions
    values: list
    loss_scale: Any
    replicas: Replicas
    t: Any
    rho: Any


class Clean(NamedTuple):
    """Pass 1's result as the method reads it: float32, unscaled.

    Attributes:
        loss: pass 1's mean loss `L(w)` (this replica's, unscaled).
        scaled: pass 1's mean gradient as the backend gave it: scaled
            shares aligned with the trainable variables, `None` where not
            differentiated.
        share: this replica's share, over the SAM gradient's variables.
        total: the global gradient over the same variables, when the step
            reads it beyond the perturbed ones (LookSAM, AE-SAM's policy,
            GSAM's global decomposition), else `None`.
        perturbed: the global gradient over the perturbed variables, when
            anything reads it (the global ascent, F-SAM's EMA, nuSAM's
            `u`), else `None`.
        ascents: what each micro-batch's ascent follows over the perturbed
            variables: one, the global gradient; or each micro-batch's
            (`batch_splits`) or replica's (`ascent="per_replica"`) own.
        own: whether the ascents follow their micro-batches' own gradients.
        groups: each micro-batch's share over the SAM gradient's variables,
            when its descent rule reads it (GSAM decomposes each own
            gradient), else `None`.
        finite: whether the clean gradient is finite on every replica.
        present: for each trainable variable, whether pass 1 gave it a
            gradient.
        others: pass 1's gradients (scaled shares) of the trainable
            variables outside the SAM gradient, by index.
        pairs: nuSAM's singular pairs of the weight matrices' gradients
            when pass 1 computed them instead of the gradients
            (`probes.py`; `share` is then `[]`, `perturbed` and the
            ascent `None`), else `None`.
    """

    loss: Any
    scaled: list
    share: list
    total: list | None
    perturbed: list | None
    ascents: list[list]
    own: bool
    groups: list[list] | None
    finite: Any
    present: tuple[bool, ...]
    others: dict
    pairs: SingularPairs | None = None


class Branch(NamedTuple):
    """What an ascent or a reuse step gives (the same structure for both,
    as a traced conditional requires).

    Attributes:
        gradients: the update for the base optimizer: this replica's share,
            scaled, in each variable's dtype.
        sharpness: `L(w + eps) - L(w)` (0 on a reuse step).
        g_v: LookSAM's new `g_v` (this replica's share of it), or the
            state's on a reuse step.
        u: nuSAM's fan-in vectors after the ascent, or the state's.
        finite: whether `gradients` is finite on this replica.
    """

    gradients: list
    sharpness: Any
    g_v: list
    u: list
    finite: Any


class Ascent(NamedTuple):
    """One ascent: the perturbation, nuSAM's fan-in vectors after it (the
    state's for the other geometries) and the direction it followed (`[]`
    from singular pairs)."""

    perturbation: Dense | RankOne
    u: list
    direction: list


class PassTwo(NamedTuple):
    """Pass 2's result: the loss `L(w + eps)` (unscaled), the gradients
    (scaled shares, aligned with the trainable variables, `None` where not
    differentiated) and GSAM's update of each micro-batch's own ascent
    (`own_gsam`; `None` for the other descent rules); the mean over the
    micro-batches."""

    loss: Any
    gradients: list
    own: list | None


def or_zeros(tensors: list, like: list, indices) -> list:
    """`tensors[i]`, or zeros shaped like `like[i]` where it is `None` (a
    variable without gradient), for each of `indices`."""
    return [
        ops.zeros_like(like[i]) if tensors[i] is None else tensors[i]
        for i in indices
    ]


def scaled(loss, loss_scale):
    """`loss` times the loss scale, as `optimizer.scale_loss` gives it."""
    return loss if loss_scale is None else loss * loss_scale


def unscaled(tensors: list, loss_scale) -> list:
    """The gradients in float32 and, under loss scaling, unscaled."""
    tensors = to_float32(tensors)
    if loss_scale is None:
        return tensors
    return [t / loss_scale for t in tensors]


def gather(
    ctx: Context, groups: list[list], loss, pairs: SingularPairs | None = None
) -> Clean:
    """Pass 1's result as the method reads it, all-reduced where the step
    needs global values: `groups` are each micro-batch's gradients (`[the
    batch's]` for one), aligned with the trainable variables, scaled shares,
    `None` where not differentiated, and `loss` their mean loss; or, with
    `pairs`, the singular pairs pass 1 gave instead of the weight matrices'
    gradients (one replica, one micro-batch)."""
    grads = micro_batches.mean_gradients(groups)
    if pairs is not None:
        return _gathered_pairs(ctx.plan, loss, grads, pairs)
    plan, options, replicas = ctx.plan, ctx.options, ctx.replicas
    gi, pi = plan.gradient_indices, plan.perturbed_indices
    position = {i: j for j, i in enumerate(gi)}
    share = unscaled(or_zeros(grads, ctx.values, gi), ctx.loss_scale)
    own = len(groups) > 1 or (
        options.ascent == "per_replica" and replicas.count > 1
    )
    total = perturbed = None
    if _reads_total(options, own):
        total = replicas.sum(share)
        perturbed = [total[position[i]] for i in pi]
    elif not own or options.friendly or plan.matrices:
        perturbed = replicas.sum([share[position[i]] for i in pi])
    shares = [share]
    if len(groups) > 1:
        shares = [
            unscaled(or_zeros(g, ctx.values, gi), ctx.loss_scale)
            for g in groups
        ]
    ascents = [perturbed]
    if own:
        ascents = [replicas.own([s[position[i]] for i in pi]) for s in shares]
    return Clean(
        loss=loss,
        scaled=grads,
        share=share,
        total=total,
        perturbed=perturbed,
        ascents=ascents,
        own=own,
        groups=shares if own and options.descent == "gsam" else None,
        finite=replicas.all(all_finite(share)),
        present=tuple(g is not None for g in grads),
        others=_outside(plan, grads),
    )


def _gathered_pairs(
    plan: StepPlan, loss, grads: list, pairs: SingularPairs
) -> Clean:
    present = [g is not None for g in grads]
    for i, called in zip(plan.perturbed_indices, pairs.called):
        present[i] = called
    return Clean(
        loss=loss,
        scaled=grads,
        share=[],
        total=None,
        perturbed=None,
        ascents=[None],
        own=False,
        groups=None,
        finite=pairs.finite(),
        present=tuple(present),
        others=_outside(plan, grads),
        pairs=pairs,
    )


def _outside(plan: StepPlan, grads: list) -> dict:
    """Pass 1's gradients of the variables outside the SAM gradient, by
    index."""
    inside = set(plan.gradient_indices)
    return {i: g for i, g in enumerate(grads) if i not in inside}


def _reads_total(options: SAMOptions, own: bool) -> bool:
    """Whether the step reads the global gradient over every variable of the
    SAM gradient: LookSAM's projection, AE-SAM's norm, GSAM's global
    decomposition."""
    return (
        options.reuse == "look"
        or options.policy == "adaptive"
        or (options.descent == "gsam" and not own)
    )


def gradient_ema(options: SAMOptions, ema: list, clean: Clean, active):
    """The EMA of the clean gradient after this step, F-SAM's or MSAM's
    (unchanged before `start_step`; `[]` without either)."""
    if not (options.friendly or options.direction == "momentum"):
        return []
    new = friendly.ema_update(ema, clean.perturbed, options.ema_decay)
    return [ops.where(active, n, old) for n, old in zip(new, ema)]


def direction(options: SAMOptions, gradients: list, ema: list) -> list:
    """The ascent direction: the gradient, or F-SAM's `g - sigma * m`."""
    if not options.friendly:
        return gradients
    return friendly.direction(gradients, ema, options.sigma)


def ascent_policy(
    options: SAMOptions, t, clean: Clean, statistics: list, active
) -> tuple[Any, list]:
    """Whether SAM step `t` ascends, and AE-SAM's statistics after it.

    `policy="periodic"`: every step with `t >= 0`, or every `k`-th with
    `reuse`. `policy="adaptive"` (AE-SAM): the statistics of `||g||^2`
    (global over the SAM gradient's variables) take this step's norm, then
    the step ascends if `||g||^2 >= mu + c_t sigma`; before `start_step`
    the statistics stay and nothing ascends (`[]` without the policy).
    `policy="random"` (RST): step `t >= 0` ascends with probability `p_t`.
    MSAM's steps never ascend: pass 1 ran at its look-ahead.
    """
    if options.direction == "momentum":
        return ops.zeros((), "bool"), []
    if options.policy == "random":
        t_0 = ops.maximum(t, 0)
        p = schedule.rho_at(options.ascent_probability, t_0)
        ascends = schedule.random_ascends(t_0, p, options.policy_seed)
        return ops.logical_and(ops.greater_equal(t, 0), ascends), []
    if options.policy != "adaptive":
        return schedule.takes_ascent(t, options.reuse, options.k), []
    squared_norm = global_dot(clean.total, clean.total)
    new = schedule.policy_statistics(
        statistics, squared_norm, options.policy_decay
    )
    new = [ops.where(active, n, old) for n, old in zip(new, statistics)]
    threshold = schedule.rho_at(options.policy_threshold, ops.maximum(t, 0))
    ascends = schedule.policy_ascends(squared_norm, new, threshold)
    return ops.logical_and(active, ascends), new


def valid_policy(options: SAMOptions, t):
    """Whether RST's probability schedule is in `[0, 1]` at SAM step `t`: a
    step where it is not is skipped, as a non-finite one is (always true
    before `start_step`, and without a schedule)."""
    probability = options.ascent_probability
    if options.policy != "random" or not callable(probability):
        return True
    p = schedule.rho_at(probability, ops.maximum(t, 0))
    return ops.logical_or(ops.less(t, 0), schedule.valid_probability(p))


def perturb(ctx: Context, direction: list, gradients: list, u: list):
    """The perturbation of the ascent along `direction` (over the perturbed
    variables; `gradients` are the clean ones, read by the Fisher and layer
    geometries), and nuSAM's fan-in vectors after it."""
    plan, options = ctx.plan, ctx.options
    if plan.matrices:
        matrices = [
            m.view.to_matrix(d) for m, d in zip(plan.matrices, direction)
        ]
        u, v, scales = nuclear.rank_one(
            matrices,
            u,
            ctx.rho,
            options.power_iterations,
            normalized=options.geometry == "nuclear_norm",
        )
        return RankOne(plan.perturbed_indices, plan.matrices, u, v, scales), u
    weights = to_float32([ctx.values[i] for i in plan.perturbed_indices])
    eps = perturbation(plan.geometry, direction, gradients, weights, ctx.rho)
    return Dense(plan.perturbed_indices, eps), u


def lookahead(ctx: Context, state: SAMState) -> Dense | None:
    """MSAM's look-ahead, where its step's one pass runs: the geometry's
    perturbation along `-m`, `m` the state's EMA of the gradients (zero at
    the first step, as `m` is, and before `start_step`); `None` for the
    other methods."""
    if not ctx.plan.looks_ahead:
        return None
    rho = ops.where(ops.greater_equal(ctx.t, 0), ctx.rho, 0.0)
    along = momentum.direction(state.ema)
    return perturb(ctx._replace(rho=rho), along, along, state.u)[0]


def ascent_perturbation(
    ctx: Context, ascent: list | None, clean: Clean, ema: list, u: list
) -> Ascent:
    """The ascent along `ascent` (one of `clean.ascents`) from the state's
    fan-in vectors `u`: `perturb` along `direction`, or
    `perturb_from_pairs` when pass 1 gave singular pairs."""
    if clean.pairs is not None:
        return Ascent(*perturb_from_pairs(ctx, clean, u), [])
    along = direction(ctx.options, ascent, ema)
    return Ascent(*perturb(ctx, along, ascent, u), along)


def perturb_from_pairs(ctx: Context, clean: Clean, u: list):
    """`perturb` from the singular pairs that pass 1 computed
    (`clean.pairs`); `u` is the state's, kept if they are not finite."""
    pairs = clean.pairs
    u, v, scales = nuclear.rank_one_from_pairs(
        pairs.u,
        pairs.v,
        pairs.sigma,
        u,
        ctx.rho,
        normalized=ctx.options.geometry == "nuclear_norm",
        finite=clean.finite,
    )
    plan = ctx.plan
    return RankOne(plan.perturbed_indices, plan.matrices, u, v, scales), u


def after_ascent(
    ctx: Context, clean: Clean, two: PassTwo, g_v: list, u: list
) -> Branch:
    """The ascent step's result from pass 2's (`two`): its gradient, or
    GSAM's own updates where each micro-batch decomposed its own; the
    sharpness `L(w + eps) - L(w)`; LookSAM stores its `g_v` (the state's,
    `g_v`, stays for the other methods); nuSAM's `u` after the ascent."""
    g_s = or_zeros(two.gradients, ctx.values, ctx.plan.gradient_indices)
    sharpness = ops.cast(two.loss, "float32") - ops.cast(clean.loss, "float32")
    if ctx.options.reuse == "look":
        g_v = schedule.look_stored(
            clean.total,
            schedule.look_projection(
                clean.total, unscaled(g_s, ctx.loss_scale)
            ),
            ctx.options.reuse_scale,
        )
    update = g_s if two.own is None else two.own
    return Branch(update, sharpness, list(g_v), list(u), all_finite(g_s))


def reuse(ctx: Context, clean: Clean, state: SAMState, active) -> Branch:
    """A step without ascent: the clean gradient, or LookSAM's reuse
    `g + alpha * c * g_v` (alpha = 0 before `start_step`: `g` exactly)."""
    options = ctx.options
    final = or_zeros(clean.scaled, ctx.values, ctx.plan.gradient_indices)
    if options.reuse == "look":
        alpha = ops.where(active, options.alpha, 0.0)
        reused = schedule.look_reuse(
            clean.total, state.g_v, alpha, options.reuse_scale
        )
        final = rescaled(ctx.replicas.share(reused), ctx.loss_scale, final)
    zero = ops.zeros((), "float32")
    return Branch(final, zero, list(state.g_v), list(state.u), clean.finite)


def global_g_v(ctx: Context, g_v: list, old: list, ascent) -> list:
    """LookSAM's `g_v` to keep: on many replicas, the sum of the replicas'
    shares after an ascent (the state's, `old`, otherwise); as it is on
    one."""
    if ctx.options.reuse != "look" or ctx.replicas.count == 1:
        return list(g_v)
    return [
        ops.where(ascent, new, kept)
        for new, kept in zip(ctx.replicas.sum(g_v), old)
    ]


def descend(
    ctx: Context, clean: Clean, branch: Branch, ascent
) -> tuple[Branch, list | None]:
    """The branch with the descent rule applied to an ascent's `g_s`
    (`branch.gradients`; a reuse step's update is kept), and WSAM's
    decoupled term.

    Runs after the traced conditional, so that GSAM's global decomposition
    can all-reduce `g_s` (MirroredStrategy cannot inside one). `"sam"`:
    `g_s`. `"gsam"`: `g_s - alpha g_perp`, with `g_perp` from the global
    `g` and `g_s` (a global ascent: the one-device trajectory); when each
    micro-batch or replica ascends along its own gradient, each decomposes
    its own, as the GSAM code does per device (`own_gsam`, within the
    ascent), and the update is kept. `"wsam"`: the coupled `g + w (g_s -
    g)`, or, decoupled, `g` for the optimizer and the term `w (g_s - g)`
    (global, float32, zero unless the step ascended), `w = gamma / (1 -
    gamma)`, which the backend subtracts times the learning rate after the
    optimizer's step.
    """
    options, replicas = ctx.options, ctx.replicas
    if options.descent == "sam" or clean.groups is not None:
        return branch, None
    g, g_s = clean.share, unscaled(branch.gradients, ctx.loss_scale)
    term = None
    if options.descent == "gsam":
        c = descent.gsam_coefficient(clean.total, replicas.sum(g_s))
        update = descent.gsam(g, g_s, c, options.gsam_alpha)
    elif options.decoupled:
        update = None
        term = replicas.sum(descent.wsam_sharpness(g, g_s, options.gamma))
        term = [ops.where(ascent, d, ops.zeros_like(d)) for d in term]
    else:
        update = descent.wsam(g, g_s, options.gamma)
    if update is None:
        gi = ctx.plan.gradient_indices
        gradients = or_zeros(clean.scaled, ctx.values, gi)
    else:
        gradients = rescaled(update, ctx.loss_scale, branch.gradients)
    if not ctx.plan.ascends_every_step:
        gradients = [
            ops.where(ascent, n, b) for n, b in zip(gradients, branch.gradients)
        ]
    return branch._replace(gradients=gradients), term


def own_gsam(ctx: Context, share: list, grads_2: list) -> list:
    """GSAM's update of one micro-batch or replica from its own clean
    gradient (`share`, unscaled float32) and pass 2's gradients (scaled,
    aligned with the trainable variables): scaled, in their dtypes, over the
    SAM gradient's variables. The coefficient is scale-invariant, and the
    update linear once it is fixed, so shares give shares."""
    g_s = or_zeros(grads_2, ctx.values, ctx.plan.gradient_indices)
    unscaled_g_s = unscaled(g_s, ctx.loss_scale)
    c = descent.gsam_coefficient(share, unscaled_g_s)
    update = descent.gsam(share, unscaled_g_s, c, ctx.options.gsam_alpha)
    return rescaled(update, ctx.loss_scale, g_s)


def rescaled(tensors: list, loss_scale, like: list) -> list:
    """Unscaled float32 `tensors` scaled back (under loss scaling) and cast
    to the dtypes of `like`."""
    if loss_scale is not None:
        tensors = [t * loss_scale for t in tensors]
    return [ops.cast(t, x.dtype) for t, x in zip(tensors, like)]


def commit(old: Any, new: Any, ok) -> Any:
    """`new` if `ok`, else `old` (structures of tensors alike): a skipped
    step leaves the SAM state, the counter included, and the variables as
    they were."""
    return keras.tree.map_structure(lambda n, o: ops.where(ok, n, o), new, old)


def merge(
    plan: StepPlan, clean: Clean, gradients: list, present: tuple[bool, ...]
) -> list:
    """The list for the base optimizer: `gradients` (over the SAM
    gradient's variables) where a variable has a gradient (`present`, as
    `StepPlan.has_gradient` says), pass 1's for the variables outside the
    SAM gradient, `None` elsewhere."""
    final = [clean.others.get(i) for i in range(len(present))]
    for i, g in zip(plan.gradient_indices, gradients):
        if present[i]:
            final[i] = g
    return final
