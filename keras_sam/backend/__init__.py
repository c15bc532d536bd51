"""Backend adapters: pass 1 as Keras' own trainer does it, and pass 2's
gradient. Everything else of the step is backend-neutral (`SAMModel`)."""

from __future__ import annotations

import functools
import importlib

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")


def check_supported() -> None:
    """Raises unless the Keras backend can train a `SAMModel`."""
    name = keras.backend.backend()
    if name not in SUPPORTED_BACKENDS:
        raise NotImplementedError(
            f"SAMModel trains on the {', '.join(SUPPORTED_BACKENDS)} "
            f"backends; the active Keras backend is {name!r} "
            "(set KERAS_BACKEND)."
        )


@functools.cache
def _adapter(name: str):
    return importlib.import_module(f"keras_sam.backend.{name}")


def on_create(model) -> None:
    """What the backend sets up for a new `SAMModel`: under a TensorFlow
    `MirroredStrategy`, collective keys of the strategy's own."""
    if keras.backend.backend() == "tensorflow":
        strategy = model.distribute_strategy
        _adapter("tensorflow").isolate_collectives(strategy)


def train_step(model, *args):
    """The SAM train step of the active backend."""
    return _adapter(keras.backend.backend()).train_step(model, *args)
