"""Mask: which trainable variables are perturbed (the `perturb` option).

References:
    Mueller et al., "Normalization Layers Are All That Sharpness-Aware
    Minimization Needs", NeurIPS 2023 (SAM-ON: `perturb="norm"`; its reverse,
    `perturb="no_norm"`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from keras_sam.src import keras_internals

# Normalization layers are found by type; subclasses count too.
NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.RMSNormalization,
)


def normalization_layers(layer: keras.layers.Layer) -> list:
    """`layer` and all its sublayers that are normalization layers."""
    return [
        sub
        for sub in keras_internals.flatten_layers(layer)
        if isinstance(sub, NORMALIZATION_LAYERS)
    ]


def select(
    perturb: str | Callable,
    model: keras.layers.Layer,
    variables: Sequence,
) -> list[bool]:
    """For each of `variables`, whether `perturb` selects it.

    `"all"`: every variable; `"norm"`: the variables of normalization layers;
    `"no_norm"`: the others; a callable: `perturb(variable)`.
    """
    if callable(perturb):
        return [bool(perturb(v)) for v in variables]
    if perturb == "all":
        return [True] * len(variables)
    norm_ids = {
        id(v)
        for layer in normalization_layers(model)
        for v in layer.trainable_variables
    }
    in_norm = [id(v) in norm_ids for v in variables]
    return in_norm if perturb == "norm" else [not x for x in in_norm]
