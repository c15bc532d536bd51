"""nuSAM's power iterations inside pass 1's backward pass.

When a step reads pass 1's gradient of the weight matrices only through
their top singular pairs (a nuclear geometry, every step an ascent along
the one global gradient, nothing else reading that gradient:
`StepPlan.pairs_in_pass_one`), pass 1 need not compute those gradients at
all. Each perturbed layer then runs its product `x W` through
`matrices.probed_product`, whose backward pass runs Alg. 2 on the kernel's
gradient `A = x^T dy` from the layer's flattened input and output gradient
without forming `A`, and hands `(u, v, sigma)` out as the gradient of a
*probe*: a vector that the layer's call takes in, whose first entries are
the state's `u` (the warm start). Pass 1 differentiates the probes instead
of the matrices, so no weight-sized gradient of pass 1 ever exists, and
each layer's power iterations run while its input and output gradient are
alive anyway.

A layer called more than once in a pass (a shared layer) has as gradient
the sum over its calls, which per-call power iterations cannot give: the
scope counts the calls, and the backend then differentiates the matrices
as usual (`Run.exact`).

References:
    Ahn et al., "nuSAM: Memory-Efficient Sharpness-Aware Minimization via
    Nuclear Norm Constraints", 2024: Alg. 2 and Sec. 3.1 (memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple

from keras import ops

from keras_sam.src.layers.matrices import WeightMatrix
from keras_sam.src.methods.tensors import all_finite
from keras_sam.src.perturbation import calls_replaced


class SingularPairs(NamedTuple):
    """What pass 1 gives instead of the weight matrices' gradients: for
    each matrix of the plan, its gradient's top singular pair after Alg. 2
    and `sigma = u^T A v` (unscaled, float32), and whether its layer ran
    (a layer that did not run has no gradient)."""

    u: list
    v: list
    sigma: list
    called: tuple[bool, ...]

    def finite(self):
        """Whether every pair and `sigma` is finite (a layer input or output
        gradient that is not finite makes them not finite). One reduction
        over the joined vectors: XLA copies a scalar's whole expression
        into every fusion that reads it, and a sum over each matrix's
        reductions made the compiled step of a 16-layer MLP twice as
        large."""
        return all_finite(
            [ops.concatenate([*self.u, *self.v, ops.stack(self.sigma)])]
        )


@dataclasses.dataclass
class Run:
    """The calls of each probed layer in one pass, counted while it runs
    (while it is traced, on the compiled backends)."""

    counts: list[int]

    @property
    def exact(self) -> bool:
        """Whether every layer ran at most once, so that its probe's
        gradient is Alg. 2 of its whole gradient."""
        return max(self.counts, default=0) <= 1


@dataclasses.dataclass(frozen=True)
class Probes:
    """The probes of `matrices`, with Alg. 2's `iterations`."""

    matrices: tuple[WeightMatrix, ...]
    iterations: int

    def initial(self, u: list) -> list:
        """The probes' values: each `u` (the state's, the warm start), then
        zeros for `v` and `sigma`."""
        return [
            ops.concatenate([u_j, ops.zeros((m.view.cols + 1,), "float32")])
            for u_j, m in zip(u, self.matrices)
        ]

    @contextlib.contextmanager
    def scope(self, probes: list):
        """Within it, each matrix's layer runs through its probe
        (`WeightMatrix.probed_call`); yields the `Run` that counts the
        calls."""
        run = Run([0] * len(self.matrices))

        def counted(j: int, call):
            def counting_call(*args, **kwargs):
                run.counts[j] += 1
                return call(*args, **kwargs)

            return counting_call

        calls = [
            counted(j, m.probed_call(p, self.iterations, run))
            for j, (m, p) in enumerate(zip(self.matrices, probes))
        ]
        with calls_replaced([m.layer for m in self.matrices], calls):
            yield run

    def pairs(
        self, gradients: list, run: Run, loss_scale
    ) -> SingularPairs | None:
        """The probes' `gradients` of a `run` as `SingularPairs` (`sigma`
        unscaled: the loss scale multiplies `A`, and Alg. 2's `u` and `v`
        are unit vectors); `None` unless the run was exact."""
        if not run.exact:
            return None
        us, vs, sigmas = [], [], []
        for m, g in zip(self.matrices, gradients):
            rows, cols = m.view.rows, m.view.cols
            if g is None:  # TensorFlow's, for a layer that did not run
                g = ops.zeros((rows + cols + 1,), "float32")
            us.append(g[:rows])
            vs.append(g[rows : rows + cols])
            sigma = g[rows + cols]
            sigmas.append(sigma if loss_scale is None else sigma / loss_scale)
        called = tuple(count > 0 for count in run.counts)
        return SingularPairs(us, vs, sigmas, called)
