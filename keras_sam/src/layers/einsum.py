"""The einsums of `Dense` and `EinsumDense` layers: a layer's product
factored through a rank-1 kernel `u v^T`, and whether it is a matrix product
of flattened views."""

from __future__ import annotations

import functools
import math

from keras import ops


@functools.cache
def is_flat(equation: str, contract: str, expand: str) -> bool:
    """Whether `equation` (with its `factor_equations`) is
    `(..., rows) x (rows, cols) -> (..., cols)`."""
    x, rows, kept = einsum_parts(contract)
    _, cols, output = einsum_parts(expand)
    kernel = einsum_parts(equation)[1]
    return x == kept + rows and kernel == rows + cols and output == kept + cols


def einsum_parts(equation: str) -> tuple[str, str, str]:
    """`"x,kernel->output"` as its three subscripts."""
    inputs, output = equation.split("->")
    x, kernel = inputs.split(",")
    return x, kernel, output


@functools.cache
def factor_equations(equation: str, rank: int) -> tuple[str, str]:
    """The two einsums of `x W` with `W = u v^T` for a layer's `equation`
    and an input of `rank` axes: `x u` (contract `x` with `u` over the
    kernel's input axes, keeping those the output keeps), then `(x u) v^T`
    (expand with `v` over the other kernel axes).

    An ellipsis is written out in letters: TensorFlow's float16 einsum with
    an ellipsis gives wrong results (TensorFlow 2.21, CPU).
    """
    x, kernel, output = einsum_parts(equation)
    if "..." in x:
        unused = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
        spelled = "".join(unused[: rank - len(x.replace("...", ""))])
        x, output = x.replace("...", spelled), output.replace("...", spelled)
    rows = "".join(c for c in kernel if c in x)
    cols = "".join(c for c in kernel if c not in x)
    # Input letters summed with the rows, unless the output keeps them.
    kept = "".join(c for c in x if c not in rows or c in output)
    return f"{x},{rows}->{kept}", f"{kept},{cols}->{output}"


def as_matrices(x, kernel, row_rank: int) -> tuple:
    """A flat layer's input and kernel as the matrices `(N, rows)` and
    `(rows, cols)` of its product (the kernel's first `row_rank` axes are
    its rows), and the shape of the product's output: the leading axes of
    `x` (as tensors where unknown: a tf.function's batch), then the
    kernel's columns."""
    rows = math.prod(kernel.shape[:row_rank])
    cols = kernel.shape[row_rank:]
    shape = (*ops.shape(x)[: len(x.shape) - row_rank], *cols)
    flat = ops.reshape(x, (-1, rows))
    return flat, ops.reshape(kernel, (rows, math.prod(cols))), shape
