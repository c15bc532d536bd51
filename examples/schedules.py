"""Learning-rate schedules shared by the examples."""

from __future__ import annotations

import argparse

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


def add_schedule_arguments(
    parser: argparse.ArgumentParser, base_batch: int
) -> None:
    """The flags of the large-batch learning-rate recipe: `--base-lr`,
    `--base-batch` (defaulting to `base_batch`) and `--warmup-steps`."""
    parser.add_argument(
        "--base-lr",
        type=float,
        default=1e-2,
        help="peak learning rate at --base-batch (Table 11: 1e-2 at 4096)",
    )
    parser.add_argument("--base-batch", type=int, default=base_batch)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="linear warmup steps (default: a tenth of --steps)",
    )


def warmup_linear_decay(
    args: argparse.Namespace, total_steps: int
) -> WarmupLinearDecay:
    """The schedule of those flags: `--base-lr` scaled linearly to
    `--batch-size`, a warmup of `--warmup-steps` (a tenth of `total_steps`
    if not given), then a linear decay to 0 at `total_steps`."""
    warmup = (
        total_steps // 10 if args.warmup_steps is None else args.warmup_steps
    )
    peak = linear_scaling(args.base_lr, args.batch_size, args.base_batch)
    return WarmupLinearDecay(peak, warmup, total_steps)
