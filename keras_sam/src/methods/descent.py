"""The descent rule: the update of an ascent step, from `g` and `g_s`.

`g` is the clean gradient (pass 1, at `w`) and `g_s` the gradient at the
perturbed weights (pass 2, at `w + eps`). SAM descends along `g_s`; GSAM
and WSAM combine the two. Inner products and norms are global over the
tensors of the lists (never per tensor), in float32.

References:
    Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware
    Training" (GSAM), ICLR 2022: Alg. 1.
    Yue et al., "Sharpness-Aware Minimization Revisited: Weighted Sharpness
    as a Regularization Term" (WSAM), KDD 2023: the WSAM loss and Alg. 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_sam.src.methods.tensors import DELTA, global_dot


def gsam_coefficient(gradients: Sequence, sam_gradients: Sequence):
    """`c = <g, g_s> / (||g_s||^2 + delta)`: the parallel component of `g`
    along `g_s` is `c g_s` (GSAM Alg. 1, the decomposition of `g`).

    `c` is scale-invariant: any common factor of `g` and `g_s` (a replica's
    share instead of its own gradient) leaves it unchanged.
    """
    return global_dot(gradients, sam_gradients) / (
        global_dot(sam_gradients, sam_gradients) + DELTA
    )


def gsam(
    gradients: Sequence, sam_gradients: Sequence, coefficient, alpha: float
) -> list:
    """GSAM's update `g_s - alpha g_perp` (Alg. 1), with the component of the
    clean gradient orthogonal to `g_s`, `g_perp = g - c g_s` (`c` from
    `gsam_coefficient`): `(1 + alpha c) g_s - alpha g`.

    Linear in `(g, g_s)` once `c` is fixed, so shares of `g` and `g_s` give
    shares of the update.
    """
    return [
        gs + alpha * (coefficient * gs - g)
        for g, gs in zip(gradients, sam_gradients)
    ]


def wsam_weight(gamma: float) -> float:
    """The weight of WSAM's sharpness term, `gamma / (1 - gamma)` (the WSAM
    loss `L(w) + gamma / (1 - gamma) (L(w + eps) - L(w))`): 0 at `gamma = 0`
    (the base optimizer), 1 at `gamma = 1/2` (SAM)."""
    return gamma / (1.0 - gamma)


def wsam_sharpness(
    gradients: Sequence, sam_gradients: Sequence, gamma: float
) -> list:
    """The gradient of WSAM's weighted sharpness term,
    `gamma / (1 - gamma) (g_s - g)`: what the decoupled form (Alg. 1)
    subtracts, times the learning rate, after the base optimizer's step on
    `g`."""
    weight = wsam_weight(gamma)
    return [weight * (gs - g) for g, gs in zip(gradients, sam_gradients)]


def wsam(gradients: Sequence, sam_gradients: Sequence, gamma: float) -> list:
    """WSAM's coupled update, the gradient of the WSAM loss:
    `g + gamma / (1 - gamma) (g_s - g)`, which the base optimizer receives
    instead of `g_s`."""
    sharpness = wsam_sharpness(gradients, sam_gradients, gamma)
    return [g + s for g, s in zip(gradients, sharpness)]
