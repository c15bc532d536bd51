"""The flat layers' products as torch autograd functions (imported on the
torch backend only): eager torch would otherwise allocate and traverse a
layer's output and input gradient several more times."""

from __future__ import annotations

import torch

from keras_sam.src.methods import nuclear


class ProbedProduct(torch.autograd.Function):
    """`x @ w`, whose backward pass gives the probe Alg. 2's
    `concat(u, v, [sigma])` and skips the kernel's gradient where
    `run.exact` (`products.probed_product`)."""

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
        gp = nuclear.probe_gradient(x, g, probe, ctx.iterations)
        return gx, gw, gp, None, None


class RankOneProduct(torch.autograd.Function):
    """`x W + (x u) v^T` for matrices `x`, `W` and vectors `u`, `v`: `x W`
    then `addr_`, and in the backward pass `g W^T` then `addr_(g v, u)`;
    `u` and `v` are constants (`products.rank_one_product`)."""

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


probed = ProbedProduct.apply
rank_one = RankOneProduct.apply
