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


def top_singular_pair(matrix, u, iterations: int):
    """Alg. 2: `iterations` warm-started power iterations from `u`:

    `v = A^T u / (||A^T u|| + tau)`, then `u = A v / (||A v|| + tau)`.
    """
    v = None
    for _ in range(iterations):
        v = ops.matmul(u, matrix)  # A^T u, as a row vector
        v = v / (ops.sqrt(ops.sum(ops.square(v))) + TAU)
        u = ops.matmul(matrix, v)
        u = u / (ops.sqrt(ops.sum(ops.square(u))) + TAU)
    return u, v


def rank_one(
    matrices: Sequence,
    vectors: Sequence,
    rho,
    iterations: int,
    normalized: bool,
):
    """The factors of `eps_i = scale_i * u_i v_i^T` for each matrix `A_i`.

    `nuclear` (Alg. 1): `scale_i = rho`, each matrix independently.
    `nuclear_norm` (App. C.1, eq. 21): `sigma_i = u_i^T A_i v_i`,
    `scale_i = rho * sigma_i / (sqrt(sum_j sigma_j^2) + delta)`.
    A non-finite direction gives `scale = 0` and keeps the vectors.

    Returns:
        `(u, v, scales)`: lists, one entry per matrix.
    """
    pairs = [
        top_singular_pair(a, u, iterations) for a, u in zip(matrices, vectors)
    ]
    us = [u for u, _ in pairs]
    vs = [v for _, v in pairs]
    if normalized:
        sigmas = [
            ops.sum(u * ops.matmul(a, v)) for a, (u, v) in zip(matrices, pairs)
        ]
        total = ops.sqrt(sum(s * s for s in sigmas)) + DELTA
        scales = [rho * s / total for s in sigmas]
    else:
        scales = [rho + ops.zeros((), "float32") for _ in matrices]
    finite = all_finite(matrices)
    us = [ops.where(finite, new, old) for new, old in zip(us, vectors)]
    scales = [ops.where(finite, s, 0.0) for s in scales]
    vs = [ops.where(finite, v, 0.0) for v in vs]
    return us, vs, scales
