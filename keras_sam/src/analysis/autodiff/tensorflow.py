"""Gradients and Hessian-vector products on TensorFlow: a
`tf.autodiff.ForwardAccumulator` over a `tf.GradientTape`."""

from __future__ import annotations

import functools

import tensorflow as tf

from keras_sam.src.analysis.autodiff.functions import Functions

_ZERO = tf.UnconnectedGradients.ZERO


def snapshot(variables) -> list:
    """The variables' values, as tensors that later assignments leave
    unchanged."""
    return [tf.identity(v.value) for v in variables]


def compile_loss(loss_fn) -> Functions:
    """`loss_fn`, its value and gradient, and its forward-over-reverse
    Hessian-vector product, each a `tf.function`."""

    def value_and_gradient(values, context):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values, context)
        return loss, tape.gradient(loss, values, unconnected_gradients=_ZERO)

    def hvp(values, vector, context):
        with tf.autodiff.ForwardAccumulator(values, vector) as accumulator:
            _, gradients = value_and_gradient(values, context)
        return accumulator.jvp(gradients, unconnected_gradients=_ZERO)

    compile = functools.partial(tf.function, reduce_retracing=True)
    return Functions(
        compile(loss_fn), compile(value_and_gradient), compile(hvp)
    )
