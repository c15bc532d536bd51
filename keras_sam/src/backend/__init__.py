"""The backend's SAM trainer, chosen at import as Keras chooses its own.

Each backend module holds a `SAMTrainer` subclass with the backend's
`train_step` (pass 1 as Keras' own trainer does it) and `_pass_two`; the
rest of the step is backend-neutral (`keras_sam/src/trainer.py`).
"""

from __future__ import annotations

import keras

from keras_sam.src.trainer import SAMTrainer

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


if keras.backend.backend() == "tensorflow":
    from keras_sam.src.backend.tensorflow import (
        TensorFlowSAMTrainer as BackendSAMTrainer,
    )
elif keras.backend.backend() == "jax":
    from keras_sam.src.backend.jax import JaxSAMTrainer as BackendSAMTrainer
elif keras.backend.backend() == "torch":
    from keras_sam.src.backend.torch import TorchSAMTrainer as BackendSAMTrainer
else:  # `check_supported` raises when a SAMModel is created.
    BackendSAMTrainer = SAMTrainer

__all__ = ["BackendSAMTrainer", "check_supported"]
