"""The products of a weight matrix's layer: under a rank-1 perturbation
without forming `W + eps` (nuSAM's pass 2), and through a probe that gives
Alg. 2's singular pair of the kernel's gradient (nuSAM's pass 1).

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024, Alg. 1 and 2, Sec. 3.1 (memory).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_sam.src.layers.einsum import as_matrices, factor_equations, is_flat
from keras_sam.src.methods import nuclear

if keras.backend.backend() == "torch":
    from keras_sam.src.layers import torch_products
else:
    torch_products = None


def probed_product(x, kernel, row_rank: int, probe, iterations: int, run):
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
    flat, matrix, shape = as_matrices(x, kernel, row_rank)
    matrix = ops.cast(matrix, x.dtype)
    if torch_products is not None:
        out = torch_products.probed(flat, matrix, probe, iterations, run)
        return ops.reshape(out, shape)

    @ops.custom_gradient
    def product(flat, matrix, probe):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return (
                ops.matmul(upstream, ops.transpose(matrix)),
                ops.matmul(ops.transpose(flat), upstream),
                nuclear.probe_gradient(flat, upstream, probe, iterations),
            )

        return ops.matmul(flat, matrix), grad

    return ops.reshape(product(flat, matrix, probe), shape)


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
    if is_flat(equation, contract, expand):
        flat, matrix, shape = as_matrices(x, kernel, len(u.shape))
        u, v = ops.reshape(u, (-1,)), ops.reshape(v, (-1,))
        if torch_products is not None:
            out = torch_products.rank_one(flat, matrix, u, v)
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
