"""The perturbation of an ascent step, as pass 2 applies it.

Every geometry gives a perturbation with the same two-part interface, so
the backends run pass 2 alike: `values(trainable_values)` are the values
pass 2 runs at, and `scope()` is what the forward pass does differently
while it runs.

- `Dense`: `eps` as full tensors (every geometry but the nuclear ones):
  pass 2 runs at `w + eps`, the forward pass unchanged.
- `RankOne`: nuSAM's `eps_j = s_j u_j v_j^T` kept as its factors: pass 2
  runs at `w`, and within `scope()` each perturbed Dense or EinsumDense
  layer computes `x W + s (x u) v^T` (before its bias and activation), so
  `W + eps` never exists as a tensor and no weight is touched.

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024, Alg. 1 and Sec. 3.1 (memory).
"""

from __future__ import annotations

import contextlib
import dataclasses

from keras import ops

from keras_sam.src.layers.matrices import WeightMatrix


def _shifted(values: list, indices, deltas) -> list:
    out = list(values)
    for i, delta in zip(indices, deltas):
        out[i] = values[i] + ops.cast(delta, values[i].dtype)
    return out


@dataclasses.dataclass(frozen=True)
class Dense:
    """`eps[j]` added to `trainable_values[indices[j]]`."""

    indices: tuple[int, ...]
    eps: list

    def values(self, trainable_values: list) -> list:
        return _shifted(trainable_values, self.indices, self.eps)

    def scope(self):
        return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class RankOne:
    """`eps_j = scales[j] * u[j] v[j]^T` on `trainable_values[indices[j]]`,
    read through `matrices[j].view`.

    A matrix whose layer cannot run factorised (a kernel regularizer, which
    must see `W + eps`; a quantized or customised `call`) is perturbed as
    values instead: a transient `W + eps` for that matrix alone.
    """

    indices: tuple[int, ...]
    matrices: tuple[WeightMatrix, ...]
    u: list
    v: list
    scales: list

    def delta(self, j: int):
        """`eps_j` in the shape of its variable."""
        return self.matrices[j].view.from_matrix(
            self.scales[j] * ops.outer(self.u[j], self.v[j])
        )

    def values(self, trainable_values: list) -> list:
        dense = [j for j, m in enumerate(self.matrices) if not m.factorised]
        return _shifted(
            trainable_values,
            [self.indices[j] for j in dense],
            [self.delta(j) for j in dense],
        )

    def scope(self):
        factorised = [j for j, m in enumerate(self.matrices) if m.factorised]
        return calls_replaced(
            [self.matrices[j].layer for j in factorised],
            [
                self.matrices[j].perturbed_call(
                    self.u[j], self.v[j], self.scales[j]
                )
                for j in factorised
            ],
        )


@contextlib.contextmanager
def calls_replaced(layers: list, calls: list):
    """Within it, each of `layers` runs the matching function of `calls` as
    its `call`: an instance attribute, so the layer's own `__call__`
    (seeds, masks, name scopes, autocasting) still runs around it."""
    replaced = []
    try:
        for layer, call in zip(layers, calls):
            object.__setattr__(layer, "call", call)
            replaced.append(layer)
        yield
    finally:
        for layer in replaced:
            object.__delattr__(layer, "call")
