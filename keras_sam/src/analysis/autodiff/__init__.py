"""Each backend's gradient and Hessian-vector product, chosen at import.

Every backend module has the same two functions:

- `compile_loss(loss_fn) -> Functions`: from `loss_fn(values, context)`, a
  scalar function of a list of tensors, its value, its value and gradient,
  and its Hessian-vector product, compiled where the backend compiles
  (`jax.jit`, `tf.function`; torch runs eagerly).
- `snapshot(variables) -> list`: the variables' current values as plain
  tensors that no later assignment changes.

The Hessian-vector product is forward-over-reverse on every backend: the
directional derivative (a JVP) of the gradient, at the cost of about two
gradients (Pearlmutter 1994). JAX: `jax.jvp` of `jax.grad`; TensorFlow: a
`tf.autodiff.ForwardAccumulator` over a `tf.GradientTape`; PyTorch:
`torch.func.jvp` of `torch.func.grad`. Where an operation has no forward
derivative, `hvp="finite_difference"` (`objective.py`) needs gradients only.
"""

from __future__ import annotations

import keras

from keras_sam.src.analysis.autodiff.functions import Functions


def _unsupported(*args, **kwargs):
    raise NotImplementedError(
        "keras_sam.analysis differentiates on the tensorflow, jax and torch "
        f"backends; the active Keras backend is {keras.backend.backend()!r} "
        "(set KERAS_BACKEND)."
    )


if keras.backend.backend() == "tensorflow":
    from keras_sam.src.analysis.autodiff.tensorflow import (
        compile_loss,
        snapshot,
    )
elif keras.backend.backend() == "jax":
    from keras_sam.src.analysis.autodiff.jax import compile_loss, snapshot
elif keras.backend.backend() == "torch":
    from keras_sam.src.analysis.autodiff.torch import compile_loss, snapshot
else:
    compile_loss = snapshot = _unsupported

__all__ = ["Functions", "compile_loss", "snapshot"]
