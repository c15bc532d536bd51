"""Weight matrices: the kernels of `Dense` and `EinsumDense` layers, each
read as a `(fan_in, fan_out)` matrix, with the forward pass of their layer
under a rank-1 perturbation (the nuclear geometries perturb these).

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024, Alg. 1 (one rank-1 perturbation per
    weight matrix) and Sec. 3.1 (memory).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
from keras import ops

from keras_sam.src import keras_internals
from keras_sam.src.layers.einsum import einsum_parts, factor_equations, is_flat
from keras_sam.src.layers.products import probed_product, rank_one_product


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


@dataclasses.dataclass(frozen=True)
class WeightMatrix:
    """A Dense or EinsumDense kernel as nuSAM perturbs it.

    Attributes:
        view: the kernel read as a matrix.
        layer: the layer that owns the kernel.
        equation: the layer's einsum (`"...i,io->...o"` for Dense).
        factorised: whether pass 2 can run the layer as
            `x W + s (x u) v^T` (a stock `call`, not quantized, no kernel
            regularizer: a regularizer must see `W + eps` itself).
    """

    view: MatrixView
    layer: keras.layers.Layer
    equation: str
    factorised: bool

    def perturbed_call(self, u, v, scale) -> Callable:
        """The layer's `call` at `W + scale * u v^T`, without `W + eps`:
        `x W + (x u) (scale v)^T`, then the bias and the activation, as
        `Dense.call` and `EinsumDense.call` do. Its gradient with respect
        to `W` is the gradient at `W + eps`."""
        layer = self.layer
        row_shape = tuple(self.view.shape[a] for a in self.view.row_axes)
        col_shape = tuple(self.view.shape[a] for a in self.view.col_axes)

        def call(inputs, training=None):
            dtype = inputs.dtype
            x = rank_one_product(
                self.equation,
                inputs,
                layer.kernel,
                ops.cast(ops.reshape(u, row_shape), dtype),
                # The scale on `v`, not on the layer's output.
                ops.cast(ops.reshape(scale * v, col_shape), dtype),
            )
            return _bias_and_activation(layer, x)

        return call

    @property
    def flat(self) -> bool:
        """Whether the layer is a matrix product of its flattened input
        and the kernel's matrix view (every Dense layer, and EinsumDense
        layers whose input axes come last in `x` and first in the
        kernel)."""
        x = einsum_parts(self.equation)[0]
        rank = len(x.replace("...", "")) + ("..." in x)
        return is_flat(self.equation, *factor_equations(self.equation, rank))

    def probed_call(self, probe, iterations: int, run) -> Callable:
        """The layer's `call`, its product `x W` through `probed_product`:
        the same output, and a backward pass that also gives Alg. 2's
        `(u, v, sigma)` of the kernel's gradient as the gradient of
        `probe` (see `probed_product`). Flat layers only."""
        layer = self.layer

        def call(inputs, training=None):
            x = probed_product(
                inputs,
                layer.kernel,
                len(self.view.row_axes),
                probe,
                iterations,
                run,
            )
            return _bias_and_activation(layer, x)

        return call


def _bias_and_activation(layer, x):
    """The rest of `Dense.call` and `EinsumDense.call` after the product."""
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def _matrix(layer, kernel) -> WeightMatrix:
    shape = tuple(kernel.shape)
    equation = "...i,io->...o"
    if isinstance(layer, keras.layers.EinsumDense):
        equation = layer.equation
    x, subscripts, _ = einsum_parts(equation)
    rows = tuple(i for i, s in enumerate(subscripts) if s in x)
    cols = tuple(i for i in range(len(shape)) if i not in rows)
    stock = type(layer).call in (keras.layers.Dense.call, _EINSUM_CALL)
    return WeightMatrix(
        view=MatrixView(shape, rows, cols),
        layer=layer,
        equation=equation,
        factorised=stock
        and getattr(layer, "quantization_mode", None) is None
        and getattr(kernel, "regularizer", None) is None,
    )


_EINSUM_CALL = keras.layers.EinsumDense.call


def weight_matrices(model: keras.layers.Layer) -> dict[int, WeightMatrix]:
    """`id(kernel) -> WeightMatrix` for every Dense and EinsumDense kernel.

    Convolutions, embeddings, biases and normalization parameters are not
    weight matrices. Subclasses of Dense and EinsumDense count.
    """
    matrices = {}
    for layer in keras_internals.flatten_layers(model):
        if not isinstance(
            layer, (keras.layers.Dense, keras.layers.EinsumDense)
        ):
            continue
        for variable in layer.weights:
            dense_2d = len(variable.shape) == 2 or isinstance(
                layer, keras.layers.EinsumDense
            )
            if variable.name == "kernel" and dense_2d:
                matrices[id(variable)] = _matrix(layer, variable)
    return matrices
