"""Base optimizers that SAM papers use and Keras lacks in their exact form."""

from keras_sam.src.optimizers.lamb import LAMB

__all__ = ["LAMB"]
