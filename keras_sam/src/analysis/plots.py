"""Pictures of loss landscapes with matplotlib, imported when a plot is
drawn (importing `keras_sam.analysis` does not import it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_sam.src.analysis.landscape import Landscape1D, Landscape2D


def _pyplot():
    try:
        from matplotlib import pyplot
    except ImportError as e:
        raise ImportError(
            "keras_sam.analysis's plots need matplotlib: pip install "
            "matplotlib (or 'keras-sam[demo]')."
        ) from e
    return pyplot


def _axes(ax):
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(5, 4))
    return ax


def _check(landscape, kind, name="landscape") -> None:
    if not isinstance(landscape, kind):
        raise TypeError(
            f"`{name}` must be a {kind.__name__}; received "
            f"{type(landscape).__name__}."
        )


def plot_line(
    landscapes,
    *,
    ax=None,
    xlabel: str = "a",
    title: str | None = None,
    log: bool = False,
):
    """Line plot of one or several `Landscape1D`.

    Args:
        landscapes: a `Landscape1D`, or a dict of them by label.
        ax: the matplotlib `Axes` to draw on; `None`: a new figure.
            Defaults to `None`.
        xlabel: the label of the horizontal axis. Defaults to `"a"`.
        title: the title. Defaults to `None`.
        log: a logarithmic loss axis. Defaults to `False`.

    Returns:
        The matplotlib `Axes`.

    Example:

    ```python
    ax = keras_sam.analysis.plot_line({"AdamW": line_a, "SAM": line_b})
    ax.figure.savefig("lines.png")
    ```
    """
    if not isinstance(landscapes, dict):
        landscapes = {None: landscapes}
    ax = _axes(ax)
    for label, landscape in landscapes.items():
        _check(landscape, Landscape1D, "landscapes")
        ax.plot(landscape.coordinates, landscape.losses, label=label)
    ax.set(xlabel=xlabel, ylabel="loss", title=title)
    if log:
        ax.set_yscale("log")
    if any(label is not None for label in landscapes):
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def _levels(losses: np.ndarray, levels) -> np.ndarray:
    """Contour levels from the minimum up: evenly spaced in the loss up to
    its median over the plane, so that the basin, not the walls, gets the
    lines; or `levels` as given."""
    if not isinstance(levels, int):
        return np.asarray(levels)
    low, high = float(np.min(losses)), float(np.median(losses))
    if high <= low:
        high = float(np.max(losses))
    if high <= low:
        high = low + 1.0
    return np.linspace(low, high, levels)


def plot_contour(
    landscape: Landscape2D,
    *,
    ax=None,
    levels: int | Sequence[float] = 15,
    title: str | None = None,
):
    """Contour plot of a `Landscape2D`, the model's weights marked at the
    origin.

    Args:
        landscape: a `Landscape2D`.
        ax: the matplotlib `Axes` to draw on; `None`: a new figure.
            Defaults to `None`.
        levels: the number of contour lines, evenly spaced from the lowest
            loss to the median loss of the plane, or the losses at which to
            draw them (the same for several planes). Defaults to `15`.
        title: the title. Defaults to `None`.

    Returns:
        The matplotlib `Axes`.

    Example:

    ```python
    plane = keras_sam.analysis.landscape_2d(model, x, y)
    keras_sam.analysis.plot_contour(plane).figure.savefig("plane.png")
    ```
    """
    _check(landscape, Landscape2D)
    ax = _axes(ax)
    lines = ax.contour(
        landscape.x_coordinates,
        landscape.y_coordinates,
        landscape.losses.T,
        levels=_levels(landscape.losses, levels),
        cmap="viridis",
    )
    ax.clabel(lines, fontsize=7, fmt="%.2g")
    ax.plot([0.0], [0.0], "k+", markersize=10)
    ax.set(xlabel="d1", ylabel="d2", title=title, aspect="equal")
    return ax


def plot_heatmap(
    landscape: Landscape2D,
    *,
    ax=None,
    title: str | None = None,
    log: bool = False,
):
    """Heat map of a `Landscape2D`, with a color bar.

    Args:
        landscape: a `Landscape2D`.
        ax: the matplotlib `Axes` to draw on; `None`: a new figure.
            Defaults to `None`.
        title: the title. Defaults to `None`.
        log: color by `log10(loss)` (for positive losses that span orders
            of magnitude). Defaults to `False`.

    Returns:
        The matplotlib `Axes`.

    Example:

    ```python
    keras_sam.analysis.plot_heatmap(plane)
    ```
    """
    _check(landscape, Landscape2D)
    ax = _axes(ax)
    x, y = landscape.x_coordinates, landscape.y_coordinates
    losses = landscape.losses.T
    if log:
        losses = np.log10(np.maximum(losses, np.finfo("float32").tiny))
    image = ax.imshow(
        losses,
        origin="lower",
        extent=(x[0], x[-1], y[0], y[-1]),
        cmap="viridis",
        aspect="equal",
    )
    ax.figure.colorbar(image, ax=ax, label="log10 loss" if log else "loss")
    ax.plot([0.0], [0.0], "w+", markersize=10)
    ax.set(xlabel="d1", ylabel="d2", title=title)
    return ax
