"""keras-sam: Sharpness-Aware Minimization and its variants for Keras 3."""

from keras_sam.model import SAMModel
from keras_sam.options import PRESETS

__version__ = "0.1.0"

__all__ = ["PRESETS", "SAMModel"]
