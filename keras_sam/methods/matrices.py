"""Weight matrices: the kernels of `Dense` and `EinsumDense` layers, each
read as a `(fan_in, fan_out)` matrix (the nuclear geometries perturb these).

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024, Alg. 1 (one rank-1 perturbation per
    weight matrix).
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """A kernel read as a matrix: rows are the axes that also index the
    layer's input (fan-in), columns the others, each group in kernel order.
    """

    shape: tuple[int, ...]
    row_axes: tuple[int, ...]
    col_axes: tuple[int, ...]

    @property
    def rows(self) -> int:
        return math.prod(self.shape[a] for a in self.row_axes)

    @property
    def cols(self) -> int:
        return math.prod(self.shape[a] for a in self.col_axes)

    @property
    def rows_lead(self) -> bool:
        """Whether the rows are the leading axes: the matrix is then a view."""
        return self.row_axes + self.col_axes == tuple(range(len(self.shape)))

    def to_matrix(self, kernel):
        if not self.rows_lead:
            kernel = ops.transpose(kernel, self.row_axes + self.col_axes)
        return ops.reshape(kernel, (self.rows, self.cols))

    def from_matrix(self, matrix):
        order = self.row_axes + self.col_axes
        tensor = ops.reshape(matrix, tuple(self.shape[a] for a in order))
        if self.rows_lead:
            return tensor
        inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
        return ops.transpose(tensor, inverse)


def _einsum_view(equation: str, shape: tuple[int, ...]) -> MatrixView:
    inputs, _ = equation.split("->")
    input_subscripts, kernel_subscripts = inputs.split(",")
    rows = tuple(
        i for i, s in enumerate(kernel_subscripts) if s in input_subscripts
    )
    cols = tuple(i for i in range(len(shape)) if i not in rows)
    return MatrixView(tuple(shape), rows, cols)


def weight_matrices(model: keras.layers.Layer) -> dict[int, MatrixView]:
    """`id(kernel) -> MatrixView` for every Dense and EinsumDense kernel.

    Convolutions, embeddings, biases and normalization parameters are not
    weight matrices. Subclasses of Dense and EinsumDense count.
    """
    views = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for variable in layer.weights:
            if variable.name != "kernel":
                continue
            shape = tuple(variable.shape)
            if isinstance(layer, keras.layers.EinsumDense):
                views[id(variable)] = _einsum_view(layer.equation, shape)
            elif isinstance(layer, keras.layers.Dense) and len(shape) == 2:
                views[id(variable)] = MatrixView(shape, (0,), (1,))
    return views
