"""Schedule: when an ascent is taken and what is used on the other steps.

`t` is the SAM step counter: `t = step - start_step`, so `t = 0` is the first
step that may perturb and steps with `t < 0` are plain base-optimizer steps.

References:
    Liu et al., "Sharpness-Aware Minimization in Large-Batch Training:
    Training Vision Transformer in Minutes", 2022: Alg. 1 (LookSAM), eq. (4),
    and the SAM-k baseline of Sec. 3.2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras import ops

from keras_sam.src.methods.tensors import DELTA, global_dot, global_norm


def rho_at(rho: float | Callable, t):
    """The radius at SAM step `t` (>= 0): a constant, or `rho(t)` for a
    `LearningRateSchedule` or any callable, called with `t` as a float32
    scalar tensor."""
    if callable(rho):
        return ops.cast(rho(ops.cast(t, "float32")), "float32")
    return rho


def takes_ascent(t, reuse: str | None, k: int | None):
    """Whether step `t` runs the second pass: every step with `t >= 0`, or,
    with `reuse` ("look" or "every_k"), those with `t % k == 0`."""
    active = ops.greater_equal(t, 0)
    if reuse is None:
        return active
    return ops.logical_and(active, ops.equal(ops.mod(t, k), 0))


def look_projection(gradients: Sequence, sam_gradients: Sequence) -> list:
    """`g_v = g_s - (<g, g_s> / (||g||^2 + delta)) g` (LookSAM eq. 4, Alg. 1).

    The component of the SAM gradient orthogonal to the clean gradient, with
    the inner product global over all trainable variables (never per tensor).
    """
    coefficient = global_dot(gradients, sam_gradients) / (
        global_dot(gradients, gradients) + DELTA
    )
    return [gs - coefficient * g for g, gs in zip(gradients, sam_gradients)]


def look_stored(gradients: Sequence, g_v: Sequence, scale: str) -> list:
    """What LookSAM keeps of `g_v` between ascents: `g_v` itself, or with
    `scale="relative"`, `g_v / (||g|| + delta)` (its size relative to the
    clean gradient of the ascent step)."""
    if scale != "relative":
        return list(g_v)
    factor = 1.0 / (global_norm(gradients) + DELTA)
    return [factor * v for v in g_v]


def look_reuse(
    gradients: Sequence, stored: Sequence, alpha, scale: str
) -> list:
    """The update of a reuse step, `g + alpha * c * g_v` (LookSAM Alg. 1,
    else branch), with `stored` as `look_stored` keeps it:

    - `scale="gradient"` (Alg. 1): `c = ||g|| / (||g_v|| + delta)`, so the
      reuse term has norm `alpha * ||g||` whatever `rho`;
    - `"stored"`: `c = 1`, `g_v` as the ascent measured it (its norm grows
      with `rho`, as SAM's own departure from `g`);
    - `"relative"`: `c = ||g|| / ||g_a||`, `g_a` the clean gradient of the
      ascent step: `g_v` keeps its size relative to the gradient.
    """
    if scale == "gradient":
        factor = alpha * global_norm(gradients) / (global_norm(stored) + DELTA)
    elif scale == "relative":
        factor = alpha * global_norm(gradients)
    else:
        factor = alpha
    return [g + factor * v for g, v in zip(gradients, stored)]
