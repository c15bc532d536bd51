"""Arithmetic on vectors stored as lists of tensors (one per variable).

A Hessian-vector product, a direction in weight space and a perturbation
are such lists, aligned with a list of variables. Reductions are float32
(`keras_sam/src/methods/tensors.py`); random vectors are drawn in NumPy
from a seeded generator, so a seed gives the same vectors on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from keras_sam.src.methods.tensors import DELTA, global_dot, global_norm

dot = global_dot
norm = global_norm


def combine(*terms: tuple) -> list:
    """`sum_k c_k * v_k` for `terms = ((c_1, v_1), (c_2, v_2), ...)`."""
    (c, v), rest = terms[0], terms[1:]
    out = [c * t for t in v]
    for c, v in rest:
        out = [o + c * t for o, t in zip(out, v)]
    return out


def scaled(vector: Sequence, factor) -> list:
    return [factor * t for t in vector]


def normalized(vector: Sequence) -> list:
    """`vector / ||vector||` (zero stays zero)."""
    return scaled(vector, 1.0 / (norm(vector) + DELTA))


def orthogonal(vector: Sequence, basis: Sequence[Sequence]) -> list:
    """`vector` minus its projection on the orthonormal `basis`
    (Gram-Schmidt)."""
    for b in basis:
        vector = combine((1.0, vector), (-dot(vector, b), b))
    return vector


def from_numpy(arrays: Sequence[np.ndarray]) -> list:
    return [ops.convert_to_tensor(a, "float32") for a in arrays]


def to_numpy(vector: Sequence) -> list:
    return [np.asarray(ops.convert_to_numpy(t)) for t in vector]


def scalar(value) -> float:
    return float(ops.convert_to_numpy(value))


def random(like: Sequence, rng: np.random.Generator, kind: str) -> list:
    """A random vector shaped as `like`: standard `"normal"`, or
    `"rademacher"` (+-1, each with probability 1/2)."""
    shapes = [tuple(t.shape) for t in like]
    if kind == "normal":
        arrays = [rng.standard_normal(s) for s in shapes]
    else:
        arrays = [rng.integers(0, 2, s) * 2.0 - 1.0 for s in shapes]
    return from_numpy(arrays)
