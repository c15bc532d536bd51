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
import functools
import math
from collections.abc import Callable

import keras
from keras import ops

from keras_sam.src import keras_internals
from keras_sam.src.methods import nuclear


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
        x = _einsum_parts(self.equation)[0]
        rank = len(x.replace("...", "")) + ("..." in x)
        return _flat(self.equation, *factor_equations(self.equation, rank))

    def probed_call(self, probe, iterations: int, run) -> Callable:
        """The layer's `call`, its product `x W` through `probed_product`:
        the same output, and a backward pass that also gives Alg. 2's
        `(u, v, sigma)` of the kernel's gradient as the gradient of
        `probe` (see `probed_product`). Flat layers only."""
        layer = self.layer

        def call(inputs, training=None):
            x = probed_product(
                inputs, layer.kernel, self.view, probe, iterations, run
            )
            return _bias_and_activation(layer, x)

        return call


def _as_matrices(x, kernel, row_rank: int) -> tuple:
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


def _bias_and_activation(layer, x):
    """The rest of `Dense.call` and `EinsumDense.call` after the product."""
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def probed_product(x, kernel, view: MatrixView, probe, iterations: int, run):
    """`x W` for a flat layer (`WeightMatrix.flat`), whose backward pass
    also runs Alg. 2 on the kernel's gradient `A = x^T dy` from the
    flattened input and output gradient, without forming `A`
    (`nuclear.outer_sum_pair`), and gives `concat(u, v, [sigma])` as the
    gradient of `probe`. `probe` is a float32 vector of `rows + cols + 1`
    entries whose first `rows` are the warm start `u`; the other entries
    are not read. The gradients of `x` and `W` are the usual ones, so a
    pass that differentiates `W` instead of `probe` is an ordinary pass;
    a pass that does not leaves `W`'s to the compiler to drop (JAX,
    TensorFlow), or skips it where its `run` (`probes.Run`) is exact
    (torch, eager).
    """
    flat, matrix, shape = _as_matrices(x, kernel, len(view.row_axes))
    matrix = ops.cast(matrix, x.dtype)
    if _TORCH_PROBED is not None:
        out = _TORCH_PROBED(flat, matrix, probe, iterations, run)
        return ops.reshape(out, shape)

    @ops.custom_gradient
    def product(flat, matrix, probe):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return (
                ops.matmul(upstream, ops.transpose(matrix)),
                ops.matmul(ops.transpose(flat), upstream),
                _probe_gradient(flat, upstream, probe, iterations),
            )

        return ops.matmul(flat, matrix), grad

    return ops.reshape(product(flat, matrix, probe), shape)


def _probe_gradient(flat, upstream, probe, iterations: int):
    """`concat(u, v, [sigma])` of Alg. 2 on `flat^T upstream`, in float32,
    warm-started from the probe's `u`."""
    u, v, sigma = nuclear.outer_sum_pair(
        ops.cast(flat, "float32"),
        ops.cast(upstream, "float32"),
        probe[: flat.shape[1]],
        iterations,
    )
    return ops.concatenate([u, v, ops.reshape(sigma, (1,))])


def _torch_probed() -> Callable:
    """`probed_product`'s matrix product as a torch autograd function,
    which skips the kernel's gradient where `run.exact`."""
    import torch

    class ProbedProduct(torch.autograd.Function):
        @staticmethod
        def forward(x, w, probe, iterations, run):
            return x @ w

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, w, probe, ctx.iterations, ctx.run = inputs
            ctx.save_for_backward(x, w, probe)

        @staticmethod
        def backward(ctx, g):
            x, w, probe = ctx.saved_tensors
            needs_x, needs_w = ctx.needs_input_grad[:2]
            gx = g @ w.T if needs_x else None
            gw = x.T @ g if needs_w and not ctx.run.exact else None
            gp = _probe_gradient(x, g, probe, ctx.iterations)
            return gx, gw, gp, None, None

    return ProbedProduct.apply


def rank_one_product(equation: str, x, kernel, u, v):
    """`einsum(equation, x, kernel + u v^T)` as `x W + (x u) v^T`, so that
    `kernel + u v^T` never exists (`u` over the kernel's input axes, `v`
    over the others, each in the kernel's shape).

    A layer that is a matrix product of flattened views (every Dense
    layer, and EinsumDense layers whose input axes come last in `x` and
    first in the kernel) runs as two matrix products of the flattened input
    and an outer product (10% less step time for nuSAM on a small ViT with
    XLA than einsums over the layer's axes); on torch, as one autograd
    function that adds the rank-one terms in place, forward and backward:
    eager torch would otherwise allocate and traverse the layer's output
    and input gradient three more times.
    """
    rank = len(x.shape)
    contract, expand = factor_equations(equation, rank)
    if _flat(equation, contract, expand):
        flat, matrix, shape = _as_matrices(x, kernel, len(u.shape))
        u, v = ops.reshape(u, (-1,)), ops.reshape(v, (-1,))
        if _TORCH_RANK_ONE is not None:
            out = _TORCH_RANK_ONE(flat, matrix, u, v)
        else:
            # `(x u) v^T` as a matrix product of inner size 1, not an outer
            # product: XLA copies an elementwise product into each fusion
            # that reads the layer's output and so kept `x W` and `(x u) v^T`
            # both alive into the backward pass (+0.74x the parameter bytes
            # for a ViT's step on JAX; none with the product).
            column = ops.expand_dims(ops.matmul(flat, u), 1)
            out = ops.matmul(flat, matrix) + ops.matmul(
                column, ops.expand_dims(v, 0)
            )
        return ops.reshape(out, shape)
    product = ops.einsum(equation, x, kernel)
    return product + ops.einsum(expand, ops.einsum(contract, x, u), v)


def _torch_rank_one() -> Callable:
    """`x W + (x u) v^T` for matrices `x`, `W` and vectors `u`, `v` as a
    torch autograd function: `x W` then `addr_`, and in the backward pass
    `g W^T` then `addr_(g v, u)`; `u` and `v` are constants."""
    import torch

    class RankOneProduct(torch.autograd.Function):
        @staticmethod
        def forward(x, w, u, v):
            return (x @ w).addr_(x @ u, v)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            x, w, u, v = ctx.saved_tensors
            needs_x, needs_w = ctx.needs_input_grad[:2]
            gx = (g @ w.T).addr_(g @ v, u) if needs_x else None
            gw = x.T @ g if needs_w else None
            return gx, gw, None, None

    return RankOneProduct.apply


_TORCH_RANK_ONE = (
    _torch_rank_one() if keras.backend.backend() == "torch" else None
)
_TORCH_PROBED = _torch_probed() if keras.backend.backend() == "torch" else None


@functools.cache
def _flat(equation: str, contract: str, expand: str) -> bool:
    """Whether `equation` (with its `factor_equations`) is
    `(..., rows) x (rows, cols) -> (..., cols)`."""
    x, rows, kept = _einsum_parts(contract)
    _, cols, output = _einsum_parts(expand)
    kernel = _einsum_parts(equation)[1]
    return x == kept + rows and kernel == rows + cols and output == kept + cols


def _einsum_parts(equation: str) -> tuple[str, str, str]:
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
    x, kernel, output = _einsum_parts(equation)
    if "..." in x:
        unused = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
        spelled = "".join(unused[: rank - len(x.replace("...", ""))])
        x, output = x.replace("...", spelled), output.replace("...", spelled)
    rows = "".join(c for c in kernel if c in x)
    cols = "".join(c for c in kernel if c not in x)
    # Input letters summed with the rows, unless the output keeps them.
    kept = "".join(c for c in x if c not in rows or c in output)
    return f"{x},{rows}->{kept}", f"{kept},{cols}->{output}"


def _matrix(layer, kernel) -> WeightMatrix:
    shape = tuple(kernel.shape)
    equation = "...i,io->...o"
    if isinstance(layer, keras.layers.EinsumDense):
        equation = layer.equation
    x, subscripts, _ = _einsum_parts(equation)
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
