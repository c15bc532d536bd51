"""Loss landscapes: the loss along lines and planes in weight space.

- `interpolation`: `L((1 - a) w_A + a w_B)` between two models of the same
  architecture (Goodfellow et al. 2015), float non-trainable variables
  (BatchNorm statistics) interpolated alike;
- `landscape_1d`, `landscape_2d`: `L(w + a d_1)` and `L(w + a d_1 + b d_2)`
  along random directions, filter-normalised by default (Li et al. 2018):
  each filter of `d` (a slice along the last axis of a kernel: an output
  unit of a Dense layer, an output channel of a convolution) is rescaled to
  the norm of the same filter of `w`, and directions are zero on 1-D
  variables (biases, normalization scales), as Li et al. do by default. The
  scale of the axes is then comparable between models, whatever the
  weights' scale (Li et al. 2018, Section 4).

The loss is the data loss over all the batches, in inference mode; the
model never changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_sam.src.analysis import autodiff, vectors
from keras_sam.src.analysis.objective import (
    Objective,
    cached_objective,
    inner_model,
    make_batches,
)
from keras_sam.src.validation import check_int, is_real


class Landscape1D(NamedTuple):
    """The loss along a line.

    Attributes:
        coordinates: the points `a` along the line, a NumPy array.
        losses: the loss at each point.
    """

    coordinates: np.ndarray
    losses: np.ndarray


class Landscape2D(NamedTuple):
    """The loss on a plane.

    Attributes:
        x_coordinates: the points `a` along the first direction.
        y_coordinates: the points `b` along the second direction.
        losses: `losses[i, j]` is the loss at `(x_coordinates[i],
            y_coordinates[j])`.
    """

    x_coordinates: np.ndarray
    y_coordinates: np.ndarray
    losses: np.ndarray


def _coordinates(span, points) -> np.ndarray:
    check_int("points", points, 2)
    if (
        not isinstance(span, Sequence)
        or len(span) != 2
        or not all(is_real(s) for s in span)
        or not span[0] < span[1]
    ):
        raise ValueError(
            "`span` must be a pair of floats (low, high) with low < high; "
            f"received span={span!r}."
        )
    return np.linspace(float(span[0]), float(span[1]), points)


def random_direction(
    model, *, seed: int = 0, filter_normalize: bool = True
) -> list:
    """A random direction in the space of the model's trainable weights.

    Standard normal entries; with `filter_normalize`, each filter (a slice
    along the last axis of a variable of 2 or more dimensions) rescaled to
    the norm of the same filter of the weights, and zero on 1-D variables
    (biases, normalization layers), as Li et al. do by default.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel`.
        seed: the seed of the direction. Defaults to `0`.
        filter_normalize: rescale per filter as above; `False`: the raw
            normal direction on every variable. Defaults to `True`.

    Returns:
        A list of NumPy arrays aligned with `model.trainable_variables`.

    Example:

    ```python
    d = keras_sam.analysis.random_direction(model, seed=1)
    ```

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS
        2018, Section 4.
    """
    rng = np.random.default_rng(seed)
    direction = []
    for variable in inner_model(model).trainable_variables:
        w = np.asarray(ops.convert_to_numpy(variable), "float32")
        if not filter_normalize:
            direction.append(rng.standard_normal(w.shape).astype("float32"))
            continue
        if w.ndim < 2:
            direction.append(np.zeros_like(w))
            continue
        d = rng.standard_normal(w.shape).astype("float32")
        axes = tuple(range(w.ndim - 1))
        w_norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
        d_norm = np.sqrt(np.sum(d * d, axis=axes, keepdims=True))
        direction.append(d * w_norm / (d_norm + 1e-10))
    return direction


def _direction(objective: Objective, direction, name: str) -> list:
    """`direction` (arrays aligned with the trainable variables) as
    tensors."""
    shapes = [tuple(v.shape) for v in objective.variables]
    received = [tuple(np.shape(d)) for d in direction]
    if received != shapes:
        raise ValueError(
            f"`{name}` must hold one array per trainable variable, shaped "
            f"{shapes}; received shapes {received}."
        )
    return vectors.from_numpy(direction)


def _losses(objective, values, contexts, directions, grid) -> np.ndarray:
    """The loss at `w + sum_k grid[..., k] d_k` for each point of `grid`."""
    losses = np.empty(grid.shape[:-1])
    for index in np.ndindex(*losses.shape):
        terms = [(float(a), d) for a, d in zip(grid[index], directions)]
        point = vectors.combine((1.0, values), *terms)
        losses[index] = objective.mean_value(point, contexts)
    return losses


def landscape_1d(
    model,
    x,
    y=None,
    *,
    direction=None,
    span: tuple = (-1.0, 1.0),
    points: int = 21,
    loss=None,
    batch_size: int | None = None,
    seed: int = 0,
) -> Landscape1D:
    """The loss along a line through the model's weights, `L(w + a d)`.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel`.
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        direction: `d`, arrays aligned with the trainable variables (e.g.
            an eigenvector from `top_eigenvalues`); `None`: a
            filter-normalised `random_direction(model, seed=seed)`. Defaults
            to `None`.
        span: the range of `a`. Defaults to `(-1.0, 1.0)`.
        points: the number of values of `a` (>= 2). Defaults to `21`.
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        batch_size: the batch size for arrays; `None`: one batch. Defaults
            to `None`.
        seed: the seed of the random direction. Defaults to `0`.

    Returns:
        A `Landscape1D` (`coordinates`, `losses`).

    Example:

    ```python
    line = keras_sam.analysis.landscape_1d(model, x, y)
    keras_sam.analysis.plot_line(line)
    ```

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS
        2018.
    """
    coordinates = _coordinates(span, points)
    objective = cached_objective(model, loss)
    if direction is None:
        direction = random_direction(model, seed=seed)
    d = _direction(objective, direction, "direction")
    contexts = objective.contexts(make_batches(x, y, batch_size))
    grid = coordinates[:, None]
    losses = _losses(objective, objective.values(), contexts, [d], grid)
    return Landscape1D(coordinates, losses)


def landscape_2d(
    model,
    x,
    y=None,
    *,
    directions=None,
    span: tuple = (-1.0, 1.0),
    points: int = 21,
    loss=None,
    batch_size: int | None = None,
    seed: int = 0,
) -> Landscape2D:
    """The loss on a plane through the model's weights, `L(w + a d_1 + b
    d_2)`, on a `points x points` grid of `span x span`.

    Args:
        model: a built `keras.Model`, or a `keras_sam.SAMModel`.
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        directions: `(d_1, d_2)`, each arrays aligned with the trainable
            variables; `None`: two filter-normalised random directions
            (`random_direction` with seeds `seed` and `seed + 1`; in high
            dimension they are nearly orthogonal). Defaults to `None`.
        span: the range of `a` and of `b`. Defaults to `(-1.0, 1.0)`.
        points: the number of values of `a` and of `b` (>= 2). Defaults to
            `21`.
        loss: the loss; `None`: the one the model was compiled with.
            Defaults to `None`.
        batch_size: the batch size for arrays; `None`: one batch. Defaults
            to `None`.
        seed: the seed of the random directions. Defaults to `0`.

    Returns:
        A `Landscape2D` (`x_coordinates`, `y_coordinates`, `losses` indexed
        `[i, j]` as `(a_i, b_j)`).

    Example:

    ```python
    plane = keras_sam.analysis.landscape_2d(model, x, y, points=15)
    keras_sam.analysis.plot_contour(plane)
    ```

    References:
        Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS
        2018.
    """
    coordinates = _coordinates(span, points)
    objective = cached_objective(model, loss)
    if directions is None:
        directions = [random_direction(model, seed=seed + i) for i in (0, 1)]
    if len(directions) != 2:
        raise ValueError(
            "`directions` must be two directions (d_1, d_2); received "
            f"{len(directions)}."
        )
    d = [_direction(objective, d, "directions") for d in directions]
    contexts = objective.contexts(make_batches(x, y, batch_size))
    grid = np.stack(np.meshgrid(coordinates, coordinates, indexing="ij"), -1)
    losses = _losses(objective, objective.values(), contexts, d, grid)
    return Landscape2D(coordinates, coordinates.copy(), losses)


def _interpolated(a: list, b: list, alpha: float) -> list:
    """`(1 - alpha) a + alpha b` for floating values; the others (seeds,
    counters) from `a`."""
    return [
        (1.0 - alpha) * u + alpha * v
        if "float" in keras.backend.standardize_dtype(u.dtype)
        else u
        for u, v in zip(a, b)
    ]


def _check_same_architecture(model_a, model_b) -> None:
    shapes_a = [tuple(v.shape) for v in model_a.variables]
    shapes_b = [tuple(v.shape) for v in model_b.variables]
    if shapes_a != shapes_b or len(model_a.trainable_variables) != len(
        model_b.trainable_variables
    ):
        raise ValueError(
            "`model_a` and `model_b` must have the same architecture (the "
            f"same variables, in order); received variables shaped "
            f"{shapes_a} and {shapes_b}."
        )


def interpolation(
    model_a,
    model_b,
    x,
    y=None,
    *,
    span: tuple = (-0.5, 1.5),
    points: int = 21,
    loss=None,
    batch_size: int | None = None,
) -> Landscape1D:
    """The loss on the line between two models, `L((1 - a) w_A + a w_B)`.

    `a = 0` is `model_a`, `a = 1` is `model_b`; float non-trainable
    variables (BatchNorm's moving statistics) are interpolated alike. A
    barrier between the two (a rise above both ends) says that they sit in
    different basins.

    Args:
        model_a: a built `keras.Model`, or a `keras_sam.SAMModel`.
        model_b: a model of the same architecture.
        x: inputs, or, with `y=None`, an iterable of `(x, y)` batches.
        y: the targets. Defaults to `None` (`x` yields batches).
        span: the range of `a`. Defaults to `(-0.5, 1.5)`.
        points: the number of values of `a` (>= 2). Defaults to `21`.
        loss: the loss; `None`: the one `model_a` was compiled with.
            Defaults to `None`.
        batch_size: the batch size for arrays; `None`: one batch. Defaults
            to `None`.

    Returns:
        A `Landscape1D` (`coordinates` `a`, `losses`).

    Example:

    ```python
    line = keras_sam.analysis.interpolation(adamw_model, sam_model, x, y)
    keras_sam.analysis.plot_line(line, xlabel="AdamW -> SAM")
    ```

    References:
        Goodfellow et al., "Qualitatively Characterizing Neural Network
        Optimization Problems", ICLR 2015; Li et al., "Visualizing the Loss
        Landscape of Neural Nets", NeurIPS 2018.
    """
    coordinates = _coordinates(span, points)
    a, b = inner_model(model_a), inner_model(model_b)
    _check_same_architecture(a, b)
    objective = cached_objective(model_a, loss)
    batches = make_batches(x, y, batch_size)
    weights = [autodiff.snapshot(m.trainable_variables) for m in (a, b)]
    states = [autodiff.snapshot(m.non_trainable_variables) for m in (a, b)]
    losses = []
    for alpha in coordinates:
        alpha = float(alpha)
        contexts = objective.contexts(batches, _interpolated(*states, alpha))
        values = _interpolated(*weights, alpha)
        losses.append(objective.mean_value(values, contexts))
    return Landscape1D(coordinates, np.array(losses))
