"""A small ResNet (He et al. 2016) with BatchNormalization in plain Keras."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def _conv_bn(x, filters: int, kernel_size: int, strides: int, name: str):
    """A bias-free convolution followed by BatchNormalization."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _basic_block(x, filters: int, strides: int, name: str):
    """Two 3x3 conv-BN layers with an identity or projection shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, name=f"{name}_shortcut")
    h = _conv_bn(x, filters, 3, strides, name=f"{name}_1")
    h = keras.layers.ReLU(name=f"{name}_relu1")(h)
    h = _conv_bn(h, filters, 3, 1, name=f"{name}_2")
    x = keras.layers.Add(name=f"{name}_add")([shortcut, h])
    return keras.layers.ReLU(name=f"{name}_relu2")(x)


def resnet(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32),
    blocks_per_stage: int = 1,
    name: str = "resnet",
) -> keras.Model:
    """A ResNet classifier of basic blocks with global average pooling.

    A 3x3 conv-BN-ReLU stem is followed by one stage per entry of `widths`;
    each stage stacks `blocks_per_stage` basic blocks (two 3x3 conv-BN
    layers and a shortcut, a 1x1 conv-BN projection where the shape
    changes), and every stage after the first halves the resolution in its
    first block. The CIFAR ResNet-20 of the paper is
    `resnet((32, 32, 3), 10, widths=(16, 32, 64), blocks_per_stage=3)`.

    Args:
        input_shape: the `(height, width, channels)` of the input images.
            Defaults to `(32, 32, 3)`.
        num_classes: output logits. Defaults to `10`.
        widths: the number of filters of each stage (the stem has
            `widths[0]`). Defaults to `(16, 32)`.
        blocks_per_stage: basic blocks per stage, an int >= 1. Defaults
            to `1`.
        name: the model name. Defaults to `"resnet"`.

    Returns:
        A functional `keras.Model` from images to logits.
    """
    widths = tuple(widths)
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(
            "`widths` must be a non-empty sequence of positive ints. "
            f"Received widths={widths!r}."
        )
    if blocks_per_stage < 1:
        raise ValueError(
            "`blocks_per_stage` must be an int >= 1. Received "
            f"blocks_per_stage={blocks_per_stage!r}."
        )
    inputs = keras.Input(tuple(input_shape))
    x = _conv_bn(inputs, widths[0], 3, 1, name="stem")
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(widths):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(
                x, int(filters), strides, name=f"stage{stage}_block{block}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)
