"""Micro-batches: a batch split for m-sharpness (`batch_splits`).

Each micro-batch takes its own pass 1 and its own pass 2 at its own
`w + eps_j`; the pieces here split the batch and join what the passes give
back into what one pass over the whole batch would have given: the mean
gradient, the predictions in batch order, and the side effects applied
once.

References:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021, Sec. 4.1 (m-sharpness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops


def split(data: Any, count: int, option: str = "batch_splits") -> list:
    """`data` (a structure of arrays with the batch first, `None` allowed)
    as `count` structures of equal, contiguous micro-batches.

    Raises:
        ValueError: a batch whose size is not divisible by `count` (the
            message names the argument that gave it, `option`).
    """
    flat = keras.tree.flatten(data)
    sizes = {t.shape[0] for t in flat if t is not None} - {None}
    indivisible = [size for size in sizes if size % count]
    if indivisible:
        raise ValueError(indivisible_message(count, indivisible[0], option))
    pieces = [
        [None] * count if t is None else ops.split(t, count, axis=0)
        for t in flat
    ]
    return [
        keras.tree.pack_sequence_as(data, [p[j] for p in pieces])
        for j in range(count)
    ]


def indivisible_message(
    count: int, size: int | str, option: str = "batch_splits"
) -> str:
    """The error for a batch of `size` examples and `{option}=count`."""
    return (
        f"{option}={count} splits each batch into {count} equal "
        f"micro-batches, and this batch has {size} examples. Use a batch "
        f"size divisible by {count} (and, for the last batch of an epoch, a "
        "dataset whose size is, or `drop_remainder=True`)."
    )


def concatenate(parts: list) -> Any:
    """The micro-batches' outputs (structures alike) in batch order."""
    return keras.tree.map_structure(
        lambda *ts: ops.concatenate(ts, axis=0), *parts
    )


def mean(tensors) -> Any:
    """The mean of tensors alike (the micro-batches' losses, or one
    variable's gradients)."""
    return sum(tensors[1:], tensors[0]) / len(tensors)


def mean_gradients(groups: list[list]) -> list:
    """The mean over the micro-batches of each variable's gradient (`None`
    where the passes gave none); the list itself for one micro-batch (so
    that an eager backend can empty it to free its gradients early)."""
    if len(groups) == 1:
        return groups[0]
    return [None if gs[0] is None else mean(gs) for gs in zip(*groups)]


def merged_values(old: list, new: list[list], join: Callable) -> list:
    """Variables' values after several passes (`new`, one list per pass),
    each pass from `old`, as one update: `old` plus `join` of the changes of
    a float value (a list, one change per pass: `mean` advances BatchNorm's
    moving statistics once, `sum` counts every pass in a metric); a
    non-float value (a seed generator's state, a counter) as the first pass
    left it."""
    out = []
    for before, *after in zip(old, *new):
        dtype = keras.backend.standardize_dtype(before.dtype)
        if keras.backend.is_float_dtype(dtype):
            out.append(before + join([a - before for a in after]))
        else:
            out.append(after[0])
    return out


def join(non_trainable: list, metrics: list, passes: list) -> tuple:
    """What pass 1 over the whole batch gives, from each micro-batch's
    `(loss, y_pred, non-trainable values, metric values)`, each run from
    `non_trainable` and `metrics`: the mean loss, the predictions in batch
    order, the non-trainable values advanced once by the mean change, and
    the metric values with every micro-batch counted."""
    losses, predictions, non_trainables, metric_values = zip(*passes)
    return (
        mean(losses),
        concatenate(predictions),
        merged_values(non_trainable, non_trainables, mean),
        merged_values(metrics, metric_values, sum),
    )
