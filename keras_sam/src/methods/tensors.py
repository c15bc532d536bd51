"""Global reductions over lists of tensors, shared by the method axes.

Every reduction is taken in float32, whatever the tensors' dtype: each
tensor is cast before it is reduced, never after, so a float16 tensor whose
sum of squares passes float16's largest value (65504, a norm of 256) still
has a finite norm. For a tensor that is not float32 the cast is a transient
copy of that one tensor (XLA fuses it into the reduction).
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

# Added to every normaliser, so a zero gradient gives a zero perturbation
# instead of NaN (a trap of optax and google-research/sam).
DELTA = 1e-12


def _float32(tensor):
    if ops.dtype(tensor) == "float32":
        return tensor
    return ops.cast(tensor, "float32")


def to_float32(tensors: Sequence) -> list:
    """Casts every tensor to float32: all norms are taken in float32."""
    return [_float32(t) for t in tensors]


def global_dot(a: Sequence, b: Sequence):
    """`sum_i <a_i, b_i>` over two aligned lists of tensors, in float32."""
    return sum(
        (ops.sum(_float32(x) * _float32(y)) for x, y in zip(a, b)),
        ops.zeros((), "float32"),
    )


def _squared_norm(tensors: Sequence):
    """`sum_i ||t_i||^2` in float32, through a fused vector norm per tensor:
    unlike `sum(t * t)`, it allocates no temporary as large as the tensor."""
    norms = [ops.norm(ops.reshape(_float32(t), (-1,))) for t in tensors]
    return sum((n * n for n in norms), ops.zeros((), "float32"))


def global_norm(tensors: Sequence):
    """The l2 norm of the concatenation of `tensors`, in float32."""
    return ops.sqrt(_squared_norm(tensors))


def all_finite(tensors: Sequence):
    """A scalar boolean: every entry of every tensor is finite.

    Tested through the float32 squared norm, one reduction per tensor; a
    float32 tensor with entries above ~1.8e19 overflows it and counts as
    non-finite, which is the safe side (half-precision entries never do).
    """
    return ops.isfinite(_squared_norm(tensors))
