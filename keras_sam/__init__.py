"""keras-sam: Sharpness-Aware Minimization and its variants for Keras 3.

The public API: `SAMModel`, its presets and resolved options, the state it
keeps, `ProportionalRho` (a radius that follows the learning rate, GSAM's),
`SharpnessAwareMinimization` (tf-keras's SAM model, on Keras 3),
`keras_sam.optimizers`, and `keras_sam.analysis` (sharpness, Hessian
spectrum and loss landscapes of any Keras model). Everything under
`keras_sam.src` is private; `keras_sam.demo` (the `keras-sam demo` command
and its models) is not imported by the library.
"""

from keras_sam import analysis, optimizers
from keras_sam.src.compat import SharpnessAwareMinimization
from keras_sam.src.methods.schedule import ProportionalRho
from keras_sam.src.model import SAMModel
from keras_sam.src.options import PRESETS, Preset, SAMOptions
from keras_sam.src.state import SAMState

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Preset",
    "ProportionalRho",
    "SAMModel",
    "SAMOptions",
    "SAMState",
    "SharpnessAwareMinimization",
    "analysis",
    "optimizers",
]
