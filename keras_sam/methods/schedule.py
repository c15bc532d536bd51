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

from keras_sam.methods.tensors import DELTA, global_dot, global_norm


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


def look_reuse(gradients: Sequence, g_v: Sequence, alpha: float) -> list:
    """`g + alpha * (||g|| / (||g_v|| + delta)) * g_v` (LookSAM Alg. 1, else
    branch): the stored orthogonal component rescaled to the current norm."""
    factor = alpha * global_norm(gradients) / (global_norm(g_v) + DELTA)
    return [g + factor * v for g, v in zip(gradients, g_v)]
