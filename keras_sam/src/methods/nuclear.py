"""The nuclear geometries of nuSAM: one rank-1 perturbation per weight matrix.

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024: Alg. 1 (nuSAM), Alg. 2 (warm-started
    top-1 SVD by power iteration), App. C.1 (nuSAM-Norm, eq. 21).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from keras_sam.src.methods.tensors import DELTA, all_finite

# Alg. 2's tau.
TAU = 1e-12


def initial_vectors(row_counts: Sequence[int]) -> list[np.ndarray]:
    """The initial fan-in vectors `u`, identical on every backend.

    Drawn in order from `numpy.random.default_rng(0)`, one standard normal
    vector per matrix, normalised, float32. Not a constant vector: the
    gradient `A` of a Dense layer after a LayerNorm at initialisation has
    `A^T 1 = 0`, so a constant start makes the first perturbation rounding
    noise.
    """
    rng = np.random.default_rng(0)
    vectors = []
    for rows in row_counts:
        u = rng.standard_normal(rows)
        vectors.append((u / np.linalg.norm(u)).astype("float32"))
    return vectors


def power_iteration(product, transposed_product, u, iterations: int):
    """Alg. 2 for the matrix `A` that `product(v) = A v` and
    `transposed_product(u) = A^T u` apply: `iterations` warm-started power
    iterations from `u`,

    `v = A^T u / (||A^T u|| + tau)`, then `u = A v / (||A v|| + tau)`.

    Returns:
        `(u, v, sigma)`, `sigma = u^T A v` (nuSAM-Norm's singular value),
        read off the last iteration: `||A v||^2 / (||A v|| + tau)`.
    """
    v = sigma = None
    for _ in range(iterations):
        v = transposed_product(u)
        v = v / (ops.sqrt(ops.sum(ops.square(v))) + TAU)
        u = product(v)
        norm = ops.sqrt(ops.sum(ops.square(u)))
        u = u / (norm + TAU)
        sigma = norm * norm / (norm + TAU)
    return u, v, sigma


def top_singular_pair(matrix, u, iterations: int):
    """Alg. 2 on a matrix `A` held as a tensor."""
    return power_iteration(
        lambda v: ops.matmul(matrix, v),
        lambda u: ops.matmul(u, matrix),  # A^T u, as a row vector
        u,
        iterations,
    )


def outer_sum_pair(x, dy, u, iterations: int):
    """Alg. 2 on `A = x^T dy` without forming `A`: the gradient of a layer's
    kernel from its flattened input `x` `(N, rows)` and output gradient
    `dy` `(N, cols)`, so `A v = x^T (dy v)` and `A^T u = dy^T (x u)`, two
    products of `N (rows + cols)` each.
    """
    return power_iteration(
        lambda v: ops.matmul(ops.matmul(dy, v), x),
        lambda u: ops.matmul(ops.matmul(x, u), dy),
        u,
        iterations,
    )


def rank_one(
    matrices: Sequence,
    vectors: Sequence,
    rho,
    iterations: int,
    normalized: bool,
):
    """The factors of `eps_i = scale_i * u_i v_i^T` for each matrix `A_i`
    (`rank_one_from_pairs`, with Alg. 2 on each matrix).

    Returns:
        `(u, v, scales)`: lists, one entry per matrix.
    """
    pairs = [
        top_singular_pair(a, u, iterations) for a, u in zip(matrices, vectors)
    ]
    return rank_one_from_pairs(
        *zip(*pairs), vectors, rho, normalized, all_finite(matrices)
    )


def rank_one_from_pairs(
    us: Sequence,
    vs: Sequence,
    sigmas: Sequence,
    vectors: Sequence,
    rho,
    normalized: bool,
    finite,
):
    """The factors of `eps_i = scale_i * u_i v_i^T` from each matrix's top
    singular pair `(u_i, v_i)` and `sigma_i = u_i^T A_i v_i`.

    `nuclear` (Alg. 1): `scale_i = rho`, each matrix independently.
    `nuclear_norm` (App. C.1, eq. 21):
    `scale_i = rho * sigma_i / (sqrt(sum_j sigma_j^2) + delta)`.
    Where `finite` is false (a direction that is not finite) every scale is
    0 and the state's `vectors` stay.

    Returns:
        `(u, v, scales)`: lists, one entry per matrix.
    """
    if normalized:
        total = ops.sqrt(ops.sum(ops.square(ops.stack(sigmas)))) + DELTA
        scales = [rho * s / total for s in sigmas]
    else:
        scales = [rho + ops.zeros((), "float32") for _ in us]
    us = [ops.where(finite, new, old) for new, old in zip(us, vectors)]
    scales = [ops.where(finite, s, 0.0) for s in scales]
    vs = [ops.where(finite, v, 0.0) for v in vs]
    return us, vs, scales


def probe_gradient(flat, upstream, probe, iterations: int):
    """`concat(u, v, [sigma])` of Alg. 2 on `flat^T upstream` (a layer's
    flattened input and output gradient: its kernel's gradient, never
    formed), in float32, warm-started from the probe's first `rows`
    entries, `u`."""
    u, v, sigma = outer_sum_pair(
        ops.cast(flat, "float32"),
        ops.cast(upstream, "float32"),
        probe[: flat.shape[1]],
        iterations,
    )
    return ops.concatenate([u, v, ops.reshape(sigma, (1,))])
