"""LAMB as in You et al. (2019), Algorithm 2, and its reference code."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import keras
from keras import ops

from keras_sam.src.validation import check_real, is_real


def _matcher(
    exclude: Sequence[str] | Callable | None,
) -> Callable[[keras.Variable], bool]:
    """`variable -> excluded?` for an exclusion option."""
    if exclude is None:
        return lambda v: len(v.shape) <= 1
    if callable(exclude):
        return lambda v: bool(exclude(v))
    patterns = [re.compile(p) for p in exclude]
    return lambda v: any(p.search(v.path) for p in patterns)


def _check_learning_rate(value) -> None:
    """A float learning rate is finite and >= 0. Keras checks the other
    forms (a schedule, a callable) and rejects the rest."""
    if is_real(value) and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            "`learning_rate` must be a float >= 0, a keras.optimizers."
            "schedules.LearningRateSchedule or a callable; received "
            f"learning_rate={value!r}."
        )


def _check_exclude(name: str, value) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, (list, tuple)) and all(
        isinstance(p, str) for p in value
    ):
        for p in value:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(
                    f"`{name}` holds an invalid regular expression {p!r}: {e}."
                ) from None
        return
    raise TypeError(
        f"`{name}` must be None (exclude every variable of rank <= 1), a "
        "list of regular expressions matched against variable paths, or a "
        f"callable `variable -> bool`; received {name}={value!r}."
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class LAMB(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Moments for Batch training (LAMB).

    Per variable `w` with gradient `g` at step `t`:

    ```
    m = beta_1 m + (1 - beta_1) g
    v = beta_2 v + (1 - beta_2) g^2
    r = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
    r = r + weight_decay * w            # unless excluded from weight decay
    ratio = ||w|| / ||r||               # 1 if either norm is 0, or if excluded
    w = w - learning_rate * ratio * r   # from layer adaptation
    ```

    The weight decay is added to the Adam ratio before the trust ratio, as in
    Algorithm 2 of the paper and its reference TensorFlow implementation.
    `keras.optimizers.Lamb` differs on both counts that matter for the
    LookSAM paper's large-batch recipe: its weight decay is decoupled (applied
    outside the trust ratio) and it has no exclusions, so biases and
    normalization parameters are decayed and layer-adapted too.

    Args:
        learning_rate: a float >= 0, a `LearningRateSchedule` or a
            callable. Defaults to `0.001`.
        beta_1: the decay of the first moment. Defaults to `0.9`.
        beta_2: the decay of the second moment. Defaults to `0.999`.
        epsilon: added to the root of the second moment. Defaults to `1e-6`.
        weight_decay: the coefficient of `w` added to the update. Defaults
            to `0.0`.
        exclude_from_weight_decay: which variables get no weight decay: a
            list of regular expressions searched in `variable.path`, a
            callable `variable -> bool`, or `None` for every variable of rank
            <= 1 (biases and normalization scales and offsets). Keras'
            `exclude_from_weight_decay(var_list=..., var_names=...)` method
            excludes more, as on any Keras optimizer. Defaults to `None`.
        exclude_from_layer_adaptation: which variables keep a trust ratio of
            1, in the same forms; `None` uses `exclude_from_weight_decay`.
            Defaults to `None`.
        name: the optimizer's name. Defaults to `"lamb"`.
        **kwargs: the keywords of every Keras optimizer (`clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`).

    Example:

    ```python
    optimizer = keras_sam.optimizers.LAMB(
        learning_rate=keras.optimizers.schedules.CosineDecay(
            0.0, 10_000, warmup_target=1e-2, warmup_steps=1_000),
        weight_decay=0.1,
    )
    model = keras_sam.SAMModel(vit, method="looklayersam", rho=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT
        in 76 minutes", ICLR 2020, Algorithm 2.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        name: str = "lamb",
        **kwargs,
    ):
        _check_learning_rate(learning_rate)
        check_real("beta_1", beta_1, 0.0, 1.0)
        check_real("beta_2", beta_2, 0.0, 1.0)
        check_real("epsilon", epsilon, 0.0, None)
        if epsilon == 0:
            raise ValueError(
                f"`epsilon` must be a float > 0; received epsilon={epsilon!r}."
            )
        check_real("weight_decay", weight_decay, 0.0, None)
        _check_exclude("exclude_from_weight_decay", exclude_from_weight_decay)
        _check_exclude(
            "exclude_from_layer_adaptation", exclude_from_layer_adaptation
        )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.exclude_from_weight_decay_option = exclude_from_weight_decay
        self.exclude_from_layer_adaptation_option = (
            exclude_from_layer_adaptation
        )
        self._no_decay = _matcher(exclude_from_weight_decay)
        self._no_adaptation = _matcher(
            exclude_from_weight_decay
            if exclude_from_layer_adaptation is None
            else exclude_from_layer_adaptation
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        # Resolved here, on the Keras variables: `update_step` may receive
        # the backend's own variable (a tf.Variable on TensorFlow).
        self._resolve_weight_decay()
        self._adapts = [not self._no_adaptation(v) for v in var_list]

    def _resolve_weight_decay(self) -> None:
        """Which variables decay: those that neither the constructor's
        `exclude_from_weight_decay` nor Keras' `exclude_from_weight_decay()`
        method excludes."""
        self._decays = [
            not self._no_decay(v) and self._use_weight_decay(v)
            for v in self._trainable_variables
        ]

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras' exclusion method, on top of the constructor's option.

        As on every Keras optimizer: `var_list` excludes those variables,
        `var_names` every variable whose name contains one of the strings;
        each call replaces the previous call's exclusions. It may be called
        before or after the optimizer is built.
        """
        super().exclude_from_weight_decay(var_list, var_names)
        if self.built:
            self._resolve_weight_decay()

    def _apply_weight_decay(self, variables):
        # LAMB's decay is inside its update (`update_step`); the base class
        # would apply a decoupled one on top.
        return

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), step)

        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, (gradient - m) * (1.0 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1.0 - self.beta_2))

        update = (m / (1.0 - beta_1_power)) / (
            ops.sqrt(v / (1.0 - beta_2_power)) + self.epsilon
        )
        if self.weight_decay and self._decays[index]:
            update = update + self.weight_decay * variable
        if self._adapts[index]:
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            safe = ops.logical_and(
                ops.greater(w_norm, 0.0), ops.greater(u_norm, 0.0)
            )
            ratio = ops.where(safe, w_norm / ops.where(safe, u_norm, 1.0), 1.0)
            update = ratio * update
        self.assign_sub(variable, lr * update)

    def _serializable_exclusion(self, name: str, value):
        if callable(value):
            raise ValueError(
                f"LAMB's `{name}` is a callable, which cannot be serialized; "
                "pass a list of regular expressions to save the optimizer."
            )
        return None if value is None else list(value)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.weight_decay,
                "exclude_from_weight_decay": self._serializable_exclusion(
                    "exclude_from_weight_decay",
                    self.exclude_from_weight_decay_option,
                ),
                "exclude_from_layer_adaptation": self._serializable_exclusion(
                    "exclude_from_layer_adaptation",
                    self.exclude_from_layer_adaptation_option,
                ),
            }
        )
        return config
