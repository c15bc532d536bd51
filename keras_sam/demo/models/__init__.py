"""Small plain-Keras vision models: the demo's, the examples' and the
benchmarks' architectures (any Keras model trains with `SAMModel`)."""

from keras_sam.demo.models.mixer import mlp_mixer
from keras_sam.demo.models.resnet import resnet
from keras_sam.demo.models.vit import vit

__all__ = ["mlp_mixer", "resnet", "vit"]
