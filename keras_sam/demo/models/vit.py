"""A Vision Transformer (Dosovitskiy et al. 2021) in plain Keras."""

from __future__ import annotations

import keras
from keras import ops


class ClassTokenAndPosition(keras.layers.Layer):
    """Prepends a learned class token and adds learned position embeddings."""

    def build(self, input_shape):
        _, tokens, dim = input_shape
        self.class_token = self.add_weight(
            shape=(1, 1, dim), initializer="zeros", name="class_token"
        )
        self.position = self.add_weight(
            shape=(1, tokens + 1, dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position",
        )

    def call(self, x):
        token = ops.broadcast_to(
            ops.cast(self.class_token, x.dtype),
            (ops.shape(x)[0], 1, x.shape[-1]),
        )
        return ops.concatenate([token, x], axis=1) + ops.cast(
            self.position, x.dtype
        )

    def compute_output_shape(self, input_shape):
        batch, tokens, dim = input_shape
        return (batch, None if tokens is None else tokens + 1, dim)


def _block(x, name: str, heads: int, mlp_dim: int, dropout: float):
    """A pre-LayerNorm transformer block."""
    dim = x.shape[-1]
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(
        heads, dim // heads, dropout=dropout, name=f"{name}_attention"
    )(h, h)
    x = x + h
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(h)
    h = keras.layers.Dropout(dropout)(h)
    h = keras.layers.Dense(dim, name=f"{name}_mlp2")(h)
    return x + keras.layers.Dropout(dropout)(h)


def vit(
    image_size: int = 32,
    patch_size: int = 4,
    channels: int = 3,
    num_classes: int = 10,
    dim: int = 192,
    depth: int = 6,
    heads: int = 3,
    mlp_dim: int | None = None,
    dropout: float = 0.0,
    name: str = "vit",
) -> keras.Model:
    """A pre-LayerNorm ViT classifier on the class token.

    ViT-S/16 is `vit(224, 16, 3, 1000, dim=384, depth=12, heads=6)` (22M
    parameters), ViT-B/16 `vit(224, 16, 3, 1000, dim=768, depth=12,
    heads=12)` (86M).

    Args:
        image_size: the height and width of the input images. Defaults to
            `32`.
        patch_size: the side of the square patches. Defaults to `4`.
        channels: input channels. Defaults to `3`.
        num_classes: output logits. Defaults to `10`.
        dim: the embedding width. Defaults to `192`.
        depth: the number of transformer blocks. Defaults to `6`.
        heads: attention heads (`dim` must divide by it). Defaults to `3`.
        mlp_dim: the hidden width of the MLPs. Defaults to `4 * dim`.
        dropout: dropout after attention and in the MLPs. Defaults to `0.0`.
        name: the model name. Defaults to `"vit"`.

    Returns:
        A functional `keras.Model` from images to logits.
    """
    if dim % heads:
        raise ValueError(
            f"`dim` ({dim}) must be divisible by `heads` ({heads})."
        )
    if image_size % patch_size:
        raise ValueError(
            f"`image_size` ({image_size}) must be divisible by `patch_size` "
            f"({patch_size})."
        )
    mlp_dim = mlp_dim or 4 * dim
    inputs = keras.Input((image_size, image_size, channels))
    x = keras.layers.Conv2D(
        dim, patch_size, strides=patch_size, name="patches"
    )(inputs)
    x = keras.layers.Reshape(((image_size // patch_size) ** 2, dim))(x)
    x = ClassTokenAndPosition(name="embedding")(x)
    for i in range(depth):
        x = _block(x, f"block{i}", heads, mlp_dim, dropout)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x[:, 0])
    return keras.Model(inputs, outputs, name=name)
