"""m-sharpness: how much the loss of batches of `m` examples can rise
within a radius of the weights (SAM-ON's worst-case and average-case
sharpness).

For a batch `S`, a radius `rho` and a diagonal scale `c` (`c = 1`: the l2
and linf geometries; `c = |w| + eta`: the adaptive geometry of ASAM, with
`c = 1` for bias-like variables):

- worst case: `max_{||u||_p <= rho} L_S(w + c * u) - L_S(w)`, the maximum
  found by projected gradient ascent on `u` from `u = 0`: `steps` steps of
  length `step_size` along the normalised gradient (`p = 2`:
  `c g / ||c g||`; `p = inf`: `sign(c g)`), each projected back on the
  ball, keeping the largest loss met (so the value is >= 0);
- average case: `E_u[L_S(w + c * u)] - L_S(w)`, `u` uniform on the sphere
  of radius `rho` (`p = 2`) or on the corners of the cube (`p = inf`),
  the mean over `samples` draws.

The m-sharpness is the mean over the batches; its standard error is the
batches' standard deviation over the square root of their number.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_sam.src.analysis import vectors
from keras_sam.src.analysis.curvature import stderr
from keras_sam.src.analysis.objective import (
    Objective,
    cached_objective,
    make_batches,
)
from keras_sam.src.methods import geometry as geometries
from keras_sam.src.validation import check_choice, check_int, check_real

KINDS = ("worst", "average")
GEOMETRIES = ("l2", "adaptive")
NORMS = ("l2", "linf")


class Sharpness(NamedTuple):
    """The loss increase per batch and its mean over the batches.

    Attributes:
        per_batch: the loss increase of each batch, a NumPy array.
        mean: the m-sharpness, the mean of `per_batch`.
        stderr: the standard error of `mean` (`nan` for one batch).
    """

    per_batch: np.ndarray
    mean: float
    stderr: float


def check_sharpness_options(
    radius, kind, geometry, norm, steps, step_size, samples, eta
) -> None:
    check_real("radius", radius, 0.0)
    check_choice("kind", kind, KINDS)
    check_choice("geometry", geometry, GEOMETRIES)
    check_choice("norm", norm, NORMS)
    check_int("steps", steps, 1)
    if step_size is not None:
        check_real("step_size", step_size, 0.0)
    check_int("samples", samples, 1)
    check_real("eta", eta, 0.0)


def _scales(variables, values, geometry: str, eta: float) -> list:
    """`c` per variable (`None`: 1), as ASAM's elementwise operator."""
    if geometry == "l2":
        return [None] * len(values)
    return [
        None if v.name in geometries.BIAS_NAMES else ops.abs(w) + eta
        for v, w in zip(variables, values)
    ]


def _perturbed(values, u, scales) -> list:
    """`w + c * u`."""
    return [
        w + (t if c is None else c * t) for w, t, c in zip(values, u, scales)
    ]


def _project(u, radius, norm: str) -> list:
    """`u` projected on the ball `||u||_p <= radius`."""
    if norm == "linf":
        return [ops.clip(t, -radius, radius) for t in u]
    length = vectors.norm(u) + vectors.DELTA
    return vectors.scaled(u, ops.minimum(1.0, radius / length))


def worst_case(objective, values, scales, context, options) -> float:
    """The largest loss increase that projected gradient ascent finds."""
    radius, norm, steps = options["radius"], options["norm"], options["steps"]
    step_size = options["step_size"]
    if step_size is None:
        step_size = 2.5 * radius / steps
    u = [ops.zeros_like(w) for w in values]
    base, best = None, -np.inf
    for _ in range(steps):
        loss, grads = objective.value_and_gradient(
            _perturbed(values, u, scales), context
        )
        loss = vectors.scalar(loss)
        base = loss if base is None else base
        best = max(best, loss)
        direction = [g if c is None else c * g for g, c in zip(grads, scales)]
        # SAM's (normalised) ascent step in u: d / ||d||, or sign(d).
        step = geometries.l2(direction, direction, u, step_size, norm=norm)
        u = _project(vectors.combine((1.0, u), (1.0, step)), radius, norm)
    final = objective.value(_perturbed(values, u, scales), context)
    return max(best, vectors.scalar(final)) - base


def average_case(objective, values, scales, context, options, rng) -> float:
    """The mean loss increase over random `u` on the sphere (or cube)."""
    base = vectors.scalar(objective.value(values, context))
    radius, increases = options["radius"], []
    for _ in range(options["samples"]):
        if options["norm"] == "l2":
            u = vectors.normalized(vectors.random(values, rng, "normal"))
        else:
            u = vectors.random(values, rng, "rademacher")
        u = vectors.scaled(u, radius)
        loss = objective.value(_perturbed(values, u, scales), context)
        increases.append(vectors.scalar(loss) - base)
    return float(np.mean(increases))


def measure(
    objective: Objective,
    batches,
    *,
    radius: float = 0.05,
    kind: str = "worst",
    geometry: str = "l2",
    norm: str = "l2",
    steps: int = 10,
    step_size: float | None = None,
    samples: int = 10,
    eta: float = 0.01,
    seed: int = 0,
) -> Sharpness:
    """`sharpness` of an `Objective` on batches."""
    options = dict(
        radius=radius,
        kind=kind,
        geometry=geometry,
        norm=norm,
        steps=steps,
        step_size=step_size,
        samples=samples,
        eta=eta,
    )
    check_sharpness_options(**options)
    values = objective.values()
    scales = _scales(objective.variables, values, geometry, eta)
    rng = np.random.default_rng(seed)
    per_batch = []
    for context, _ in objective.contexts(batches):
        if kind == "worst":
            value = worst_case(objective, values, scales, context, options)
        else:
            value = average_case(
                objective, values, scales, context, options, rng
            )
        per_batch.append(value)
    per_batch = np.array(per_batch)
    return Sharpness(per_batch, float(np.mean(per_batch)), stderr(per_batch))


def check_m(y, m, name: str = "m") -> None:
    """`m` (the option `name`) is `None` or an int in `[1, len(y)]` that
    divides the number of examples `len(y)`."""
    if m is None:
        return
    if y is None:
        raise ValueError(
            f"`{name}` applies to arrays; when `x` yields batches, each batch "
            "is one of the m-sharpness's batches. Received "
            f"{name}={m!r}, y=None."
        )
    check_int(name, m, 1)
    n = len(y)
    if m > n:
        raise ValueError(
            f"`{name}` must be at most the number of examples, {n}, and "
            f"divide it, so that every batch holds {name} examples; "
            f"received {name}={m}. Pass {name}={n} (one batch), a divisor "
            f"of {n}, or at least {m} examples."
        )
    if n % m:
        raise ValueError(
            f"`{name}` must divide the number of examples, {n}, so that "
            f"every batch holds {name} examples; received {name}={m}. Pass "
            f"the first {n - n % m} examples, or a divisor of {n}."
        )


def sharpness(
    model,
    x,
    y=None,
    *,
    m: int | None = None,
    radius: float = 0.05,
    kind: str = "worst",
    geometry: str = "l2",
    norm: str = "l2",
    steps: int = 10,
    step_size: float | None = None,
    samples: int = 10,
    eta: float = 0.01,
    loss=None,
    variables=None,
    seed: int = 0,
) -> Sharpness:
    """m-sharpness: the mean over batches of `m` examples of the loss
    increase within `radius`, worst case or average case.

    Per batch `S`: worst case, `max_{||u||_p <= radius} L_S(w + c * u) -
    L_S(w)`, the maximum found by `steps` steps of projected gradient ascent
    from `u = 0` (one step is SAM's perturbation, ASAM's in the adaptive
    geometry); average case, the mean of `L_S(w + c * u) - L_S(w)` over
    `samples` random `u` on the sphere (l2) or the cube's corners (linf) of
    radius `radius`. `c = 1` (geometry `"l2"`) or `|w| + eta` (`"adaptive"`,
    `c = 1` for biases). The model is evaluated in inference mode and never
    changes.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel`.
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches (each
            one a batch `S`).
        y: the targets. Defaults to `None` (`x` yields batches).
        m: the batch size, which must divide the number of examples; `None`:
            all of them in one batch. Defaults to `None`.
        radius: `rho`, the radius of the ball (>= 0). Defaults to `0.05`.
        kind: `"worst"` or `"average"`. Defaults to `"worst"`.
        geometry: `"l2"` (`c = 1`) or `"adaptive"` (ASAM's `c = |w| +
            eta`). Defaults to `"l2"`.
        norm: the ball's norm, `"l2"` or `"linf"`. Defaults to `"l2"`.
        steps: gradient ascent steps, worst case (>= 1). Defaults to `10`.
        step_size: the length of each step, in `u`; `None`: `2.5 * radius
            / steps`. Defaults to `None`.
        samples: random directions per batch, average case (>= 1).
            Defaults to `10`.
        eta: ASAM's `eta`, adaptive geometry. Defaults to `0.01`.
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        variables: the perturbed variables (a list, or a layer); `None`: all
            the trainable ones. Defaults to `None`.
        seed: the seed of the random directions. Defaults to `0`.

    Returns:
        A `Sharpness`: `per_batch`, `mean` and `stderr`.

    Example:

    ```python
    s = keras_sam.analysis.sharpness(model, x[:1024], y[:1024], m=128)
    print(f"{s.mean:.4f} +- {s.stderr:.4f}")
    ```

    References:
        Mueller et al., "Normalization Layers Are All That Sharpness-Aware
        Minimization Needs", NeurIPS 2023 (m-sharpness, worst and average
        case, adaptive); Andriushchenko et al., "A Modern Look at the
        Relationship between Sharpness and Generalization", ICML 2023;
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021.
    """
    check_sharpness_options(
        radius, kind, geometry, norm, steps, step_size, samples, eta
    )
    check_m(y, m)
    objective = cached_objective(model, loss, variables)
    return measure(
        objective,
        make_batches(x, y, m),
        radius=radius,
        kind=kind,
        geometry=geometry,
        norm=norm,
        steps=steps,
        step_size=step_size,
        samples=samples,
        eta=eta,
        seed=seed,
    )
