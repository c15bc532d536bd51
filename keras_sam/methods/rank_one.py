"""nuSAM's perturbation kept as factors, so it never exists as full tensors.

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024, Alg. 1 (perturb in place, restore) and
    Sec. 3.1 (memory).
"""

from __future__ import annotations

import dataclasses

from keras import ops

from keras_sam.methods.matrices import MatrixView


@dataclasses.dataclass(frozen=True)
class RankOne:
    """`eps_j = scales[j] * u[j] v[j]^T` on `trainable_variables[indices[j]]`,
    each read through `views[j]`.

    Backends add it to the variables in place for pass 2 and subtract it
    afterwards (Alg. 1: `M + rho u v^T`, then `- rho u v^T`); `perturbed` and
    `restored` are the same two steps on values, for functional backends.
    Restoring by subtraction rounds: `(w + eps) - eps` equals `w` to within
    one float32 ulp of `|w| + |eps|`, not bit for bit.
    """

    indices: tuple[int, ...]
    views: tuple[MatrixView, ...]
    u: list
    v: list
    scales: list

    def delta(self, j: int, sign: float = 1.0):
        """`sign * eps_j` in the shape of its variable."""
        return self.views[j].from_matrix(
            (sign * self.scales[j]) * ops.outer(self.u[j], self.v[j])
        )

    def _shifted(self, values: list, sign: float) -> list:
        out = list(values)
        for j, i in enumerate(self.indices):
            out[i] = values[i] + ops.cast(self.delta(j, sign), values[i].dtype)
        return out

    def perturbed(self, values: list) -> list:
        return self._shifted(values, 1.0)

    def restored(self, values: list) -> list:
        return self._shifted(values, -1.0)
