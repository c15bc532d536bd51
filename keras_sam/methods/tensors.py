"""Global reductions over lists of tensors, shared by the method axes."""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

# Added to every normaliser of DESIGN §3, so a zero gradient gives a zero
# perturbation instead of NaN (a trap of optax and google-research/sam).
DELTA = 1e-12


def to_float32(tensors: Sequence) -> list:
    """Casts every tensor to float32: all norms are taken in float32."""
    return [ops.cast(t, "float32") for t in tensors]


def global_dot(a: Sequence, b: Sequence):
    """`sum_i <a_i, b_i>` over two aligned lists of tensors."""
    return sum((ops.sum(x * y) for x, y in zip(a, b)), ops.zeros((), "float32"))


def _squared_norm(tensors: Sequence):
    """`sum_i ||t_i||^2`, through a fused vector norm per tensor: unlike
    `sum(t * t)`, it allocates no temporary as large as the tensor."""
    norms = [
        ops.cast(ops.norm(ops.reshape(t, (-1,))), "float32") for t in tensors
    ]
    return sum((n * n for n in norms), ops.zeros((), "float32"))


def global_norm(tensors: Sequence):
    """The l2 norm of the concatenation of `tensors`."""
    return ops.sqrt(_squared_norm(tensors))


def all_finite(tensors: Sequence):
    """A scalar boolean: every entry of every tensor is finite.

    Tested through the squared norm, one reduction per tensor; entries above
    ~1.8e19 overflow it and count as non-finite, which is the safe side.
    """
    return ops.isfinite(_squared_norm(tensors))
