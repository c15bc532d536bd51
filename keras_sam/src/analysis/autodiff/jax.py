"""Gradients and Hessian-vector products on JAX: `jax.jvp` of `jax.grad`."""

from __future__ import annotations

import jax

from keras_sam.src.analysis.autodiff.functions import Functions


def snapshot(variables) -> list:
    """The variables' values (JAX arrays are immutable)."""
    return [v.value for v in variables]


def compile_loss(loss_fn) -> Functions:
    """`loss_fn`, its value and gradient, and its forward-over-reverse
    Hessian-vector product, each under `jax.jit`."""
    gradient = jax.grad(loss_fn)

    def hvp(values, vector, context):
        return jax.jvp(lambda w: gradient(w, context), (values,), (vector,))[1]

    return Functions(
        jax.jit(loss_fn), jax.jit(jax.value_and_grad(loss_fn)), jax.jit(hvp)
    )
