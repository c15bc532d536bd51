"""Geometry: how an ascent direction `d` becomes the perturbation `eps`.

Every geometry has the signature `(direction, gradients, weights, rho) -> eps`
on aligned lists of float32 tensors (the perturbed variables only); norms
without an index are global over that list. `gradients` are the clean
gradients `g` (they equal `direction` unless the direction is friendly).

References:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021 (l2).
    Kwon et al., "ASAM", ICML 2021 and Mueller et al., "Normalization Layers
    Are All That Sharpness-Aware Minimization Needs", NeurIPS 2023, eq. (5)
    and App. A.3, Table 9 (adaptive, fisher, linf).
    Liu et al., "Sharpness-Aware Minimization in Large-Batch Training:
    Training Vision Transformer in Minutes", 2022, eq. (7) and Alg. 2-3
    (layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras import ops

from keras_sam.src.methods.tensors import DELTA, all_finite, global_norm

Geometry = Callable[[list, list, list, object], list]

# Keras names of bias-like variables, which ASAM does not rescale by default.
BIAS_NAMES = ("bias", "beta")


def diagonal(direction: Sequence, scales: Sequence, rho, norm: str) -> list:
    """The (A)SAM perturbation for a diagonal operator `T` (SAM-ON eq. 5).

    `l2`: `eps = rho * T^2 d / (||T d|| + delta)`; `linf`:
    `eps = rho * T * sign(d)`. A scale of `None` is the identity (`T = 1`).
    """
    if norm == "linf":
        return [
            rho * ops.sign(d) if t is None else rho * t * ops.sign(d)
            for d, t in zip(direction, scales)
        ]
    scaled = [d if t is None else t * d for d, t in zip(direction, scales)]
    factor = rho / (global_norm(scaled) + DELTA)
    return [
        factor * s if t is None else factor * t * s
        for s, t in zip(scaled, scales)
    ]


def l2(direction, gradients, weights, rho, *, norm: str = "l2") -> list:
    """SAM: `eps = rho * d / (||d|| + delta)`, or `rho * sign(d)` for linf."""
    return diagonal(direction, [None] * len(direction), rho, norm)


def adaptive(
    direction,
    gradients,
    weights,
    rho,
    *,
    eta: float,
    layerwise: bool,
    scaled: Sequence[bool],
    norm: str = "l2",
) -> list:
    """ASAM: `T = |w| + eta` (elementwise) or `T_i = ||w_i|| + eta` (layerwise).

    Variables with `scaled[i] == False` (bias-like, unless `normalize_bias`)
    get `T = 1`, as in the ASAM and SAM-ON code.
    """
    scales = []
    for w, scale in zip(weights, scaled):
        if not scale:
            scales.append(None)
        elif layerwise:
            scales.append(global_norm([w]) + eta)
        else:
            scales.append(ops.abs(w) + eta)
    return diagonal(direction, scales, rho, norm)


def fisher(direction, gradients, weights, rho, *, eta: float) -> list:
    """Fisher-SAM: `T = (1 + eta * g^2)^(-1/2)` elementwise, l2 (Table 9)."""
    scales = [ops.rsqrt(1.0 + eta * ops.square(g)) for g in gradients]
    return diagonal(direction, scales, rho, "l2")


def layer(direction, gradients, weights, rho, *, scale: str = "eq7") -> list:
    """LayerSAM: each variable's perturbation scaled by its weight norm.

    `scale="eq7"` (eq. 7 with p = q = 2, the paper's formula):
    `eps_i = rho * ||w_i|| / (||g_i|| + delta) * d_i / (||d|| + delta)`, so
    `||eps_i|| = rho * ||w_i|| / ||g||`: unbounded as the gradient shrinks.
    The algorithm listings write `sign(g)`; eq. 7 and eq. 2 give the
    normalised gradient, which we follow.

    `scale="layer"`: `eps_i = rho * ||w_i|| * d_i / (||d_i|| + delta)`: each
    variable moves by the fraction `rho` of its own norm.

    `scale="global"`: `eps_i = rho * ||w_i|| / ||w|| * d_i / (||d_i|| +
    delta)`: a total radius `rho` (as SAM's), shared in proportion to the
    variables' norms.
    """
    if scale == "eq7":
        factor = rho / (global_norm(direction) + DELTA)
        return [
            factor * (global_norm([w]) / (global_norm([g]) + DELTA)) * d
            for d, g, w in zip(direction, gradients, weights)
        ]
    if scale == "global":
        rho = rho / (global_norm(weights) + DELTA)
    return [
        rho * global_norm([w]) / (global_norm([d]) + DELTA) * d
        for d, w in zip(direction, weights)
    ]


def perturbation(
    geometry: Geometry, direction, gradients, weights, rho
) -> list:
    """`geometry(...)`, or zeros where the direction or gradient is not finite.

    A zero or non-finite norm gives `eps = 0`, never NaN; a zero
    norm already does through `delta`.
    """
    eps = geometry(direction, gradients, weights, rho)
    finite = all_finite(direction)
    if direction is not gradients:  # friendly: fisher and layer read g too
        finite = ops.logical_and(finite, all_finite(gradients))
    # One tensor at a time, each `eps` dropped once guarded: on an eager
    # backend the guard then costs one tensor, not a second perturbation.
    guarded = []
    for i, e in enumerate(eps):
        eps[i] = None
        guarded.append(ops.where(finite, e, 0.0))
    return guarded
