"""keras-sam's implementation: private; the public API is `keras_sam`."""
