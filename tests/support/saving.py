"""Callables registered with Keras' serialization (package
`keras_sam_tests`), for the saving tests: a `.keras` file that holds them
loads in any process that imports this module (test_saving.py, and the
fresh process of resume.py)."""

import keras


@keras.saving.register_keras_serializable(package="keras_sam_tests")
def halving_rho(t):
    """A registered `rho` callable."""
    return 0.1 * 0.5 ** (t / 10.0)


@keras.saving.register_keras_serializable(package="keras_sam_tests")
def kernels_only(variable):
    """A registered `perturb` callable."""
    return "kernel" in variable.path
