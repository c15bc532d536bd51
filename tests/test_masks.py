"""The `perturb` axis: normalization layers are found by type."""

import keras
import pytest

from keras_sam.src.methods import masks

NORMS = [
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    lambda: keras.layers.GroupNormalization(groups=2),
    keras.layers.RMSNormalization,
]


@pytest.mark.parametrize("make_norm", NORMS)
def test_norm_and_no_norm_partition_the_variables(make_norm):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            make_norm(),
            keras.layers.Dense(2),
        ]
    )
    variables = model.trainable_variables
    norm = masks.select("norm", model, variables)
    no_norm = masks.select("no_norm", model, variables)
    norm_layer = model.layers[1]
    assert [v for v, s in zip(variables, norm) if s] == list(
        norm_layer.trainable_variables
    )
    assert [not s for s in norm] == no_norm
    assert masks.select("all", model, variables) == [True] * len(variables)


def test_nested_normalization_layers_are_found():
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            keras.layers.LayerNormalization(),
        ]
    )
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    assert len(masks.normalization_layers(outer)) == 1
    selected = masks.select("norm", outer, outer.trainable_variables)
    assert sum(selected) == 2


def test_callable_mask():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    selected = masks.select(
        lambda v: v.name == "bias", model, model.trainable_variables
    )
    assert selected == [False, True]
