"""The `keras-sam demo` command, its data and its models: not part of the
library (`import keras_sam` does not import it)."""
