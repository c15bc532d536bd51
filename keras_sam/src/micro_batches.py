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

from typing import Any

import keras
from keras import ops


def split(data: Any, count: int) -> list:
    """`data` (a structure of arrays with the batch first, `None` allowed)
    as `count` structures of equal, contiguous micro-batches.

    Raises:
        ValueError: a batch whose size is not divisible by `count`.
    """
    flat = keras.tree.flatten(data)
    sizes = {t.shape[0] for t in flat if t is not None} - {None}
    if any(size % count for size in sizes):
        raise ValueError(
            f"batch_splits={count} splits each batch into {count} equal "
            f"micro-batches, and this batch has {sizes.pop()} examples. Use a "
            f"batch size divisible by {count} (and, for the last batch of an "
            "epoch, a dataset whose size is, or `drop_remainder=True`)."
        )
    pieces = [
        [None] * count if t is None else ops.split(t, count, axis=0)
        for t in flat
    ]
    return [
        keras.tree.pack_sequence_as(data, [p[j] for p in pieces])
        for j in range(count)
    ]


def concatenate(parts: list) -> Any:
    """The micro-batches' outputs (structures alike) in batch order."""
    return keras.tree.map_structure(
        lambda *ts: ops.concatenate(ts, axis=0), *parts
    )


def mean_gradients(groups: list[list]) -> list:
    """The mean over the micro-batches of each variable's gradient (`None`
    where the passes gave none); the list itself for one micro-batch (so
    that an eager backend can empty it to free its gradients early)."""
    if len(groups) == 1:
        return groups[0]
    return [
        None if gs[0] is None else sum(gs[1:], gs[0]) / len(gs)
        for gs in zip(*groups)
    ]


def merged_values(old: list, new: list[list], reduce: str) -> list:
    """Variables' values after each micro-batch's pass, each pass from
    `old`, as one update: `old` plus the mean (`reduce="mean"`: BatchNorm's
    moving statistics advance once, by the micro-batches' mean) or the sum
    (`"sum"`: a metric counts every micro-batch) of the changes of float
    values; non-float ones (seed generators' states, counters) as the first
    micro-batch left them. A value no pass changed stays bit for bit."""
    out = []
    for before, *after in zip(old, *new):
        dtype = keras.backend.standardize_dtype(before.dtype)
        if not keras.backend.is_float_dtype(dtype):
            out.append(after[0])
            continue
        change = sum((a - before for a in after[1:]), after[0] - before)
        if reduce == "mean":
            change = change / len(after)
        out.append(before + change)
    return out
