"""Late-phase SAM: SAM steps only in the last part of the run `fit` knows.

`late_phase=f` makes the last fraction `f` of the first `fit`'s steps
(its epochs times the steps per epoch) SAM steps and the ones before plain
base-optimizer steps: `start_step` computed from the run's length when it
begins, and kept in a model variable, so that a resumed run (restored by
`BackupAndRestore`) and later `fit` calls keep it.

References:
    Zhou, Wang, Mao, Li and Yan, "Sharpness-Aware Minimization Efficiently
    Selects Flatter Minima Late in Training", ICLR 2025 (arXiv 2410.10373):
    Fig. 1 (SAM switched on for the last 25 of 200 epochs reaches full
    SAM's error and sharpness); the authors' code switches at an epoch.
"""

from __future__ import annotations

import keras
from keras import ops

# The first SAM step before a `fit` has set it: never.
NOT_SET = 2**31 - 1


def first_sam_step(fraction: float, epochs: int, steps_per_epoch: int) -> int:
    """The first SAM step of a run of `epochs * steps_per_epoch` steps whose
    last `fraction` takes SAM steps: `round((1 - fraction) * steps)`."""
    return round((1.0 - fraction) * epochs * steps_per_epoch)


def is_set(variable: keras.Variable) -> bool:
    return int(ops.convert_to_numpy(variable.value)) != NOT_SET


class LatePhase(keras.callbacks.Callback):
    """Sets the model's first SAM step (`variable`) when its first `fit`
    begins: the counter's value then plus `first_sam_step` of the run's
    `epochs` and `steps` (Keras' `params`).

    Raises:
        ValueError: when `fit` does not know the steps per epoch (a dataset
            of unknown length without `steps_per_epoch`).
    """

    def __init__(self, fraction: float, variable, counter):
        super().__init__()
        self.fraction, self.variable, self.counter = fraction, variable, counter

    def on_train_begin(self, logs=None):
        if is_set(self.variable):
            return
        steps = self.params.get("steps")
        if steps is None:
            raise ValueError(
                f"`late_phase={self.fraction}` is a fraction of the steps of "
                "fit, and fit does not know the steps per epoch of this "
                "data: pass `steps_per_epoch` to fit, or give `start_step` "
                "instead."
            )
        done = int(ops.convert_to_numpy(self.counter.value))
        first = first_sam_step(self.fraction, self.params["epochs"], steps)
        self.variable.assign(done + first)


def check_set(fraction: float | None, variable) -> None:
    """Raises for a step outside `fit` (`train_on_batch`) with `late_phase`
    (`fraction`) before a `fit` set the first SAM step (`variable`): the
    run's length is unknown there."""
    if fraction is not None and not is_set(variable):
        raise ValueError(
            f"`late_phase={fraction}` is a fraction of the steps of fit, "
            "which sets the first SAM step when it begins; this model has "
            "not been fit yet. Give `start_step` to train with "
            "train_on_batch or a custom loop."
        )
