"""An MLP-Mixer (Tolstikhin et al. 2021) in plain Keras."""

from __future__ import annotations

import keras


def _block(x, name: str, token_mlp_dim: int, channel_mlp_dim: int):
    """Token mixing across patches, then channel mixing, each residual."""
    tokens, dim = x.shape[1], x.shape[2]
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = keras.layers.Permute((2, 1))(h)
    h = keras.layers.Dense(
        token_mlp_dim, activation="gelu", name=f"{name}_token1"
    )(h)
    h = keras.layers.Dense(tokens, name=f"{name}_token2")(h)
    x = x + keras.layers.Permute((2, 1))(h)
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(
        channel_mlp_dim, activation="gelu", name=f"{name}_channel1"
    )(h)
    return x + keras.layers.Dense(dim, name=f"{name}_channel2")(h)


def mlp_mixer(
    image_size: int = 32,
    patch_size: int = 4,
    channels: int = 3,
    num_classes: int = 10,
    dim: int = 128,
    depth: int = 4,
    token_mlp_dim: int | None = None,
    channel_mlp_dim: int | None = None,
    name: str = "mixer",
) -> keras.Model:
    """An MLP-Mixer classifier with global average pooling.

    Args:
        image_size: the height and width of the input images. Defaults to
            `32`.
        patch_size: the side of the square patches. Defaults to `4`.
        channels: input channels. Defaults to `3`.
        num_classes: output logits. Defaults to `10`.
        dim: the channel width. Defaults to `128`.
        depth: the number of mixer blocks. Defaults to `4`.
        token_mlp_dim: the token-mixing hidden width. Defaults to `dim // 2`.
        channel_mlp_dim: the channel-mixing hidden width. Defaults to
            `4 * dim`.
        name: the model name. Defaults to `"mixer"`.

    Returns:
        A functional `keras.Model` from images to logits.
    """
    if image_size % patch_size:
        raise ValueError(
            f"`image_size` ({image_size}) must be divisible by `patch_size` "
            f"({patch_size})."
        )
    tokens = (image_size // patch_size) ** 2
    token_mlp_dim = token_mlp_dim or max(dim // 2, 1)
    channel_mlp_dim = channel_mlp_dim or 4 * dim
    inputs = keras.Input((image_size, image_size, channels))
    x = keras.layers.Conv2D(
        dim, patch_size, strides=patch_size, name="patches"
    )(inputs)
    x = keras.layers.Reshape((tokens, dim))(x)
    for i in range(depth):
        x = _block(x, f"block{i}", token_mlp_dim, channel_mlp_dim)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)
