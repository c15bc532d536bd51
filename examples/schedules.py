"""Learning-rate schedules shared by the examples."""

from __future__ import annotations

import keras


def linear_scaling(base_lr: float, batch_size: int, base_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): the peak learning rate
    grows in proportion to the global batch.

    Args:
        base_lr: the peak learning rate at `base_batch`.
        batch_size: the global batch size of this run.
        base_batch: the batch size at which `base_lr` was tuned.

    Returns:
        `base_lr * batch_size / base_batch`.
    """
    return base_lr * batch_size / base_batch


@keras.saving.register_keras_serializable(package="examples")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay
    to 0 at `total_steps` (LookSAM paper, Table 11).

    Args:
        peak: the learning rate at the end of the warmup.
        warmup_steps: the number of warmup steps (0: start at `peak`).
        total_steps: the step at which the rate reaches 0.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = step / self.warmup_steps if self.warmup_steps else 1.0
        decay = (self.total_steps - step) / max(
            self.total_steps - self.warmup_steps, 1
        )
        fraction = keras.ops.clip(keras.ops.minimum(warmup, decay), 0.0, 1.0)
        return self.peak * fraction

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }
