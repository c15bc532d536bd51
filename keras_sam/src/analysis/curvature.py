"""Curvature: the top Hessian eigenvalues and the Hessian trace.

Both need only Hessian-vector products `H v` (`objective.py`), never the
Hessian: power iteration with deflation or Lanczos for the eigenvalues,
Hutchinson's estimator for the trace, as PyHessian does (Yao et al. 2020).
`H` is the Hessian of the data loss over the whole data (the mean of the
batches' Hessians, weighted by their sizes), with respect to the model's
trainable variables or a chosen subset (a layer's), at the model's current
weights, in inference mode (BatchNorm statistics fixed, no dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from keras_sam.src.analysis import vectors
from keras_sam.src.analysis.objective import (
    Objective,
    cached_objective,
    make_batches,
)
from keras_sam.src.validation import check_choice, check_int, check_real

EIGEN_METHODS = ("power", "lanczos")


class Eigen(NamedTuple):
    """Eigenvalues of the Hessian and their eigenvectors.

    Attributes:
        values: the eigenvalues, a NumPy array of `k` floats.
        vectors: one eigenvector per eigenvalue (unit norm), each a list of
            NumPy arrays aligned with the variables.
        products: the Hessian-vector products computed.
    """

    values: np.ndarray
    vectors: list
    products: int


class Trace(NamedTuple):
    """Hutchinson's estimate of the Hessian trace.

    Attributes:
        estimate: the mean of `z^T H z` over the samples.
        stderr: its standard error (`nan` for one sample).
        samples: `z^T H z` for each Rademacher vector `z`.
    """

    estimate: float
    stderr: float
    samples: np.ndarray


def _operator(objective: Objective, batches) -> tuple[list, Callable]:
    values = objective.values()
    contexts = objective.contexts(batches)
    return values, lambda v: objective.mean_hvp(values, v, contexts)


def stderr(samples: np.ndarray) -> float:
    """The standard error of the mean of `samples` (`nan` for one)."""
    if len(samples) < 2:
        return float("nan")
    return float(np.std(samples, ddof=1) / np.sqrt(len(samples)))


def check_eigen_options(k, method, iterations, tolerance) -> None:
    check_int("k", k, 1)
    check_choice("method", method, EIGEN_METHODS)
    check_int("iterations", iterations, k if method == "lanczos" else 1)
    check_real("tolerance", tolerance, 0.0)


def power_iteration(operator, like, k, iterations, tolerance, rng) -> Eigen:
    """The `k` eigenvalues of largest magnitude, one after another, each
    iterated in the orthogonal complement of those found before it, until
    its relative change is at most `tolerance`."""
    values, found, products = [], [], 0
    for _ in range(k):
        v, value = vectors.random(like, rng, "normal"), None
        for _ in range(iterations):
            v = vectors.normalized(vectors.orthogonal(v, found))
            hv = operator(v)
            products += 1
            previous, value = value, vectors.scalar(vectors.dot(hv, v))
            v = hv
            if previous is not None and abs(value - previous) <= (
                tolerance * abs(previous)
            ):
                break
        values.append(value)
        found.append(vectors.normalized(vectors.orthogonal(v, found)))
    eigenvectors = [vectors.to_numpy(v) for v in found]
    return Eigen(np.array(values), eigenvectors, products)


def lanczos(operator, like, k, iterations, rng) -> Eigen:
    """The `k` largest (algebraic) Ritz values of `iterations` Lanczos steps
    with full reorthogonalization (fewer if the Krylov space is exhausted)."""
    basis = [vectors.normalized(vectors.random(like, rng, "normal"))]
    alphas, betas = [], []
    for _ in range(iterations):
        w = operator(basis[-1])
        alphas.append(vectors.scalar(vectors.dot(w, basis[-1])))
        # Twice, for float32 ("twice is enough", Parlett).
        w = vectors.orthogonal(vectors.orthogonal(w, basis), basis)
        beta = vectors.scalar(vectors.norm(w))
        if len(alphas) == iterations or beta <= 1e-6 * max(map(abs, alphas)):
            break
        betas.append(beta)
        basis.append(vectors.scaled(w, 1.0 / beta))
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    ritz, rotation = np.linalg.eigh(tridiagonal)
    top = np.argsort(ritz)[::-1][:k]
    eigenvectors = [
        vectors.combine(*((rotation[i, j], q) for i, q in enumerate(basis)))
        for j in top
    ]
    return Eigen(
        ritz[top], [vectors.to_numpy(v) for v in eigenvectors], len(alphas)
    )


def eigen(
    objective: Objective,
    batches,
    *,
    k: int = 1,
    method: str = "power",
    iterations: int = 100,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> Eigen:
    """`top_eigenvalues` of an `Objective` on batches."""
    check_eigen_options(k, method, iterations, tolerance)
    values, operator = _operator(objective, batches)
    rng = np.random.default_rng(seed)
    if method == "lanczos":
        return lanczos(operator, values, k, iterations, rng)
    return power_iteration(operator, values, k, iterations, tolerance, rng)


def top_eigenvalues(
    model,
    x,
    y=None,
    *,
    k: int = 1,
    method: str = "power",
    iterations: int = 100,
    tolerance: float = 1e-3,
    loss=None,
    variables=None,
    batch_size: int | None = None,
    hvp: str = "autodiff",
    seed: int = 0,
) -> Eigen:
    """The top eigenvalues of the Hessian of the loss on `(x, y)`.

    `"power"`: power iteration with deflation, as PyHessian does; it finds
    the `k` eigenvalues of largest magnitude, in that order (the largest
    eigenvalue when the Hessian is dominated by its positive part, as it is
    at a minimum). `"lanczos"`: the `k` largest eigenvalues (algebraic) of a
    Lanczos tridiagonalization with full reorthogonalization; `iterations`
    Hessian-vector products, no stopping rule. The model is evaluated in
    inference mode and never changes.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel` (its inner
            model is measured).
        x: inputs (an array, or a dict or list of arrays), or, with
            `y=None`, an iterable of `(x, y)` or `(x, y, sample_weight)`
            batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        k: the number of eigenvalues. Defaults to `1`.
        method: `"power"` or `"lanczos"`. Defaults to `"power"`.
        iterations: the most Hessian-vector products per eigenvalue
            (`"power"`), or in all (`"lanczos"`, at least `k`). Defaults to
            `100`.
        tolerance: power iteration stops when an eigenvalue changes by at
            most this fraction between iterations. Defaults to `1e-3`.
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        variables: the Hessian's variables: a list of the model's trainable
            variables, or a layer; `None`: all of them. Defaults to `None`.
        batch_size: the batch size for arrays (memory only: the Hessian is
            that of the loss over all of `x`); `None`: one batch. Defaults
            to `None`.
        hvp: `"autodiff"` (forward-over-reverse) or `"finite_difference"`
            (central differences of two gradients). Defaults to
            `"autodiff"`.
        seed: the seed of the random start vectors. Defaults to `0`.

    Returns:
        An `Eigen`: `values` (`k` floats), `vectors` (unit eigenvectors,
        lists of NumPy arrays aligned with the variables) and `products`.

    Example:

    ```python
    eigen = keras_sam.analysis.top_eigenvalues(model, x_train, y_train)
    print(eigen.values[0])
    ```

    References:
        Yao et al., "PyHessian: Neural Networks Through the Lens of the
        Hessian", IEEE Big Data 2020, Algorithm 1.
    """
    check_eigen_options(k, method, iterations, tolerance)
    objective = cached_objective(model, loss, variables, hvp)
    return eigen(
        objective,
        make_batches(x, y, batch_size),
        k=k,
        method=method,
        iterations=iterations,
        tolerance=tolerance,
        seed=seed,
    )


def trace(objective: Objective, batches, *, samples=100, seed=0) -> Trace:
    """`hessian_trace` of an `Objective` on batches."""
    check_int("samples", samples, 1)
    values, operator = _operator(objective, batches)
    rng = np.random.default_rng(seed)
    quadratic = []
    for _ in range(samples):
        z = vectors.random(values, rng, "rademacher")
        quadratic.append(vectors.scalar(vectors.dot(z, operator(z))))
    quadratic = np.array(quadratic)
    return Trace(float(np.mean(quadratic)), stderr(quadratic), quadratic)


def hessian_trace(
    model,
    x,
    y=None,
    *,
    samples: int = 100,
    loss=None,
    variables=None,
    batch_size: int | None = None,
    hvp: str = "autodiff",
    seed: int = 0,
) -> Trace:
    """The trace of the Hessian of the loss on `(x, y)`, by Hutchinson.

    `tr(H) = E[z^T H z]` for `z` with independent Rademacher (+-1) entries;
    the estimate is the mean over `samples` vectors, one Hessian-vector
    product each, and its standard error is the samples' standard
    deviation over `sqrt(samples)`. The model is evaluated in inference
    mode and never changes.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel` (its inner
            model is measured).
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        samples: the number of random vectors. Defaults to `100`.
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        variables: the Hessian's variables: a list of the model's trainable
            variables, or a layer (the trace of its diagonal block); `None`:
            all of them. Defaults to `None`.
        batch_size: the batch size for arrays (memory only); `None`: one
            batch. Defaults to `None`.
        hvp: `"autodiff"` or `"finite_difference"`. Defaults to
            `"autodiff"`.
        seed: the seed of the random vectors. Defaults to `0`.

    Returns:
        A `Trace`: `estimate`, `stderr` and the per-vector `samples`.

    Example:

    ```python
    trace = keras_sam.analysis.hessian_trace(model, x, y, samples=50)
    print(f"{trace.estimate:.1f} +- {trace.stderr:.1f}")
    ```

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence
        matrix for Laplacian smoothing splines", 1989; Yao et al.,
        "PyHessian", IEEE Big Data 2020, Algorithm 2.
    """
    check_int("samples", samples, 1)
    objective = cached_objective(model, loss, variables, hvp)
    batches = make_batches(x, y, batch_size)
    return trace(objective, batches, samples=samples, seed=seed)


def hessian_vector_product(
    model,
    vector,
    x,
    y=None,
    *,
    loss=None,
    variables=None,
    batch_size: int | None = None,
    hvp: str = "autodiff",
) -> list:
    """The Hessian of the loss on `(x, y)` times `vector`.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel`.
        vector: arrays aligned with the variables (shaped as them).
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        variables: a list of the model's trainable variables, or a layer;
            `None`: all of them. Defaults to `None`.
        batch_size: the batch size for arrays; `None`: one batch. Defaults
            to `None`.
        hvp: `"autodiff"` or `"finite_difference"`. Defaults to
            `"autodiff"`.

    Returns:
        `H @ vector`, a list of NumPy arrays aligned with the variables.

    Example:

    ```python
    v = [np.ones(w.shape) for w in model.trainable_variables]
    hv = keras_sam.analysis.hessian_vector_product(model, v, x, y)
    ```
    """
    objective = cached_objective(model, loss, variables, hvp)
    shapes = [tuple(v.shape) for v in objective.variables]
    if [tuple(np.shape(v)) for v in vector] != shapes:
        raise ValueError(
            f"`vector` must hold arrays shaped as the variables, {shapes}; "
            f"received shapes {[tuple(np.shape(v)) for v in vector]}."
        )
    values, operator = _operator(objective, make_batches(x, y, batch_size))
    return vectors.to_numpy(operator(vectors.from_numpy(vector)))
