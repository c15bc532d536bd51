"""Plain-Keras vision models used by the examples, tests and benchmarks."""

from examples.models.mixer import mlp_mixer
from examples.models.vit import vit

__all__ = ["mlp_mixer", "vit"]
