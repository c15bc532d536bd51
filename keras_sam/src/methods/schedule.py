"""Schedule: when an ascent is taken and what is used on the other steps.

`t` is the SAM step counter: `t = step - start_step`, so `t = 0` is the first
step that may perturb and steps with `t < 0` are plain base-optimizer steps.

References:
    Liu et al., "Sharpness-Aware Minimization in Large-Batch Training:
    Training Vision Transformer in Minutes", 2022: Alg. 1 (LookSAM), eq. (4),
    and the SAM-k baseline of Sec. 3.2.
    Jiang et al., "An Adaptive Policy to Employ Sharpness-Aware
    Minimization" (AE-SAM, AE-LookSAM), ICLR 2023: Sec. 3.
    Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware
    Training" (GSAM), ICLR 2022: the radius proportional to the learning
    rate.
    Zhao, Zhang and Hu, "Randomized Sharpness-Aware Training for Boosting
    Computational Efficiency in Deep Learning" (RST), 2022: Alg. 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import ops

from keras_sam.src.methods.tensors import DELTA, global_dot, global_norm


def valid_radius(rho):
    """Whether a radius is in `[0, inf)` (a boolean scalar): a step whose
    schedule gives one outside it is skipped, as a non-finite one is."""
    return ops.logical_and(ops.isfinite(rho), ops.greater_equal(rho, 0.0))


def rho_at(rho: float | Callable, t):
    """The radius at SAM step `t` (>= 0): a constant, or `rho(t)` for a
    `LearningRateSchedule` or any callable, called with `t` as a float32
    scalar tensor."""
    if callable(rho):
        return ops.cast(rho(ops.cast(t, "float32")), "float32")
    return rho


def takes_ascent(t, reuse: str | None, k: int | None):
    """Whether step `t` runs the second pass: every step with `t >= 0`, or,
    with `reuse` ("look" or "every_k"), those with `t % k == 0`."""
    active = ops.greater_equal(t, 0)
    if reuse is None:
        return active
    return ops.logical_and(active, ops.equal(ops.mod(t, k), 0))


# RST's draws: a hash of (seed, t) in int32 arithmetic, exact on every
# backend. P is a prime below 2**15 (every product below stays under 2**31)
# with P % 3 == 2, so that cubing permutes the residues: each round is a
# bijection, and the draws of steps 0 to P - 1 are a permutation of the
# residues.
_P = 32717
_MULTIPLIER = 16807


def _mixed(x, word):
    """Two rounds of `x -> (16807 x + word + 1)^3 mod P`."""
    for _ in range(2):
        x = ops.mod(x * _MULTIPLIER + word + 1, _P)
        x = ops.mod(ops.mod(x * x, _P) * x, _P)
    return x


def uniform_draw(t, seed: int):
    """RST's uniform draw in `[0, 1)` for SAM step `t` (>= 0) and `seed`:
    `x / P`, `x` the residue that `_mixed` gives from `seed mod P`, fed the
    digits of `t` in base `P`, low first; the same on every backend
    (float32)."""
    t = ops.cast(t, "int32")
    x = ops.mod(ops.convert_to_tensor(seed, "int32"), _P)
    for word in (ops.mod(t, _P), ops.mod(ops.floor_divide(t, _P), _P)):
        x = _mixed(x, word)
    return ops.cast(x, "float32") / float(_P)


def random_ascends(t, probability, seed: int):
    """RST (Zhao et al. 2022, Alg. 1): step `t` ascends with probability
    `p_t`, the Bernoulli trial `u_t < p_t` on `uniform_draw`."""
    return ops.less(uniform_draw(t, seed), probability)


def valid_probability(probability):
    """Whether a probability is in `[0, 1]` (a boolean scalar): a step
    whose schedule gives one outside it is skipped, as a non-finite one is."""
    return ops.logical_and(
        ops.greater_equal(probability, 0.0), ops.less_equal(probability, 1.0)
    )


def policy_statistics(statistics: Sequence, squared_norm, decay: float):
    """AE-SAM's running mean and variance of `s = ||g||^2` after this step
    (Jiang et al. 2023, Sec. 3), `statistics = [mu, sigma^2]`:

    `mu = delta mu + (1 - delta) s`, then
    `sigma^2 = delta sigma^2 + (1 - delta) (s - mu)^2` with the new `mu`.
    Both start at 0.
    """
    mean, variance = statistics
    mean = decay * mean + (1.0 - decay) * squared_norm
    variance = decay * variance + (1.0 - decay) * ops.square(
        squared_norm - mean
    )
    return [mean, variance]


def policy_ascends(squared_norm, statistics: Sequence, threshold):
    """AE-SAM's test (Jiang et al. 2023, Sec. 3): an ascent (a SAM step)
    when `||g||^2 >= mu + c sigma`, with the statistics of this step; a
    plain (ERM) or reuse step otherwise. A larger `c` ascends less often:
    about `1 - Phi(c)` of the steps if `||g||^2` is normal."""
    mean, variance = statistics
    return ops.greater_equal(
        squared_norm, mean + threshold * ops.sqrt(variance)
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class ProportionalRho(keras.optimizers.schedules.LearningRateSchedule):
    """A radius that follows the learning rate (GSAM, Zhuang et al. 2022):

    `rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max -
    lr_min)`, clipped at 0,

    where `lr_t` is `learning_rate` at the optimizer's step, so `rho` decays
    as the learning rate does, through the same schedule. Pass it as `rho`
    (any method): `SAMModel(model, "gsam", rho=ProportionalRho(schedule,
    lr_max=1e-3, rho_max=0.6, rho_min=0.1))`, with `schedule` the base
    optimizer's learning rate.

    Args:
        learning_rate: the base optimizer's learning rate: a
            `keras.optimizers.schedules.LearningRateSchedule`, a callable of
            the step, or a float (then `rho = rho_max` throughout).
        lr_max: the largest learning rate of the schedule (after warmup).
        rho_max: the radius at `lr_max`.
        rho_min: the radius at `lr_min`. Defaults to `0.0`.
        lr_min: the smallest learning rate of the schedule. Defaults to
            `0.0`.
        start_step: the `SAMModel`'s `start_step`: `rho` is called with the
            SAM step `t = step - start_step`, and the learning rate is read
            at `t + start_step`. Defaults to `0`.
    """

    def __init__(
        self,
        learning_rate,
        lr_max: float,
        rho_max: float,
        rho_min: float = 0.0,
        lr_min: float = 0.0,
        start_step: int = 0,
    ):
        _check_proportional(lr_max, lr_min, rho_max, rho_min)
        self.learning_rate = learning_rate
        self.lr_max, self.lr_min = float(lr_max), float(lr_min)
        self.rho_max, self.rho_min = float(rho_max), float(rho_min)
        self.start_step = int(start_step)

    def __call__(self, step):
        if not callable(self.learning_rate) or self.lr_max == self.lr_min:
            return ops.convert_to_tensor(self.rho_max, "float32")
        step = ops.cast(step, "float32") + float(self.start_step)
        lr = ops.cast(self.learning_rate(step), "float32")
        fraction = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        rho = self.rho_min + (self.rho_max - self.rho_min) * fraction
        return ops.maximum(rho, 0.0)

    def get_config(self) -> dict:
        learning_rate = self.learning_rate
        if callable(learning_rate):
            learning_rate = keras.saving.serialize_keras_object(learning_rate)
        return {
            "learning_rate": learning_rate,
            "lr_max": self.lr_max,
            "rho_max": self.rho_max,
            "rho_min": self.rho_min,
            "lr_min": self.lr_min,
            "start_step": self.start_step,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if isinstance(config["learning_rate"], dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(
                config["learning_rate"]
            )
        return cls(**config)


def _check_proportional(lr_max, lr_min, rho_max, rho_min) -> None:
    if not 0.0 <= rho_min <= rho_max:
        raise ValueError(
            "ProportionalRho needs 0 <= rho_min <= rho_max; received "
            f"rho_min={rho_min!r}, rho_max={rho_max!r}."
        )
    if lr_max < lr_min or (lr_max == lr_min and rho_max != rho_min):
        raise ValueError(
            "ProportionalRho needs lr_max > lr_min (or lr_max == lr_min "
            "with rho_max == rho_min: a constant rho); received "
            f"lr_max={lr_max!r}, lr_min={lr_min!r}."
        )


def look_projection(gradients: Sequence, sam_gradients: Sequence) -> list:
    """`g_v = g_s - (<g, g_s> / (||g||^2 + delta)) g` (LookSAM eq. 4, Alg. 1).

    The component of the SAM gradient orthogonal to the clean gradient, with
    the inner product global over all trainable variables (never per tensor).
    """
    coefficient = global_dot(gradients, sam_gradients) / (
        global_dot(gradients, gradients) + DELTA
    )
    return [gs - coefficient * g for g, gs in zip(gradients, sam_gradients)]


def look_stored(gradients: Sequence, g_v: Sequence, scale: str) -> list:
    """What LookSAM keeps of `g_v` between ascents: `g_v` itself, or with
    `scale="relative"`, `g_v / (||g|| + delta)` (its size relative to the
    clean gradient of the ascent step)."""
    if scale != "relative":
        return list(g_v)
    factor = 1.0 / (global_norm(gradients) + DELTA)
    return [factor * v for v in g_v]


def look_reuse(
    gradients: Sequence, stored: Sequence, alpha, scale: str
) -> list:
    """The update of a reuse step, `g + alpha * c * g_v` (LookSAM Alg. 1,
    else branch), with `stored` as `look_stored` keeps it:

    - `scale="gradient"` (Alg. 1): `c = ||g|| / (||g_v|| + delta)`, so the
      reuse term has norm `alpha * ||g||` whatever `rho`;
    - `"stored"`: `c = 1`, `g_v` as the ascent measured it (its norm grows
      with `rho`, as SAM's own departure from `g`);
    - `"relative"`: `c = ||g|| / ||g_a||`, `g_a` the clean gradient of the
      ascent step: `g_v` keeps its size relative to the gradient.
    """
    if scale == "gradient":
        factor = alpha * global_norm(gradients) / (global_norm(stored) + DELTA)
    elif scale == "relative":
        factor = alpha * global_norm(gradients)
    else:
        factor = alpha
    return [g + factor * v for g, v in zip(gradients, stored)]
