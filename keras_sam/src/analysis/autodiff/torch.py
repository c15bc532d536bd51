"""Gradients and Hessian-vector products on PyTorch: `torch.func.jvp` of
`torch.func.grad` (eager), attention on the math kernel of
`scaled_dot_product_attention` (the fused kernels have no forward-mode or
second derivative)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from keras_sam.src.analysis.autodiff.functions import Functions


def snapshot(variables) -> list:
    """The variables' values, detached from autograd (copies, so that the
    optimizer's in-place updates leave them unchanged)."""
    return [v.value.detach().clone() for v in variables]


def compile_loss(loss_fn) -> Functions:
    """`loss_fn`, its value and gradient, and its forward-over-reverse
    Hessian-vector product."""

    def value(values, context):
        with torch.no_grad():
            return loss_fn(values, context)

    def value_and_gradient(values, context):
        gradients, loss = torch.func.grad_and_value(loss_fn)(values, context)
        return loss, gradients

    def hvp(values, vector, context):
        gradient = torch.func.grad(loss_fn)
        # The fused attention kernels have no forward or second derivative;
        # the math kernel (matmuls and a softmax) computes the same values.
        with sdpa_kernel([SDPBackend.MATH]):
            return torch.func.jvp(
                lambda w: gradient(w, context), (values,), (vector,)
            )[1]

    return Functions(value, value_and_gradient, hvp)
